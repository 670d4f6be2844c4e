// Every kohya LoRA and LyCORIS case of train_reference.safetensors: init,
// saved keys and shapes, rebuilt / merged weights, forwards, dropouts.
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "core/networks/adapter.h"
#include "core/common/test_fixtures.h"

namespace lorad::networks {
namespace {

using testing::AllClose;
using testing::Get;

class TrainReference : public ::testing::Test {
 protected:
  void SetUp() override {
    file_ = testing::OpenFixture("train_reference.safetensors");
    ASSERT_NE(file_, nullptr);
    cases_ = testing::MetadataJson(*file_, "cases");
  }

  // A frozen base layer with the fixture's weights; Linear or Conv2d (padding k/2).
  nn::Layer BaseLayer(const std::string& base) {
    auto w = Get(*file_, base + "/weight");
    auto b = Get(*file_, base + "/bias");
    nn::Layer layer(w.dim() == 2 ? nn::LinearOptions(w.size(1), w.size(0))
                                 : nn::Conv2dOptions(w.size(1), w.size(0), w.size(2), 1, w.size(2) / 2));
    torch::NoGradGuard no_grad;
    layer->weight().copy_(w);
    const_cast<torch::Tensor&>(layer->bias()).copy_(b);
    for (auto& p : layer->parameters()) p.set_requires_grad(false);
    return layer;
  }

  std::map<std::string, torch::Tensor> StateFrom(const std::string& prefix, const nlohmann::json& keys) {
    std::map<std::string, torch::Tensor> sd;
    for (const auto& [key, shape] : keys.items()) sd[key] = Get(*file_, prefix + key);
    return sd;
  }

  torch::Tensor Op(const nn::Layer& layer, const torch::Tensor& x, const torch::Tensor& w) {
    return layer->ForwardWithWeight(x, w, layer->bias());
  }

