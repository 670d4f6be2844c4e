// LoraNetwork on a small model made of nn::Layers: every network type trains
// (loss drops), save/load round-trips bit for bit, bad files are clear errors.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iterator>

#include "core/io/safetensors.h"
#include "core/networks/lora_network.h"
#include "core/networks/metadata.h"
#include "core/networks/targets.h"
#include "core/networks/tiny_block_model_test_util.h"
#include "core/base/testing/scoped_temp_dir.h"

namespace lorad::networks {
namespace {

using test_models::TinyModel;
using test_models::Targets;

NetworkConfig Config(const std::vector<std::string>& args, const std::string& module = "lycoris.kohya") {
  auto c = ParseNetworkConfig({module, 4, 2.0, std::nullopt, args});
  EXPECT_TRUE(c.ok()) << c.status();
  return *c;
}

TEST(Targets, KohyaNamesAndKxkSelection) {
  TinyModel model;
  auto no_conv = Targets(model, false);
  ASSERT_EQ(no_conv.size(), 2u);
  EXPECT_EQ(no_conv[0].lora_name, "lora_unet_block_conv1");
  EXPECT_EQ(no_conv[1].lora_name, "lora_unet_block_proj");
  auto with_conv = Targets(model, true);
  ASSERT_EQ(with_conv.size(), 3u);
  EXPECT_TRUE(with_conv[0].conv_kxk);
  EXPECT_EQ(with_conv[0].module_path, "block.conv3");
}

struct TypeCase {
  std::string name;
  std::vector<std::string> args;
  std::string module = "lycoris.kohya";
};

class EveryNetworkType : public ::testing::TestWithParam<TypeCase> {};

TEST_P(EveryNetworkType, TrainsAndRoundTrips) {
  TinyModel model;
  const auto& tc = GetParam();
  auto config = Config(tc.args, tc.module);
  auto net = LoraNetwork::Create(config, Targets(model, config.TargetsConvBlocks()), at::detail::createCPUGenerator(7));
  ASSERT_TRUE(net.ok()) << net.status();
  (*net)->Apply();
  (*net)->Train(true);
  auto gen = at::detail::createCPUGenerator(11);
  auto x = torch::randn({16, 4, 6, 6}, gen, torch::kFloat32);
  // A reachable target: the same model with perturbed weights.
  torch::Tensor target;
  {
    torch::NoGradGuard no_grad;
    TinyModel teacher;
    for (auto& p : teacher.parameters()) p.add_(torch::randn(p.sizes(), gen, torch::kFloat32) * 0.3);
    target = teacher.block->forward(x);
  }
  // A fresh adapter is the identity: the first forward equals the base model's.
  auto base_out = [&] {
    (*net)->Remove();
    auto y = model.block->forward(x);
    (*net)->Apply();
    return y;
  }();
  EXPECT_TRUE(torch::allclose(model.block->forward(x), base_out, 1e-5, 1e-6)) << tc.name;

  torch::optim::Adam opt((*net)->UnetParameters(), torch::optim::AdamOptions(2e-2));
  double first = 0, last = 0;
  for (int step = 0; step < 60; ++step) {
    opt.zero_grad();
    auto loss = torch::mse_loss(model.block->forward(x), target);
    loss.backward();
    opt.step();
    if (step == 0) first = loss.item<double>();
    last = loss.item<double>();
  }
  EXPECT_LT(last, 0.7 * first) << tc.name << ": loss " << first << " -> " << last;
  // Base weights untouched and frozen.
  for (auto& p : model.parameters()) EXPECT_FALSE(p.requires_grad());

  // Merged weights reproduce the adapted forward.
  {
    torch::NoGradGuard no_grad;
    (*net)->Train(false);
    auto adapted = model.block->forward(x);
    std::vector<std::pair<nn::LayerImpl*, torch::Tensor>> saved;
    for (const auto& m : (*net)->modules()) {
      saved.emplace_back(m.layer.get(), m.layer->weight().clone());
      m.layer->weight().copy_((*net)->MergedWeight(m.lora_name));
    }
    (*net)->Remove();
    EXPECT_TRUE(torch::allclose(model.block->forward(x), adapted, 1e-4, 1e-5)) << tc.name;
    for (auto& [layer, w] : saved) layer->weight().copy_(w);
    (*net)->Apply();
  }

  // Save at every precision; a fresh network loads it back bit for bit.
  const lorad::testing::ScopedTempDir tmp("lorad_networks_test");
  const std::filesystem::path& dir = tmp.path();
  for (auto dtype : {torch::kFloat32, torch::kFloat16, torch::kBFloat16}) {
    const auto path = dir / "lora.safetensors";
    LoraMetadataBuilder meta;
    meta.SetNetwork(config);
    auto metadata = meta.Build();
    ASSERT_TRUE(metadata.ok()) << metadata.status();
    ASSERT_TRUE((*net)->Save(path, dtype, *metadata).ok());
    TinyModel other;
    auto loaded = LoraNetwork::Create(config, Targets(other, config.TargetsConvBlocks()));
    ASSERT_TRUE(loaded.ok());
    auto s = (*loaded)->LoadWeights(path);
    ASSERT_TRUE(s.ok()) << s;
    auto a = (*net)->StateDict(dtype);
    auto b = (*loaded)->StateDict(dtype);
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); ++i) {
      EXPECT_EQ(a[i].first, b[i].first);
      EXPECT_TRUE(torch::equal(a[i].second, b[i].second)) << a[i].first;
      EXPECT_EQ(b[i].second.scalar_type(), dtype);
    }
    auto file = io::SafetensorsFile::Open(path);
    ASSERT_TRUE(file.ok());
    EXPECT_EQ((*file)->metadata().at("ss_network_module"), "lycoris.kohya" == tc.module ? "lycoris.kohya"
                                                                                         : "networks.lora");
    // sshs_model_hash is the sha256 of the data buffer (the header only adds non-ss metadata).
    std::ifstream in(path, std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    uint64_t header = 0;
    for (int i = 0; i < 8; ++i) header |= static_cast<uint64_t>(static_cast<uint8_t>(bytes[i])) << (8 * i);
    EXPECT_EQ((*file)->metadata().at("sshs_model_hash"), Sha256Hex(std::string_view(bytes).substr(8 + header)));
    for (const auto& info : (*file)->tensors()) {
      EXPECT_EQ(info.dtype, *io::DTypeFromTorch(dtype)) << info.name;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Types, EveryNetworkType,
    ::testing::Values(TypeCase{"lora", {}, "networks.lora"}, TypeCase{"locon", {"conv_dim=4", "conv_alpha=2"}, "networks.lora"},
                      TypeCase{"dora", {"algo=locon", "dora_wd=True"}},
                      TypeCase{"dora_out", {"algo=locon", "dora_wd=True", "wd_on_output=True"}},
                      TypeCase{"locon_tucker", {"algo=locon", "use_tucker=True"}},
                      TypeCase{"loha", {"algo=loha"}}, TypeCase{"lokr", {"algo=lokr", "factor=2"}},
                      TypeCase{"lokr_full", {"algo=lokr"}}),
    [](const auto& info) { return info.param.name; });

TEST(LoraNetwork, DoraScaleUsesTheInputAxisByDefault) {
  TinyModel model;
  auto net = LoraNetwork::Create(Config({"algo=locon", "dora_wd=True"}), Targets(model, true));
  ASSERT_TRUE(net.ok());
  auto sd = (*net)->StateDict();
  std::map<std::string, torch::Tensor> m(sd.begin(), sd.end());
  EXPECT_EQ(m.at("lora_unet_block_proj.dora_scale").sizes().vec(), (std::vector<int64_t>{1, 8}));
  EXPECT_EQ(m.at("lora_unet_block_conv3.dora_scale").sizes().vec(), (std::vector<int64_t>{1, 4, 1, 1}));
}

TEST(LoraNetwork, WrongFilesAreClearErrors) {
  TinyModel model;
  auto config = Config({}, "networks.lora");
  auto net = LoraNetwork::Create(config, Targets(model, false));
  ASSERT_TRUE(net.ok());
  auto sd = (*net)->StateDict();
  std::map<std::string, torch::Tensor> good(sd.begin(), sd.end());

  auto extra = good;
  extra["lora_unet_block_other.lora_up.weight"] = torch::zeros({4, 4});
  auto s = (*net)->LoadStateDict(extra);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("lora_unet_block_other.lora_up.weight"), std::string::npos) << s;

  auto missing = good;
  for (auto it = missing.begin(); it != missing.end();) {
    it = it->first.rfind("lora_unet_block_proj.", 0) == 0 ? missing.erase(it) : std::next(it);
  }
  s = (*net)->LoadStateDict(missing);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("lora_unet_block_proj"), std::string::npos) << s;

