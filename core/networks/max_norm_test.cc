// scale_weight_norms on every LyCORIS algorithm, against LyCORIS' own
// apply_max_norm (tests/fixtures/make_lycoris_max_norm.py): LoCon (plain,
// conv, Tucker), DoRA, LoHa and LoKr (full, decomposed, Tucker) end at the
// limit with the weights LyCORIS saves, and a second, looser pass changes nothing.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "core/common/test_fixtures.h"
#include "core/io/safetensors.h"
#include "core/networks/lora_network.h"

namespace lorad::networks {
namespace {

using testing::AllClose;

class LycorisMaxNorm : public ::testing::Test {
 protected:
  void SetUp() override {
    auto file = io::SafetensorsFile::Open(std::string(LORAD_REPO_FIXTURES) + "/lycoris_max_norm.safetensors");
    ASSERT_TRUE(file.ok()) << file.status();
    file_ = std::move(*file);
    cases_ = nlohmann::json::parse(file_->metadata().at("cases"));
  }

  torch::Tensor Get(const std::string& key) {
    auto t = file_->Get(key);
    EXPECT_TRUE(t.ok()) << key << ": " << t.status();
    return t.ok() ? t->to(torch::kFloat32) : torch::Tensor();
  }

  std::map<std::string, torch::Tensor> State(const std::string& prefix, const nlohmann::json& keys) {
    std::map<std::string, torch::Tensor> out;
    for (const auto& key : keys) out[key.get<std::string>()] = Get(prefix + key.get<std::string>());
    return out;
  }

