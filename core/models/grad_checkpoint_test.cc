// Gradient checkpointing must not change gradients: the U-Net with
// set_gradient_checkpointing(true) gives the same gradients (within 1e-5) as
// without, for a fully trainable model and for a frozen model with trainable
// adapters (LoRA-like, with dropout, so the RNG state restore is exercised).
#include <gtest/gtest.h>

#include "core/models/unet.h"
#include "core/nn/layer.h"

namespace lorad::models {
namespace {

UNetConfig TinyConfig() {
  UNetConfig c = UNetConfig::SdxlBase();
  c.model_channels = 16;
  c.channel_mult = {1, 2};
  c.attention_levels = {1};
  c.transformer_depth = {0, 2};
  c.transformer_depth_middle = 1;
  c.head_dim = 8;
  c.context_dim = 24;
  c.adm_in_channels = 12;
  c.norm_groups = 8;
  return c;
}

// A LoRA-like adapter: base(x) + B(A(dropout(x))) with its own parameters.
class TestAdapter : public nn::LayerAdapter {
 public:
  TestAdapter(int64_t in, int64_t out) {
    down_ = register_parameter("down", torch::randn({4, in}) * 0.1);
    up_ = register_parameter("up", torch::randn({out, 4}) * 0.1);
  }
  torch::Tensor Forward(const torch::Tensor& x, const nn::LayerImpl& layer) override {
    auto h = torch::dropout(x, 0.25, /*train=*/true);
    return layer.BaseForward(x) + torch::matmul(torch::matmul(h, down_.t()), up_.t());
  }
  torch::Tensor down_, up_;
};

struct Inputs {
  torch::Tensor x, t, ctx, y;
};

Inputs MakeInputs(const UNetConfig& c) {
  torch::manual_seed(7);
  return {torch::randn({2, c.in_channels, 8, 8}), torch::tensor({10, 700}), torch::randn({2, 5, c.context_dim}),
          torch::randn({2, c.adm_in_channels})};
}

// Runs forward+backward and returns the gradient of every tensor in `watch`.
std::vector<torch::Tensor> Grads(UNet& unet, const Inputs& in, const std::vector<torch::Tensor>& watch, bool ckpt) {
  for (auto t : watch) {
    if (t.grad().defined()) t.mutable_grad() = torch::Tensor();
  }
  unet->set_gradient_checkpointing(ckpt);
  torch::manual_seed(1234);
  auto out = unet->forward(in.x, in.t, in.ctx, in.y);
  (out * out).mean().backward();
  std::vector<torch::Tensor> grads;
  for (const auto& t : watch) grads.push_back(t.grad().defined() ? t.grad().clone() : torch::Tensor());
  return grads;
}

void ExpectSame(const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b) {
  ASSERT_EQ(a.size(), b.size());
  double worst = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    ASSERT_TRUE(a[i].defined()) << "tensor " << i << " got no gradient without checkpointing";
    ASSERT_TRUE(b[i].defined()) << "tensor " << i << " got no gradient with checkpointing";
    const double scale = std::max(1e-12, a[i].abs().max().item<double>());
    worst = std::max(worst, (a[i] - b[i]).abs().max().item<double>() / scale);
  }
  std::printf("worst relative gradient difference: %.3g over %zu tensors\n", worst, a.size());
  EXPECT_LE(worst, 1e-5);
}

TEST(GradientCheckpointing, SameGradientsForTrainableModel) {
  torch::manual_seed(0);
  UNet unet(TinyConfig());
  auto in = MakeInputs(unet->config());
  in.x.requires_grad_(true);
  std::vector<torch::Tensor> watch = unet->parameters();
  watch.push_back(in.x);
  auto plain = Grads(unet, in, watch, false);
  auto ckpt = Grads(unet, in, watch, true);
  ExpectSame(plain, ckpt);
}

TEST(GradientCheckpointing, SameGradientsForAdaptersOnFrozenModel) {
  torch::manual_seed(0);
  UNet unet(TinyConfig());
  for (auto& p : unet->parameters()) p.requires_grad_(false);
  std::vector<torch::Tensor> watch;
  for (auto& [name, layer] : nn::FindLayers(*unet)) {
    if (layer->kind() != nn::LayerKind::kLinear) continue;
    auto adapter = std::make_shared<TestAdapter>(layer->options().in, layer->options().out);
    watch.push_back(adapter->down_);
    watch.push_back(adapter->up_);
    layer->SetAdapter(adapter);
  }
  ASSERT_FALSE(watch.empty());
  auto in = MakeInputs(unet->config());
  auto plain = Grads(unet, in, watch, false);
  auto ckpt = Grads(unet, in, watch, true);
  ExpectSame(plain, ckpt);
}

TEST(GradientCheckpointing, NoEffectWithoutGradMode) {
  torch::manual_seed(0);
  UNet unet(TinyConfig());
  auto in = MakeInputs(unet->config());
  torch::NoGradGuard no_grad;
  auto a = unet->forward(in.x, in.t, in.ctx, in.y);
  unet->set_gradient_checkpointing(true);
  auto b = unet->forward(in.x, in.t, in.ctx, in.y);
  EXPECT_TRUE(torch::equal(a, b));
}

}  // namespace
}  // namespace lorad::models
