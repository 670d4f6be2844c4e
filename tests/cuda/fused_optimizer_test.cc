// The fused CUDA optimizer kernels (AdamW: at::_fused_adamw_, Lion: at::_foreach_*)
// compute what the per-parameter path computes, keep the same state, and a run
// saved on one path resumes on the other.
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "core/optim/optimizer.h"
#include "tests/cuda/cuda_test_support.h"

namespace lorad::optim {
namespace {

struct Case {
  std::string type;
  std::vector<std::string> args;
};

// Three trainable parameters of LoRA-like shapes plus one that never gets a
// gradient (skipped by both paths).
std::vector<torch::Tensor> MakeParams(const torch::Device& device) {
  torch::manual_seed(7);
  std::vector<torch::Tensor> params = {torch::randn({16, 8}), torch::randn({8, 32}), torch::randn({4, 4, 3, 3}),
                                       torch::randn({5})};
  for (torch::Tensor& p : params) p = p.to(device).requires_grad_(true);
  return params;
}

std::unique_ptr<Optimizer> MakeOptimizer(const Case& c, std::vector<torch::Tensor> params, bool fused) {
  std::vector<ParamGroup> groups = {{"unet", {params[0], params[1]}, 1e-3}, {"text_encoder", {params[2], params[3]}, 5e-4}};
  auto opt = CreateOptimizer(c.type, c.args, std::move(groups));
  EXPECT_TRUE(opt.ok()) << opt.status();
  (*opt)->set_fused_kernels(fused);
  return std::move(*opt);
}

// The same gradients for every optimizer at a given step; the last parameter has none.
void SetGrads(const std::vector<torch::Tensor>& params, int step) {
  torch::manual_seed(100 + step);
  for (size_t i = 0; i + 1 < params.size(); ++i) {
    params[i].mutable_grad() = torch::randn(params[i].sizes()).to(params[i].device());
  }
}

void ExpectClose(const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b, const std::string& what) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_TRUE(torch::allclose(a[i].detach().cpu(), b[i].detach().cpu(), 1e-5, 1e-6))
        << what << " param " << i << " max diff " << (a[i] - b[i]).abs().max().item<double>();
  }
}

const std::vector<Case>& Cases() {
  static const std::vector<Case> cases = {
      {"AdamW", {}},
      {"AdamW", {"weight_decay=0.1", "amsgrad=True", "betas=0.9,0.99"}},
      {"AdamW", {"maximize=True", "eps=1e-6"}},
      {"Lion", {"weight_decay=0.5"}},
      {"Lion", {"decoupled_weight_decay=True", "weight_decay=0.01", "betas=0.95,0.98"}},
  };
  return cases;
}

TEST(FusedOptimizerTest, FusedStepsMatchPerParameterSteps) {
  LORAD_SKIP_WITHOUT_CUDA();
  const torch::Device cuda(torch::kCUDA, 0);
  for (const Case& c : Cases()) {
    SCOPED_TRACE(c.type + " " + (c.args.empty() ? std::string() : c.args.front()));
    std::vector<torch::Tensor> fused_params = MakeParams(cuda), eager_params = MakeParams(cuda);
    const torch::Tensor untouched = fused_params.back().detach().clone();
    auto fused = MakeOptimizer(c, fused_params, true);
    auto eager = MakeOptimizer(c, eager_params, false);
    for (int step = 0; step < 5; ++step) {
      SetGrads(fused_params, step);
      SetGrads(eager_params, step);
      ASSERT_TRUE(fused->Step().ok());
      ASSERT_TRUE(eager->Step().ok());
      fused->ZeroGrad();
      eager->ZeroGrad();
    }
    ExpectClose(fused_params, eager_params, "after 5 steps");
    EXPECT_TRUE(torch::equal(fused_params.back().detach(), untouched)) << "a parameter without grad moved";
    EXPECT_EQ(fused->step_count(), eager->step_count());

    auto fused_state = fused->SaveState();
    auto eager_state = eager->SaveState();
    ASSERT_TRUE(fused_state.ok() && eager_state.ok());
    EXPECT_EQ(fused_state->values, eager_state->values) << "step counters and lrs";
    ASSERT_EQ(fused_state->tensors.size(), eager_state->tensors.size());
    for (size_t i = 0; i < eager_state->tensors.size(); ++i) {
      const auto& [name, tensor] = eager_state->tensors[i];
      EXPECT_EQ(fused_state->tensors[i].first, name);
      EXPECT_TRUE(torch::allclose(fused_state->tensors[i].second.cpu(), tensor.cpu(), 1e-5, 1e-6)) << name;
    }
  }
}

// CPU parameters always take the per-parameter path: the switch changes no bit.
TEST(FusedOptimizerTest, CpuStepsAreTheSameEitherWay) {
  const torch::Device cpu(torch::kCPU);
  for (const Case& c : Cases()) {
    SCOPED_TRACE(c.type);
    std::vector<torch::Tensor> on_params = MakeParams(cpu), off_params = MakeParams(cpu);
    auto on = MakeOptimizer(c, on_params, true);
    auto off = MakeOptimizer(c, off_params, false);
    for (int step = 0; step < 3; ++step) {
      SetGrads(on_params, step);
      SetGrads(off_params, step);
      ASSERT_TRUE(on->Step().ok());
      ASSERT_TRUE(off->Step().ok());
    }
    for (size_t i = 0; i < on_params.size(); ++i) EXPECT_TRUE(torch::equal(on_params[i], off_params[i])) << i;
  }
}

TEST(FusedOptimizerTest, StateSavedOnOnePathResumesOnTheOther) {
  LORAD_SKIP_WITHOUT_CUDA();
  const torch::Device cuda(torch::kCUDA, 0);
  for (const Case& c : Cases()) {
    SCOPED_TRACE(c.type);
    std::vector<torch::Tensor> params = MakeParams(cuda);
    auto fused = MakeOptimizer(c, params, true);
    for (int step = 0; step < 3; ++step) {
      SetGrads(params, step);
      ASSERT_TRUE(fused->Step().ok());
      fused->ZeroGrad();
    }
    auto state = fused->SaveState();
    ASSERT_TRUE(state.ok()) << state.status();

    // Resume the fused run's state on the per-parameter path (and back) with
    // copies of the parameters; one more step each must agree.
    std::vector<torch::Tensor> a, b;
    for (const torch::Tensor& p : params) {
      a.push_back(p.detach().clone().requires_grad_(true));
      b.push_back(p.detach().clone().requires_grad_(true));
    }
    auto eager_resumed = MakeOptimizer(c, a, false);
    auto fused_resumed = MakeOptimizer(c, b, true);
    ASSERT_TRUE(eager_resumed->LoadState(*state).ok());
    ASSERT_TRUE(fused_resumed->LoadState(*state).ok());
    SetGrads(a, 3);
    SetGrads(b, 3);
    ASSERT_TRUE(eager_resumed->Step().ok());
    ASSERT_TRUE(fused_resumed->Step().ok());
    ExpectClose(a, b, "resumed step");
  }
}

}  // namespace
}  // namespace lorad::optim