  auto shaped = good;
  shaped["lora_unet_block_proj.lora_down.weight"] = torch::zeros({8, 8});
  s = (*net)->LoadStateDict(shaped);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("lora_down.weight has shape [8,8]"), std::string::npos) << s;

  auto dora = good;
  dora["lora_unet_block_proj.dora_scale"] = torch::ones({1, 8});
  s = (*net)->LoadStateDict(dora);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("dora_scale"), std::string::npos) << s;

  EXPECT_FALSE((*net)->LoadWeights("/nonexistent/lora.safetensors").ok());
  EXPECT_TRUE((*net)->LoadStateDict(good).ok());
}

TEST(LoraNetwork, LoadedAlphaSetsTheScale) {
  TinyModel model;
  auto net = LoraNetwork::Create(Config({}, "networks.lora"), Targets(model, false));
  ASSERT_TRUE(net.ok());
  auto sd = (*net)->StateDict();
  std::map<std::string, torch::Tensor> m(sd.begin(), sd.end());
  m["lora_unet_block_proj.alpha"] = torch::tensor(8.0f);
  m.erase("lora_unet_block_conv1.alpha");  // old files: alpha = dim
  ASSERT_TRUE((*net)->LoadStateDict(m).ok());
  EXPECT_DOUBLE_EQ((*net)->Find("lora_unet_block_proj")->adapter->scale(), 2.0);
  EXPECT_DOUBLE_EQ((*net)->Find("lora_unet_block_conv1")->adapter->scale(), 1.0);
}

