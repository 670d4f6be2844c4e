// Full-size SDXL and SD1.5 LoRA key sets and shapes equal kohya's
// (fixtures_keys.json *_lora_keys_kohya, with and without conv_dim), computed
// on models built on the meta device (nothing allocated).
#include <fstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "core/common/fixtures.h"
#include "core/models/unet.h"
#include "core/networks/lora_network.h"
#include "core/networks/targets.h"
#include "core/text/clip_text_encoder.h"

namespace lorad::networks {
namespace {

const nlohmann::json& Keys() {
  static const nlohmann::json j = [] {
    std::ifstream in(FixturePath("fixtures_keys.json"));
    return nlohmann::json::parse(in);
  }();
  return j;
}

void CheckVariant(bool sdxl, const std::string& variant) {
  SCOPED_TRACE(variant);
  const auto meta = torch::TensorOptions().device(torch::kMeta).dtype(torch::kFloat32);
  const bool conv = variant.find("conv") != std::string::npos;
  auto input = NetworkConfigInput{"networks.lora", 32, 16.0, std::nullopt, {}};
  if (conv) input.network_args = {"conv_dim=16", "conv_alpha=8"};
  auto config = ParseNetworkConfig(input);
  ASSERT_TRUE(config.ok());

  models::UNet unet(sdxl ? models::UNetConfig::SdxlBase() : models::UNetConfig::Sd15(), meta);
  text::ClipTextEncoder te1(text::ClipTextConfig::ClipL(), meta);
  std::vector<TargetLayer> targets = FindTextEncoderTargets(*te1, sdxl ? "lora_te1" : "lora_te");
  text::ClipTextEncoder te2{nullptr};
  if (sdxl) {
    te2 = text::ClipTextEncoder(text::ClipTextConfig::OpenClipBigG(), meta);
    auto t2 = FindTextEncoderTargets(*te2, "lora_te2");
    targets.insert(targets.end(), t2.begin(), t2.end());
  }
  auto unet_targets = FindUnetTargets(*unet, config->TargetsConvBlocks(),
                                      sdxl ? UnetKeyNames::kLdm : UnetKeyNames::kDiffusers);
  ASSERT_TRUE(unet_targets.ok()) << unet_targets.status();
  targets.insert(targets.end(), unet_targets->begin(), unet_targets->end());
  auto net = LoraNetwork::Create(*config, targets);
  ASSERT_TRUE(net.ok()) << net.status();

  const auto& expected = Keys()[sdxl ? "sdxl_lora_keys_kohya" : "sd15_lora_keys_kohya"][variant];
  const auto got = (*net)->KeyShapes();
  std::vector<std::string> missing, extra, wrong;
  for (const auto& [key, shape] : expected["keys"].items()) {
    auto it = got.find(key);
    if (it == got.end()) missing.push_back(key);
    else if (it->second != shape.get<std::vector<int64_t>>()) wrong.push_back(key);
  }
  for (const auto& [key, shape] : got) {
    if (!expected["keys"].contains(key)) extra.push_back(key);
  }
  EXPECT_TRUE(missing.empty()) << missing.size() << " missing, first " << (missing.empty() ? "" : missing[0]);
  EXPECT_TRUE(extra.empty()) << extra.size() << " extra, first " << (extra.empty() ? "" : extra[0]);
  EXPECT_TRUE(wrong.empty()) << wrong.size() << " wrong shapes, first " << (wrong.empty() ? "" : wrong[0]);
  EXPECT_EQ(got.size(), expected["keys"].size());
  EXPECT_EQ(static_cast<int64_t>((*net)->modules().size()), expected["counts"]["modules"].get<int64_t>());
  for (const auto& [key, value] : expected["alpha_values"].items()) {
    const auto* m = (*net)->Find(key.substr(0, key.find('.')));
    ASSERT_NE(m, nullptr) << key;
    EXPECT_DOUBLE_EQ(m->adapter->alpha(), value.get<double>()) << key;
  }
}

TEST(FullSizeKeys, Sdxl) {
  CheckVariant(true, "dim32_alpha16");
  CheckVariant(true, "dim32_alpha16_conv16_alpha8");
}

TEST(FullSizeKeys, Sd15) {
  CheckVariant(false, "dim32_alpha16");
  CheckVariant(false, "dim32_alpha16_conv16_alpha8");
}

}  // namespace
}  // namespace lorad::networks