  std::shared_ptr<io::SafetensorsFile> file_;
  nlohmann::json cases_;
};

TEST_F(TrainReference, KohyaLoraModules) {
  const auto& layers = cases_["kohya_lora"]["layers"];
  ASSERT_EQ(layers.size(), 3u);
  for (const auto& [name, c] : layers.items()) {
    SCOPED_TRACE(name);
    const std::string base = "kohya_lora/base/" + name;
    auto layer = BaseLayer(base);
    auto x = Get(*file_, base + "/x");
    EXPECT_TRUE(AllClose(layer->forward(x), Get(*file_, base + "/y")));
    AdapterSpec spec;
    spec.dim = c["constructor"]["lora_dim"];
    spec.alpha = c["constructor"]["alpha"];
    // Initialisation from the same seed (kohya's draw order).
    auto adapter = CreateAdapter(*layer, spec, at::detail::createCPUGenerator(c["init_seed"].get<uint64_t>()));
    ASSERT_TRUE(adapter.ok()) << adapter.status();
    auto sd = (*adapter)->StateDict();
    std::map<std::string, torch::Tensor> got(sd.begin(), sd.end());
    ASSERT_EQ(got.size(), c["saved_keys"].size());
    for (const auto& [key, shape] : c["saved_keys"].items()) {
      ASSERT_TRUE(got.count(key)) << key;
      EXPECT_EQ(got[key].sizes().vec(), shape.get<std::vector<int64_t>>()) << key;
    }
    EXPECT_TRUE(AllClose(got["lora_down.weight"], Get(*file_, "kohya_lora/" + name + "/init/lora_down.weight"), 0, 0));
    EXPECT_TRUE(AllClose(got["lora_up.weight"], Get(*file_, "kohya_lora/" + name + "/init/lora_up.weight"), 0, 0));
    EXPECT_NEAR((*adapter)->scale(), c["scale"].get<double>(), 1e-12);

    // Seeded weights: forward, multiplier, merge.
    const std::string prefix = "kohya_lora/" + name + "/";
    auto weights = StateFrom(prefix + "sd/", c["saved_keys"]);
    ASSERT_TRUE((*adapter)->LoadStateDict(weights).ok());
    layer->SetAdapter(*adapter);
    (*adapter)->train(true);
    EXPECT_TRUE(AllClose(layer->forward(x), Get(*file_, prefix + "y")));
    (*adapter)->set_multiplier(0.5);
    EXPECT_TRUE(AllClose(layer->forward(x), Get(*file_, prefix + "y_m0.5")));
    (*adapter)->set_multiplier(1.0);
    EXPECT_TRUE(AllClose((*adapter)->MergedWeight(*layer, 1.0), Get(*file_, prefix + "merged_weight")));

    // Training-mode dropouts from the same seeds.
    for (const auto& [case_name, d] : c["train_dropout_cases"].items()) {
      SCOPED_TRACE(case_name);
      AdapterSpec dspec = spec;
      dspec.dropout = d["dropout"].is_null() ? 0.0 : d["dropout"].get<double>();
      dspec.rank_dropout = d["rank_dropout"].is_null() ? 0.0 : d["rank_dropout"].get<double>();
      dspec.module_dropout = d["module_dropout"].is_null() ? 0.0 : d["module_dropout"].get<double>();
      auto dropped = CreateAdapter(*layer, dspec);
      ASSERT_TRUE(dropped.ok());
      ASSERT_TRUE((*dropped)->LoadStateDict(weights).ok());
      auto rng = std::make_shared<DropoutRng>();
      rng->generator = at::detail::createCPUGenerator(d["seed"].get<uint64_t>());
      (*dropped)->set_dropout_rng(rng);
      (*dropped)->train(true);
      layer->SetAdapter(*dropped);
      EXPECT_TRUE(AllClose(layer->forward(x), Get(*file_, prefix + "train/" + case_name + "/y")));
    }
    layer->SetAdapter(nullptr);
  }
}

TEST_F(TrainReference, KohyaAlphaSemantics) {
  nn::Layer layer(nn::LinearOptions(24, 16));
  for (const auto& [alpha, c] : cases_["kohya_lora"]["alpha_semantics"].items()) {
    AdapterSpec spec;
    spec.dim = 4;
    spec.alpha = alpha == "None" ? 0.0 : std::stod(alpha);
    auto adapter = CreateAdapter(*layer, spec);
    ASSERT_TRUE(adapter.ok());
    EXPECT_DOUBLE_EQ((*adapter)->scale(), c["scale"].get<double>()) << alpha;
    EXPECT_DOUBLE_EQ((*adapter)->alpha(), c["alpha_buffer"].get<double>()) << alpha;
  }
}

Algo AlgoOf(const std::string& module) {
  if (module.find("loha") != std::string::npos) return Algo::kLoha;
  if (module.find("lokr") != std::string::npos) return Algo::kLokr;
  return Algo::kLora;
}

TEST_F(TrainReference, LycorisModules) {
  const auto& modules = cases_["lycoris"]["modules"];
  ASSERT_EQ(modules.size(), 18u);
  for (const auto& [name, c] : modules.items()) {
    SCOPED_TRACE(name);
    const bool conv = c["layer"].get<std::string>().find("Conv2d") != std::string::npos;
    const std::string base = conv ? "lyco/base/conv3x3" : "lyco/base/linear";
    auto layer = BaseLayer(base);
    auto x = Get(*file_, base + "/x");
    const auto& k = c["constructor_kwargs"];
    AdapterSpec spec;
    spec.algo = AlgoOf(c["module"]);
    spec.dim = k["lora_dim"];
    spec.alpha = k["alpha"];
    spec.dora = k.value("weight_decompose", false);
    spec.wd_on_output = k.value("wd_on_out", false);
    spec.use_tucker = k.value("use_tucker", false);
    spec.factor = k.value("factor", -1);
    spec.decompose_both = k.value("decompose_both", false);
    spec.unbalanced_factorization = k.value("unbalanced_factorization", false);
    auto created = CreateAdapter(*layer, spec, at::detail::createCPUGenerator(1));
    ASSERT_TRUE(created.ok()) << created.status();
    auto adapter = *created;
    const std::string prefix = "lyco/" + name + "/";

    // Saved keys and shapes, alpha value.
    auto sd = adapter->StateDict();
    std::map<std::string, torch::Tensor> got(sd.begin(), sd.end());
    EXPECT_EQ(got.size(), c["saved_keys"].size());
    for (const auto& [key, info] : c["saved_keys"].items()) {
      ASSERT_TRUE(got.count(key)) << key;
      EXPECT_EQ(got[key].sizes().vec(), info["shape"].get<std::vector<int64_t>>()) << key;
    }
    EXPECT_DOUBLE_EQ(got["alpha"].item<double>(), c["alpha_buffer"].get<double>());
    EXPECT_NEAR(adapter->scale(), c["scale"].get<double>(), 1e-12);
    if (spec.dora) EXPECT_TRUE(AllClose(adapter->dora_scale(), Get(*file_, prefix + "dora_scale_init")));

    ASSERT_TRUE(adapter->LoadStateDict(StateFrom(prefix + "sd/", c["saved_keys"])).ok());
    const double scale = c["scale"].get<double>();
    auto w = layer->weight().detach();
    // LoCon's `rebuilt` excludes the scale; LoHa / LoKr's includes it once.
    auto rebuilt = Get(*file_, prefix + "rebuilt");
    auto delta_once = spec.algo == Algo::kLora ? rebuilt * scale : rebuilt;
    EXPECT_TRUE(AllClose(adapter->DeltaWeight(), delta_once));
    // LyCORIS' get_diff_weight applies the scale again for LoHa/LoKr; loaders do not.
    auto diff = Get(*file_, prefix + "diff_weight");
    EXPECT_TRUE(AllClose(spec.algo == Algo::kLora ? adapter->DeltaWeight() : adapter->DeltaWeight() * scale, diff));

    auto merged = adapter->MergedWeight(*layer, 1.0);
    if (spec.algo == Algo::kLora || scale == 1.0) {
      EXPECT_TRUE(AllClose(merged, Get(*file_, prefix + "merged_weight")));
      EXPECT_TRUE(AllClose(adapter->MergedWeight(*layer, 0.5), Get(*file_, prefix + "merged_weight_m0.5")));
    } else if (!spec.dora) {
      EXPECT_TRUE(AllClose(merged, w + rebuilt));  // ComfyUI / A1111: scale once
    }
    // The forward (scale once) equals the op with our merged weight, and the reference forward.
    layer->SetAdapter(adapter);
    adapter->train(true);
    auto y = Get(*file_, prefix + "y");
    EXPECT_TRUE(AllClose(layer->forward(x), y));
    EXPECT_TRUE(AllClose(Op(layer, x, merged), y));
    if (file_->Has(prefix + "y_bypass") && spec.algo != Algo::kLokr) {
      EXPECT_TRUE(AllClose(layer->forward(x), Get(*file_, prefix + "y_bypass")));
    }
    adapter->set_multiplier(0.5);
    EXPECT_TRUE(AllClose(layer->forward(x), Get(*file_, prefix + "y_m0.5")));
    layer->SetAdapter(nullptr);
  }
}

TEST(Factorization, MatchesLycoris) {
  EXPECT_EQ(Factorization(24, -1), (std::pair<int64_t, int64_t>(4, 6)));
  EXPECT_EQ(Factorization(16, -1), (std::pair<int64_t, int64_t>(4, 4)));
  EXPECT_EQ(Factorization(12, -1), (std::pair<int64_t, int64_t>(3, 4)));
  EXPECT_EQ(Factorization(24, 2), (std::pair<int64_t, int64_t>(2, 12)));
  EXPECT_EQ(Factorization(320, 8), (std::pair<int64_t, int64_t>(8, 40)));
}

}  // namespace
}  // namespace lorad::networks
