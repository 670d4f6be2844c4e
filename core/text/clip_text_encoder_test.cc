#include "core/text/clip_text_encoder.h"

#include <fstream>

#include <gtest/gtest.h>

#include "core/common/fixtures.h"
#include "core/io/safetensors.h"

namespace lorad::text {
namespace {

struct Case {
  std::string checkpoint;
  std::string reference;
  std::string te_config_key;  // inside fixture_config
  std::string prefix_key;     // inside fixture_config.prefixes (sdxl) or fixed (sd15)
  std::string ref_prefix;     // "clip_l" / "clip_g"
  ClipKeyLayout layout;
};

std::unique_ptr<io::SafetensorsFile> OpenFixture(const std::string& name) {
  auto f = io::SafetensorsFile::Open(FixturePath(name));
  EXPECT_TRUE(f.ok()) << f.status();
  return f.ok() ? std::move(f).value() : nullptr;
}

nlohmann::json FixtureConfig(const io::SafetensorsFile& f) {
  return nlohmann::json::parse(f.metadata().at("fixture_config"));
}

double RelativeL2(const torch::Tensor& got, const torch::Tensor& want) {
  auto g = got.to(torch::kFloat64), w = want.to(torch::kFloat64);
  return ((g - w).norm() / w.norm().clamp_min(1e-30)).item<double>();
}

// The text-encoder prefix of a fixture: from fixture_config.prefixes (te1/te2),
// or SD1.5's fixed one.
std::string PrefixOf(const nlohmann::json& config, const std::string& key) {
  if (config.contains("prefixes") && config["prefixes"].contains(key)) return config["prefixes"][key];
  return "cond_stage_model.transformer.";
}

void CheckParity(const Case& c) {
  auto ckpt = OpenFixture(c.checkpoint);
  auto ref = OpenFixture(c.reference);
  ASSERT_TRUE(ckpt && ref);
  const auto config_json = FixtureConfig(*ckpt);
  const auto te_json = config_json.at(c.te_config_key);
  const std::string prefix = PrefixOf(config_json, c.prefix_key);

  auto config = DetectClipTextConfig(*ckpt, prefix, c.layout, &te_json);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->hidden_size, te_json["hidden_size"].get<int64_t>());
  EXPECT_EQ(config->num_layers, te_json["num_hidden_layers"].get<int64_t>());
  EXPECT_EQ(config->num_heads, te_json["num_attention_heads"].get<int64_t>());
  EXPECT_EQ(config->activation, te_json["hidden_act"].get<std::string>());

  ClipTextEncoder encoder(*config, torch::TensorOptions().dtype(torch::kFloat32));
  ASSERT_TRUE(LoadClipTextWeights(*encoder, *ckpt, prefix, c.layout).ok());
  encoder->eval();
  torch::NoGradGuard no_grad;
  auto ids = ref->Get(c.ref_prefix + ".input_ids");
  ASSERT_TRUE(ids.ok());
  const auto out = encoder->forward(*ids);

  auto expect_close = [&](const std::string& name, const torch::Tensor& got) {
    auto want = ref->Get(c.ref_prefix + "." + name, torch::kFloat32);
    ASSERT_TRUE(want.ok()) << want.status();
    ASSERT_EQ(got.sizes(), want->sizes()) << name;
    const double err = RelativeL2(got, *want);
    std::printf("  %s %-28s rel L2 %.3e\n", c.checkpoint.c_str(), (c.ref_prefix + "." + name).c_str(), err);
    EXPECT_LE(err, 1e-4) << name;
  };
  const int64_t n = config->num_layers;
  expect_close("embeddings", out.hidden_states[0]);
  for (int64_t i = 0; i < n; ++i) expect_close("layer_output." + std::to_string(i), out.hidden_states[i + 1]);
  expect_close("penultimate", out.hidden_states[n - 1]);
  expect_close("penultimate_final_ln", encoder->text_model->final_layer_norm->forward(out.hidden_states[n - 1]));
  expect_close("last_hidden_state", out.last_hidden_state);
  expect_close("pooled", out.pooled);
  if (ref->Has(c.ref_prefix + ".text_embeds")) {
    ASSERT_TRUE(out.text_embeds.defined());
    expect_close("text_embeds", out.text_embeds);
  }
}

TEST(ClipTextEncoderParity, SdxlClipL) {
  CheckParity({"tiny_sdxl.safetensors", "tiny_sdxl_reference.safetensors", "text_encoder_1_config", "te1", "clip_l",
               ClipKeyLayout::kHuggingFace});
}

TEST(ClipTextEncoderParity, SdxlBigG) {
  CheckParity({"tiny_sdxl.safetensors", "tiny_sdxl_reference.safetensors", "text_encoder_2_config", "te2", "clip_g",
               ClipKeyLayout::kOpenClip});
}

TEST(ClipTextEncoderParity, Sd15ClipL) {
  CheckParity({"tiny_sd15.safetensors", "tiny_sd15_reference.safetensors", "text_encoder_1_config", "te1", "clip_l",
               ClipKeyLayout::kHuggingFace});
}

}  // namespace
}  // namespace lorad::text
