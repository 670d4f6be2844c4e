// lorad-mkmodel's tiny checkpoints load, are detected as what was written, run,
// and come with a demo vocabulary whose size matches the token embeddings.
#include <gtest/gtest.h>

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
  const fs::path dir = fs::temp_directory_path() / ("lorad_mkmodel_test_" + std::to_string(::getpid()));
  fs::create_directories(dir);
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

  // Same seed, same bytes; the demo vocabulary matches the embedding rows.
  const fs::path again = dir / "again.safetensors";
  ASSERT_TRUE(MakeModel(again, options).ok());
  EXPECT_EQ(fs::file_size(again), fs::file_size(out));
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
  fs::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(Families, MkModelTest, ::testing::Values(ModelFamily::kSd15, ModelFamily::kSdxl),
                         [](const auto& info) { return std::string(ModelFamilyName(info.param)); });

TEST(MkModel, RejectsUnsupportedDtype) {
  MakeModelOptions options;
  options.dtype = torch::kInt32;
  EXPECT_FALSE(MakeModel(fs::temp_directory_path() / "never_written.safetensors", options).ok());
}

}  // namespace
}  // namespace lorad::models
