// Base-model facts from a checkpoint's header: v-prediction and zero terminal
// SNR markers, EDM models refused, the lineage named by metadata, and the
// config made to agree (or refused) with a message that says why.
#include "core/models/base_model.h"

#include <gtest/gtest.h>

#include <fstream>

#include <nlohmann/json.hpp>

#include "core/base/testing/scoped_temp_dir.h"

namespace lorad::models {
namespace {

// A valid safetensors file: `extra` tensors of shape [0] besides one real tensor.
std::filesystem::path WriteCheckpoint(const std::filesystem::path& dir, const std::string& name,
                                      const std::vector<std::string>& extra, const io::Metadata& metadata) {
  nlohmann::json header = nlohmann::json::object();
  header["model.diffusion_model.out.2.bias"] = {{"dtype", "F32"}, {"shape", {1}}, {"data_offsets", {0, 4}}};
  for (const std::string& key : extra) header[key] = {{"dtype", "F32"}, {"shape", {0}}, {"data_offsets", {4, 4}}};
  if (!metadata.empty()) header["__metadata__"] = metadata;
  const std::string text = header.dump();
  const std::filesystem::path path = dir / name;
  std::ofstream out(path, std::ios::binary);
  const uint64_t length = text.size();
  out.write(reinterpret_cast<const char*>(&length), 8);  // little-endian on the hosts we build for
  out << text;
  out.write("\0\0\0\0", 4);
  return path;
}

TEST(BaseModel, NoobAiVPredMarkersAndLineage) {
  lorad::testing::ScopedTempDir dir;
  auto facts = ReadBaseModelFacts(WriteCheckpoint(dir.path(), "noob.safetensors", {"v_pred", "ztsnr"},
                                                  {{"modelspec.title", "NoobAI-XL V-Pred 1.0"}}));
  ASSERT_TRUE(facts.ok()) << facts.status();
  EXPECT_EQ(facts->prediction, Prediction::kV);
  EXPECT_EQ(facts->prediction_evidence, "tensor 'v_pred'");
  EXPECT_TRUE(facts->zero_terminal_snr);
  EXPECT_EQ(facts->lineage, "NoobAI-XL");
  EXPECT_NE(facts->lineage_evidence.find("modelspec.title"), std::string::npos);

  // Unset keys are set, each with a message.
  train::TrainConfig config;
  std::vector<std::string> warnings;
  ASSERT_TRUE(ApplyBaseModelFacts(*facts, config, &warnings).ok());
  EXPECT_TRUE(config.v_parameterization);
  EXPECT_TRUE(config.zero_terminal_snr);
  ASSERT_EQ(warnings.size(), 2u);
  EXPECT_NE(warnings[0].find("v_parameterization = true"), std::string::npos) << warnings[0];
  EXPECT_NE(warnings[1].find("zero_terminal_snr = true"), std::string::npos) << warnings[1];

  // v_parameterization = false on a v-pred model is refused, naming the key and the marker.
  auto refused = train::ParseTrainOptions("v_parameterization = false\n", {});
  ASSERT_TRUE(refused.ok());
  warnings.clear();
  absl::Status status = ApplyBaseModelFacts(*facts, *refused, &warnings);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("v_parameterization"), std::string::npos) << status;
  EXPECT_NE(status.message().find("v_pred"), std::string::npos) << status;

