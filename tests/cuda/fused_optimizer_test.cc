// The fused CUDA optimizer kernels (AdamW: at::_fused_adamw_, Lion: at::_foreach_*)
// compute what the per-parameter path computes, keep the same state, and a run
// saved on one path resumes on the other. The graph-safe step
// (EnableGraphSafeStep) does the same with its lr and step counters on the
// device, and a captured graph-safe step replays with the lrs set since.
#include <cmath>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <torch/torch.h>
#include <torch/version.h>

#include "core/optim/optimizer.h"
#include "tests/cuda/cuda_test_support.h"

// CUDA graph capture needs LibTorch's CUDA headers (LORAD_TORCH_CUDA: set by
// tests/cuda/CMakeLists.txt for a CUDA LibTorch); the CPU builds (Debian
// 1.13) compile the test without them and it skips.
#if defined(LORAD_TORCH_CUDA)
#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

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

// A schedule that changes every step.
double LrAt(int group, int step) { return (group == 0 ? 1e-3 : 5e-4) * (1.0 + 0.5 * std::sin(0.7 * step + group)); }

void SetLrs(Optimizer& opt, int step) {
  for (int g = 0; g < opt.num_groups(); ++g) ASSERT_TRUE(opt.SetLr(g, LrAt(g, step)).ok());
}

// Device counters equal their host mirrors (reads the device: test only).
void ExpectCountersAgree(const Optimizer& opt) {
  for (int g = 0; g < opt.num_groups(); ++g) {
    for (size_t p = 0; p < opt.group(g).params.size(); ++p) {
      const ParamState& s = opt.param_state(g, static_cast<int>(p));
      ASSERT_TRUE(s.step_tensor.defined());
      EXPECT_EQ(s.step_tensor.item<double>(), static_cast<double>(s.step)) << "group " << g << " param " << p;
    }
  }
}

// Graph-safe steps on CUDA (fused: one at::_fused_adamw_ with the Tensor lr per
// group on LibTorch >= 2.1; Lion's foreach ops with the lr tensor) against the
// normal per-parameter path, the lr changed before every step.
TEST(FusedOptimizerTest, GraphSafeStepsMatchPerParameterSteps) {
  LORAD_SKIP_WITHOUT_CUDA();
  const torch::Device cuda(torch::kCUDA, 0);
  for (const Case& c : Cases()) {
    for (bool fused : {true, false}) {
      SCOPED_TRACE(c.type + " " + (c.args.empty() ? std::string() : c.args.front()) + (fused ? " fused" : " unfused"));
      std::vector<torch::Tensor> safe_params = MakeParams(cuda), eager_params = MakeParams(cuda);
      const torch::Tensor untouched = safe_params.back().detach().clone();
      auto safe = MakeOptimizer(c, safe_params, fused);
      auto eager = MakeOptimizer(c, eager_params, false);
      absl::Status enabled = safe->EnableGraphSafeStep(torch::Device(torch::kCUDA));
      ASSERT_TRUE(enabled.ok()) << enabled;
      for (int step = 0; step < 10; ++step) {
        SetLrs(*safe, step);
        SetLrs(*eager, step);
        SetGrads(safe_params, step);
        SetGrads(eager_params, step);
        ASSERT_TRUE(safe->Step().ok());
        ASSERT_TRUE(eager->Step().ok());
        safe->ZeroGrad();
        eager->ZeroGrad();
      }
      ExpectClose(safe_params, eager_params, "after 10 steps");
      EXPECT_TRUE(torch::equal(safe_params.back().detach(), untouched)) << "a parameter without grad moved";
      EXPECT_EQ(safe->step_count(), eager->step_count());
      ExpectCountersAgree(*safe);
      auto safe_state = safe->SaveState();
      auto eager_state = eager->SaveState();
      ASSERT_TRUE(safe_state.ok() && eager_state.ok());
      EXPECT_EQ(safe_state->values, eager_state->values) << "step counters and lrs";
    }
  }
}