TEST(LoraNetwork, SavePrecisionNames) {
  EXPECT_EQ(*ParseSavePrecision("fp16"), torch::kFloat16);
  EXPECT_EQ(*ParseSavePrecision("bf16"), torch::kBFloat16);
  EXPECT_EQ(*ParseSavePrecision("float"), torch::kFloat32);
  auto bad = ParseSavePrecision("fp8");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("fp8"), std::string::npos);
}

// kohya scale_weight_norms: a module above the limit ends exactly at it, one below is untouched.
TEST(LoraNetwork, MaxNormScalesOnlyModulesAboveTheLimit) {
  TinyModel model;
  auto net = LoraNetwork::Create(Config({"conv_dim=4", "conv_alpha=2"}, "networks.lora"), Targets(model, true),
                                 at::detail::createCPUGenerator(3));
  ASSERT_TRUE(net.ok()) << net.status();
  ASSERT_EQ((*net)->modules().size(), 3u);
  const std::string big = "lora_unet_block_conv3";  // the LoCon (3x3) module
  {
    torch::NoGradGuard no_grad;
    at::Generator gen = at::detail::createCPUGenerator(11);
    for (const auto& m : (*net)->modules()) {
      auto named = m.adapter->named_parameters(false);
      named["lora_up"].copy_(torch::randn(named["lora_up"].sizes(), gen) * (m.lora_name == big ? 10.0 : 1e-3));
    }
  }
  std::map<std::string, double> before;
  std::map<std::string, torch::Tensor> up_before, down_before;
  double small_max = 0;
  for (const auto& m : (*net)->modules()) {
    before[m.lora_name] = m.adapter->DeltaWeight().norm().item<double>();
    auto named = m.adapter->named_parameters(false);
    up_before[m.lora_name] = named["lora_up"].clone();
    down_before[m.lora_name] = named["lora_down"].clone();
    if (m.lora_name != big) small_max = std::max(small_max, before[m.lora_name]);
  }
  const double limit = 1.0;
  ASSERT_GT(before[big], 2 * limit);
  ASSERT_LT(small_max, limit);

  auto stats = (*net)->ApplyMaxNorm(limit);
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->keys_scaled, 1);
  EXPECT_NEAR(stats->max_key_norm, limit, 1e-6);
  double expected_sum = limit;
  for (const auto& m : (*net)->modules()) {
    const double after = m.adapter->DeltaWeight().norm().item<double>();
    auto named = m.adapter->named_parameters(false);
    if (m.lora_name == big) {
      EXPECT_NEAR(after, limit, 1e-6);
      // Both factors scaled by the same sqrt(limit / norm).
      const double root = std::sqrt(limit / before[big]);
      EXPECT_TRUE(torch::allclose(named["lora_up"], up_before[big] * root, 1e-5, 1e-7));
      EXPECT_TRUE(torch::allclose(named["lora_down"], down_before[big] * root, 1e-5, 1e-7));
    } else {
      EXPECT_TRUE(torch::equal(named["lora_up"], up_before[m.lora_name])) << m.lora_name;
      EXPECT_TRUE(torch::equal(named["lora_down"], down_before[m.lora_name])) << m.lora_name;
      EXPECT_DOUBLE_EQ(after, before[m.lora_name]);
      expected_sum += before[m.lora_name];
    }
  }
  EXPECT_NEAR(stats->average_key_norm, expected_sum / 3.0, 1e-6);

  auto bad = (*net)->ApplyMaxNorm(0.0);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("scale_weight_norms"), std::string::npos);
}

}  // namespace
}  // namespace lorad::networks