  // zero_terminal_snr = false is the user's call: kept, with a warning.
  auto kept = train::ParseTrainOptions("zero_terminal_snr = false\n", {});
  ASSERT_TRUE(kept.ok());
  warnings.clear();
  ASSERT_TRUE(ApplyBaseModelFacts(*facts, *kept, &warnings).ok());
  EXPECT_FALSE(kept->zero_terminal_snr);
  EXPECT_TRUE(kept->v_parameterization);
  ASSERT_EQ(warnings.size(), 2u);
  EXPECT_NE(warnings[1].find("kept as set"), std::string::npos) << warnings[1];
}

TEST(BaseModel, LineageFromMetadataOnly) {
  lorad::testing::ScopedTempDir dir;
  struct Case {
    io::Metadata metadata;
    std::string lineage;
  };
  const std::vector<Case> cases = {
      {{{"ss_sd_model_name", "ponyDiffusionV6XL_v6StartWithThisOne.safetensors"}}, "Pony Diffusion"},
      {{{"modelspec.title", "Illustrious-XL-v0.1"}}, "Illustrious-XL"},
      {{{"modelspec.title", "Animagine XL 3.1"}, {"modelspec.author", "Cagliostro Research Lab"}}, "Animagine XL"},
      {{{"modelspec.description", "NoobAI-XL, based on Illustrious-XL"}}, "NoobAI-XL"},  // the finetune, not its base
      {{{"modelspec.title", "sd_xl_base_1.0"}}, ""},
      {{}, ""},
  };
  int index = 0;
  for (const Case& c : cases) {
    auto facts = ReadBaseModelFacts(WriteCheckpoint(dir.path(), std::to_string(index++), {}, c.metadata));
    ASSERT_TRUE(facts.ok()) << facts.status();
    EXPECT_EQ(facts->lineage, c.lineage) << index;
    EXPECT_EQ(facts->prediction, Prediction::kEpsilon);
    EXPECT_TRUE(facts->prediction_evidence.empty());
  }
}

TEST(BaseModel, ModelSpecPredictionTypeAndEpsilonDoubt) {
  lorad::testing::ScopedTempDir dir;
  auto v = ReadBaseModelFacts(WriteCheckpoint(dir.path(), "v", {}, {{"modelspec.prediction_type", "v"}}));
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(v->prediction, Prediction::kV);
  auto eps = ReadBaseModelFacts(WriteCheckpoint(dir.path(), "e", {}, {{"modelspec.prediction_type", "epsilon"}}));
  ASSERT_TRUE(eps.ok());
  EXPECT_EQ(eps->prediction, Prediction::kEpsilon);
  train::TrainConfig config;
  config.v_parameterization = true;
  std::vector<std::string> warnings;
  ASSERT_TRUE(ApplyBaseModelFacts(*eps, config, &warnings).ok());
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("says epsilon"), std::string::npos) << warnings[0];
}

TEST(BaseModel, EdmModelsAreRefused) {
  lorad::testing::ScopedTempDir dir;
  for (const std::string marker : {"edm_mean", "edm_vpred.sigma_max"}) {
    auto facts = ReadBaseModelFacts(WriteCheckpoint(dir.path(), marker, {marker}, {}));
    ASSERT_TRUE(facts.ok()) << facts.status();
    EXPECT_EQ(facts->prediction, Prediction::kEdm);
    train::TrainConfig config;
    std::vector<std::string> warnings;
    absl::Status status = ApplyBaseModelFacts(*facts, config, &warnings);
    EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_NE(status.message().find("EDM"), std::string::npos) << status;
  }
}

TEST(BaseModel, DiffusersFolderSchedulerConfig) {
  lorad::testing::ScopedTempDir dir;
  std::filesystem::create_directories(dir.path() / "scheduler");
  std::ofstream(dir.path() / "scheduler" / "scheduler_config.json")
      << R"({"_class_name": "EulerDiscreteScheduler", "prediction_type": "v_prediction", "rescale_betas_zero_snr": true})";
  std::ofstream(dir.path() / "model_index.json") << R"({"_name_or_path": "Laxhar/noobai-XL-Vpred-1.0"})";
  auto facts = ReadBaseModelFacts(dir.path());
  ASSERT_TRUE(facts.ok()) << facts.status();
  EXPECT_EQ(facts->prediction, Prediction::kV);
  EXPECT_TRUE(facts->zero_terminal_snr);
  EXPECT_EQ(facts->lineage, "NoobAI-XL");

  std::ofstream(dir.path() / "scheduler" / "scheduler_config.json") << "{not json";
  EXPECT_EQ(ReadBaseModelFacts(dir.path()).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(BaseModel, UnreadableFilesNameThePath) {
  auto missing = ReadBaseModelFacts("/nonexistent/model.safetensors");
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("/nonexistent/model.safetensors"), std::string::npos);
  lorad::testing::ScopedTempDir dir;
  std::ofstream(dir.path() / "garbage.safetensors") << "not a safetensors file at all";
  EXPECT_FALSE(ReadBaseModelFacts(dir.path() / "garbage.safetensors").ok());
}

}  // namespace
}  // namespace lorad::models