// A graph-safe AdamW step captured in a CUDA graph (torch's whole-network
// recipe: warm-up and capture on a side stream, 3 eager warm-up steps, static
// gradient tensors refilled before each replay) replays 5 times with a new lr
// each time, and ends where 5 eager graph-safe steps end.
TEST(FusedOptimizerTest, CapturedGraphSafeAdamWStepReplaysWithNewLrs) {
  LORAD_SKIP_WITHOUT_CUDA();
#if defined(LORAD_TORCH_CUDA)
  const torch::Device cuda(torch::kCUDA, 0);
  for (const Case& c : {Case{"AdamW", {"weight_decay=0.1"}}, Case{"AdamW", {"amsgrad=True", "betas=0.9,0.99"}}}) {
    SCOPED_TRACE(c.args.front());
    std::vector<torch::Tensor> graph_params = MakeParams(cuda), eager_params = MakeParams(cuda);
    auto graphed = MakeOptimizer(c, graph_params, true);
    auto eager = MakeOptimizer(c, eager_params, true);
    ASSERT_TRUE(graphed->EnableGraphSafeStep(cuda).ok());
    ASSERT_TRUE(eager->EnableGraphSafeStep(cuda).ok());
    // The captured step reads these gradient tensors; replays refill them in place.
    std::vector<torch::Tensor> static_grads;
    for (size_t i = 0; i + 1 < graph_params.size(); ++i) {
      static_grads.push_back(torch::zeros_like(graph_params[i]));
      graph_params[i].mutable_grad() = static_grads.back();
    }
    const auto fill_static_grads = [&](int step) {
      SetGrads(eager_params, step);
      for (size_t i = 0; i < static_grads.size(); ++i) static_grads[i].copy_(eager_params[i].grad());
    };

    c10::cuda::CUDAStream side = c10::cuda::getStreamFromPool();
    at::cuda::CUDAEvent ready;
    ready.record(c10::cuda::getCurrentCUDAStream());
    ready.block(side);
    at::cuda::CUDAGraph graph;
    {
      c10::cuda::CUDAStreamGuard on_side(side);
      for (int step = 0; step < 3; ++step) {  // warm-up: creates the state tensors
        SetLrs(*graphed, step);
        SetLrs(*eager, step);
        fill_static_grads(step);
        ASSERT_TRUE(graphed->Step().ok());
        ASSERT_TRUE(eager->Step().ok());
      }
      graph.capture_begin();
      absl::Status captured = graphed->Step();
      graph.capture_end();
      ASSERT_TRUE(captured.ok()) << captured;
      graphed->DiscardCapturedStep();  // the capture ran nothing
      for (int step = 3; step < 8; ++step) {
        SetLrs(*graphed, step);
        SetLrs(*eager, step);
        fill_static_grads(step);
        graph.replay();
        graphed->RecordReplayedStep();
        ASSERT_TRUE(eager->Step().ok());
      }
    }
    torch::cuda::synchronize();
    // The same kernels on the same inputs: bit for bit.
    for (size_t i = 0; i < graph_params.size(); ++i) {
      EXPECT_TRUE(torch::equal(graph_params[i].detach(), eager_params[i].detach()))
          << "param " << i << " max diff " << (graph_params[i] - eager_params[i]).abs().max().item<double>();
    }
    EXPECT_EQ(graphed->step_count(), 8);
    EXPECT_EQ(eager->step_count(), 8);
    ExpectCountersAgree(*graphed);
    auto graph_state = graphed->SaveState();
    auto eager_state = eager->SaveState();
    ASSERT_TRUE(graph_state.ok() && eager_state.ok());
    EXPECT_EQ(graph_state->values, eager_state->values) << "host mirrors after the replays";
    ASSERT_EQ(graph_state->tensors.size(), eager_state->tensors.size());
    for (size_t i = 0; i < eager_state->tensors.size(); ++i) {
      EXPECT_TRUE(torch::equal(graph_state->tensors[i].second, eager_state->tensors[i].second))
          << eager_state->tensors[i].first;
    }
  }
#else
  GTEST_SKIP() << "this build's LibTorch has no CUDA (LORAD_TORCH_CUDA unset): no graph capture";
#endif
}

}  // namespace
}  // namespace lorad::optim