  std::shared_ptr<io::SafetensorsFile> file_;
  nlohmann::json cases_;
};

NetworkConfig ConfigFor(const nlohmann::json& c) {
  const auto& kw = c["kwargs"];
  std::vector<std::string> args;
  const std::string module = c["module"];
  args.push_back(module == "LohaModule" ? "algo=loha" : module == "LokrModule" ? "algo=lokr" : "algo=locon");
  if (kw.value("use_tucker", false)) args.push_back("use_tucker=True");
  if (kw.value("weight_decompose", false)) args.push_back("dora_wd=True");
  if (kw.contains("factor")) args.push_back(absl::StrCat("factor=", kw["factor"].get<int64_t>()));
  if (kw.value("decompose_both", false)) args.push_back("decompose_both=True");
  const int64_t dim = kw["lora_dim"];
  const double alpha = kw["alpha"];
  args.push_back(absl::StrCat("conv_dim=", dim));
  args.push_back(absl::StrCat("conv_alpha=", alpha));
  auto config = ParseNetworkConfig({"lycoris.kohya", dim, alpha, std::nullopt, args});
  EXPECT_TRUE(config.ok()) << config.status();
  return *config;
}

TEST_F(LycorisMaxNorm, EveryAlgorithmMatchesLycoris) {
  ASSERT_EQ(cases_.size(), 10u);
  for (const auto& [name, c] : cases_.items()) {
    SCOPED_TRACE(name);
    auto w = Get(name + "/base/weight");
    const bool linear = c["layer"] == "linear";
    auto layer = std::make_shared<nn::LayerImpl>(linear ? nn::LinearOptions(w.size(1), w.size(0))
                                                        : nn::Conv2dOptions(w.size(1), w.size(0), w.size(2), 1, 1));
    {
      torch::NoGradGuard no_grad;
      layer->weight().copy_(w);
      const_cast<torch::Tensor&>(layer->bias()).copy_(Get(name + "/base/bias"));
    }
    for (auto& p : layer->parameters()) p.set_requires_grad(false);
    TargetLayer target{"lora_unet_" + name, name, layer, !linear};
    auto net = LoraNetwork::Create(ConfigFor(c), {target}, at::detail::createCPUGenerator(1));
    ASSERT_TRUE(net.ok()) << net.status();
    ASSERT_TRUE((*net)->LoadStateDict([&] {
      std::map<std::string, torch::Tensor> prefixed;
      for (auto& [k, v] : State(name + "/before/", c["keys"])) prefixed["lora_unet_" + name + "." + k] = v;
      return prefixed;
    }()).ok());
    const auto& adapter = (*net)->modules().at(0).adapter;
    EXPECT_NEAR(adapter->DeltaWeight().norm().item<double>(), c["orig_norm"].get<double>(),
                1e-5 * c["orig_norm"].get<double>());

    auto pass1 = (*net)->ApplyMaxNorm(c["max_norm"].get<double>());
    ASSERT_TRUE(pass1.ok()) << pass1.status();
    EXPECT_EQ(pass1->keys_scaled, 1);
    EXPECT_NEAR(pass1->max_key_norm, c["pass1"]["norm"].get<double>(), 1e-5 * c["max_norm"].get<double>());
    auto saved = adapter->StateDict();
    std::map<std::string, torch::Tensor> got(saved.begin(), saved.end());
    for (auto& [key, expected] : State(name + "/after1/", c["keys"])) {
      ASSERT_TRUE(got.count(key)) << key;
      EXPECT_TRUE(AllClose(got[key].to(torch::kFloat32), expected, 1e-5, 1e-6)) << key;
    }
    // The forward after the pass: LyCORIS' scalar is applied, not only saved.
    layer->SetAdapter(adapter);
    EXPECT_TRUE(AllClose(layer->forward(Get(name + "/x")), Get(name + "/y1"), 1e-5, 1e-6));

    auto pass2 = (*net)->ApplyMaxNorm(c["pass2"]["max_norm"].get<double>());
    ASSERT_TRUE(pass2.ok()) << pass2.status();
    EXPECT_EQ(pass2->keys_scaled, 0);
    EXPECT_EQ(pass2->max_key_norm, 0.0);  // LyCORIS reports zeros when nothing was scaled
    saved = adapter->StateDict();
    got = std::map<std::string, torch::Tensor>(saved.begin(), saved.end());
    for (auto& [key, expected] : State(name + "/after2/", c["keys"])) {
      EXPECT_TRUE(AllClose(got[key].to(torch::kFloat32), expected, 1e-5, 1e-6)) << key;
    }
  }
}

TEST_F(LycorisMaxNorm, SavedScalarIsFoldedAndResetOnLoad) {
  const auto& c = cases_["loha_linear"];
  auto w = Get("loha_linear/base/weight");
  auto layer = std::make_shared<nn::LayerImpl>(nn::LinearOptions(w.size(1), w.size(0)));
  TargetLayer target{"lora_unet_x", "x", layer, false};
  auto net = LoraNetwork::Create(ConfigFor(c), {target}, at::detail::createCPUGenerator(1));
  ASSERT_TRUE(net.ok()) << net.status();
  std::map<std::string, torch::Tensor> before;
  for (auto& [k, v] : State("loha_linear/before/", c["keys"])) before["lora_unet_x." + k] = v;
  ASSERT_TRUE((*net)->LoadStateDict(before).ok());
  ASSERT_TRUE((*net)->ApplyMaxNorm(c["max_norm"].get<double>()).ok());
  const auto& adapter = (*net)->modules().at(0).adapter;
  EXPECT_LT(adapter->scalar(), 1.0);
  const double norm = adapter->DeltaWeight().norm().item<double>();
  // Reloading what was saved gives the same delta with the scalar back at 1.
  auto saved = (*net)->StateDict(torch::kFloat32);
  ASSERT_TRUE((*net)->LoadStateDict(std::map<std::string, torch::Tensor>(saved.begin(), saved.end())).ok());
  EXPECT_EQ(adapter->scalar(), 1.0);
  EXPECT_NEAR(adapter->DeltaWeight().norm().item<double>(), norm, 1e-6 * norm);
}

}  // namespace
}  // namespace lorad::networks
