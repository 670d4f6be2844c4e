// lorad-mkmodel's tiny checkpoints load, are detected as what was written, run,
// and come with a demo vocabulary whose size matches the token embeddings.
#include <gtest/gtest.h>

#include "core/base/sha256.h"
#include "core/base/testing/scoped_temp_dir.h"
#include "core/io/safetensors.h"
#include "core/models/checkpoint.h"
#include "core/models/inspect.h"
#include "core/models/mkmodel.h"
#include "core/text/tokenizer.h"

namespace lorad::models {
namespace {

namespace fs = std::filesystem;

class MkModelTest : public ::testing::TestWithParam<ModelFamily> {};

TEST_P(MkModelTest, TinyCheckpointLoadsAndIsDetected) {
  const ModelFamily family = GetParam();
  const lorad::testing::ScopedTempDir dir("lorad_mkmodel_test");
  const fs::path out = dir / (std::string(ModelFamilyName(family)) + ".safetensors");
  MakeModelOptions options;
  options.family = family;
  options.size = ModelSize::kTiny;
  options.dtype = torch::kFloat16;
  options.seed = 3;
  ASSERT_TRUE(MakeModel(out, options).ok());

  auto sd = LoadStableDiffusion(out);
  ASSERT_TRUE(sd.ok()) << sd.status();
  EXPECT_EQ(sd->family, family);
  EXPECT_TRUE(sd->keys.clean());
  const CheckpointLayout want = TinyLayout(family);
  EXPECT_EQ(sd->layout.unet.ToJson(), want.unet.ToJson());
  EXPECT_EQ(sd->layout.vae.ToJson(), want.vae.ToJson());
  ASSERT_EQ(sd->layout.text_encoders.size(), want.text_encoders.size());
  for (size_t i = 0; i < want.text_encoders.size(); ++i) {
    EXPECT_TRUE(sd->layout.text_encoders[i] == want.text_encoders[i]) << "text encoder " << i;
  }

  // Same seed, same bytes: the whole file's SHA-256, not its size.
  const fs::path again = dir / "again.safetensors";
  ASSERT_TRUE(MakeModel(again, options).ok());
  const auto out_sha = Sha256File(out);
  const auto again_sha = Sha256File(again);
  ASSERT_TRUE(out_sha.ok() && again_sha.ok());
  EXPECT_EQ(*again_sha, *out_sha);
  // Another seed: same names and shapes, other weights.
  MakeModelOptions reseeded = options;
  reseeded.seed = 4;
  const fs::path other = dir / "other_seed.safetensors";
  ASSERT_TRUE(MakeModel(other, reseeded).ok());
  EXPECT_NE(*Sha256File(other), *out_sha);
  auto a = io::SafetensorsFile::Open(out);
  auto b = io::SafetensorsFile::Open(other);
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_EQ((*a)->Names(), (*b)->Names());
  int differing = 0;
  for (const auto& name : (*a)->Names()) {
    EXPECT_EQ(*(*a)->Shape(name), *(*b)->Shape(name)) << name;
    differing += !torch::equal(*(*a)->Get(name), *(*b)->Get(name));
  }
  EXPECT_GT(differing, 0);

  // The demo vocabulary matches the embedding rows.
  auto tokenizer = text::ClipTokenizer::Load(text::CompanionTokenizerDir(out) / "vocab.json");
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  EXPECT_EQ(tokenizer->vocab_size(), want.text_encoders[0].vocab_size);

  // A forward pass gives finite values.
  const auto& u = sd->layout.unet;
  torch::NoGradGuard no_grad;
  auto x = torch::randn({1, u.in_channels, 16, 16});
  auto ctx = torch::randn({1, 77, u.context_dim});
  torch::Tensor y = u.adm_in_channels > 0 ? torch::randn({1, u.adm_in_channels}) : torch::Tensor();
  auto eps = sd->unet->forward(x, torch::tensor({500}), ctx, y);
  EXPECT_EQ(eps.sizes(), x.sizes());
  EXPECT_TRUE(torch::isfinite(eps).all().item<bool>());

  auto report = InspectModelFile(out);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ((*report)["family"], ModelFamilyName(family));
  EXPECT_FALSE(FormatInspection(*report).empty());
}

INSTANTIATE_TEST_SUITE_P(Families, MkModelTest, ::testing::Values(ModelFamily::kSd15, ModelFamily::kSdxl),
                         [](const auto& info) { return std::string(ModelFamilyName(info.param)); });

TEST(MkModel, RejectsUnsupportedDtype) {
  MakeModelOptions options;
  options.dtype = torch::kInt32;
  const lorad::testing::ScopedTempDir dir("lorad_mkmodel_test");
  EXPECT_FALSE(MakeModel(dir / "never_written.safetensors", options).ok());
  EXPECT_FALSE(fs::exists(dir / "never_written.safetensors"));
}

}  // namespace
}  // namespace lorad::models

namespace lorad::models {
namespace {

TEST(Inspect, LoraFileShowsMetadataAndKeyCount) {
  const lorad::testing::ScopedTempDir dir("lorad_inspect_lora");
  const auto path = dir / "lora.safetensors";
  io::NamedTensors t = {
      {"lora_unet_input_blocks_4_1_proj_in.lora_down.weight", torch::zeros({8, 32})},
      {"lora_unet_input_blocks_4_1_proj_in.lora_up.weight", torch::zeros({32, 8})},
      {"lora_unet_input_blocks_4_1_proj_in.alpha", torch::ones({})},
      {"lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight", torch::zeros({8, 32})},
      {"lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_up.weight", torch::zeros({128, 8})},
      {"lora_te1_text_model_encoder_layers_0_mlp_fc1.alpha", torch::ones({})},
  };
  ASSERT_TRUE(io::WriteSafetensors(path, t, {{"ss_network_dim", "8"}, {"ss_network_alpha", "1"}, {"other", "x"}}).ok());
  auto report = InspectModelFile(path);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ((*report)["kind"], "lora");
  EXPECT_EQ((*report)["tensor_count"], 6);
  EXPECT_EQ((*report)["module_count"], 2);
  EXPECT_EQ((*report)["metadata"]["ss_network_dim"], "8");
  EXPECT_FALSE((*report)["metadata"].contains("other"));
  EXPECT_NE(FormatInspection(*report).find("ss_network_alpha"), std::string::npos);
}

}  // namespace
}  // namespace lorad::models
