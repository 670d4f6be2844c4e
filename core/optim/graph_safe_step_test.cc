// The graph-safe optimizer step (Optimizer::EnableGraphSafeStep: lr and step
// counters in device tensors, for CUDA graph capture) computes what the normal
// step computes, on CPU here (the same code path as on a GPU without the fused
// kernels), keeps the same saved state, and counts replayed steps on the host.
#include <cmath>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "absl/strings/str_cat.h"
#include "core/optim/optimizer.h"

namespace lorad::optim {
namespace {

struct Case {
  std::string type;
  std::vector<std::string> args;
};

const std::vector<Case>& Cases() {
  static const std::vector<Case> cases = {
      {"AdamW", {}},                                                   // weight_decay 0.01
      {"AdamW", {"weight_decay=0"}},
      {"AdamW", {"weight_decay=0.1", "amsgrad=True", "betas=0.9,0.99"}},
      {"AdamW", {"maximize=True", "eps=1e-6", "amsgrad=True"}},
      {"Lion", {"weight_decay=0.5"}},
      {"Lion", {}},
      {"Lion", {"decoupled_weight_decay=True", "weight_decay=0.01", "betas=0.95,0.98"}},
  };
  return cases;
}

std::string Name(const Case& c) {
  std::string out = c.type;
  for (const std::string& a : c.args) absl::StrAppend(&out, " ", a);
  return out;
}

// LoRA-like shapes in two groups; the last parameter never gets a gradient.
std::vector<torch::Tensor> MakeParams(torch::ScalarType dtype) {
  torch::manual_seed(7);
  std::vector<torch::Tensor> params = {torch::randn({16, 8}), torch::randn({8, 32}), torch::randn({4, 4, 3, 3}),
                                       torch::randn({5})};
  for (torch::Tensor& p : params) p = p.to(dtype).requires_grad_(true);
  return params;
}

std::unique_ptr<Optimizer> MakeOptimizer(const Case& c, const std::vector<torch::Tensor>& params) {
  std::vector<ParamGroup> groups = {{"unet", {params[0], params[1]}, 1e-3}, {"text_encoder", {params[2], params[3]}, 5e-4}};
  auto opt = CreateOptimizer(c.type, c.args, std::move(groups));
  EXPECT_TRUE(opt.ok()) << opt.status();
  return opt.ok() ? std::move(*opt) : nullptr;
}

void SetGrads(const std::vector<torch::Tensor>& params, int step) {
  torch::manual_seed(100 + step);
  for (size_t i = 0; i + 1 < params.size(); ++i) {
    params[i].mutable_grad() = torch::randn(params[i].sizes()).to(params[i].scalar_type());
  }
}

// A schedule that changes every step, different per group.
double LrAt(int group, int step) { return (group == 0 ? 1e-3 : 5e-4) * (1.0 + 0.5 * std::sin(0.7 * step + group)); }

void TakeStep(Optimizer& opt, const std::vector<torch::Tensor>& params, int step) {
  for (int g = 0; g < opt.num_groups(); ++g) ASSERT_TRUE(opt.SetLr(g, LrAt(g, step)).ok());
  SetGrads(params, step);
  absl::Status status = opt.Step();
  ASSERT_TRUE(status.ok()) << status;
  opt.ZeroGrad();
}

// Largest |a - b|: relative to max(|a|, |b|) elementwise, and in units of the
// float32 spacing (ulp) at the tensor's largest magnitude. Elementwise ulps
// mislead where a parameter passed near zero (a 1e-3 value that is the
// difference of two O(1) numbers carries their rounding), so the float32 bound
// is on the tensor-scale ulps; the elementwise figure is printed too.
struct Deviation {
  double relative = 0;
  double element_ulps = 0;
  double ulps = 0;
};

double Ulp(double x) {
  const float f = static_cast<float>(x);
  return static_cast<double>(std::nextafter(f, INFINITY) - f);
}

Deviation Measure(const torch::Tensor& a, const torch::Tensor& b) {
  torch::Tensor x = a.detach().to(torch::kDouble), y = b.detach().to(torch::kDouble);
  torch::Tensor diff = (x - y).abs();
  torch::Tensor mag = torch::maximum(x.abs(), y.abs());
  Deviation d;
  d.relative = (diff / mag.clamp_min(1e-30)).max().item<double>();
  torch::Tensor magf = mag.to(torch::kFloat);
  torch::Tensor ulp = (torch::nextafter(magf, torch::full_like(magf, INFINITY)) - magf).to(torch::kDouble);
  d.element_ulps = (diff / ulp).max().item<double>();
  d.ulps = diff.max().item<double>() / Ulp(mag.max().item<double>());
  return d;
}

Deviation Max(Deviation a, Deviation b) {
  return {std::max(a.relative, b.relative), std::max(a.element_ulps, b.element_ulps), std::max(a.ulps, b.ulps)};
}

// Parameters and every state tensor of two optimizers over the same parameters.
Deviation Compare(const std::vector<torch::Tensor>& pa, const std::vector<torch::Tensor>& pb, const Optimizer& a,
                  const Optimizer& b) {
  Deviation d;
  for (size_t i = 0; i < pa.size(); ++i) d = Max(d, Measure(pa[i], pb[i]));
  auto sa = a.SaveState(), sb = b.SaveState();
  EXPECT_TRUE(sa.ok() && sb.ok());
  if (!sa.ok() || !sb.ok()) return d;
  EXPECT_EQ(sa->values, sb->values) << "host step counters, lrs and step_count are bit for bit the same";
  EXPECT_EQ(sa->tensors.size(), sb->tensors.size());
  for (size_t i = 0; i < std::min(sa->tensors.size(), sb->tensors.size()); ++i) {
    EXPECT_EQ(sa->tensors[i].first, sb->tensors[i].first);
    d = Max(d, Measure(sa->tensors[i].second, sb->tensors[i].second));
  }
  return d;
}

// In graph-safe mode every parameter's device counter equals its host mirror.
void ExpectCountersAgree(const Optimizer& opt) {
  for (int g = 0; g < opt.num_groups(); ++g) {
    for (size_t p = 0; p < opt.group(g).params.size(); ++p) {
      const ParamState& s = opt.param_state(g, static_cast<int>(p));
      ASSERT_TRUE(s.step_tensor.defined());
      EXPECT_EQ(s.step_tensor.item<double>(), static_cast<double>(s.step)) << "group " << g << " param " << p;
    }
  }
}

// Measured over the cases below (30 steps, lr changed before every step):
// float64 at most 7.4e-15 relative; float32 at most 0.5 ulp at the tensor's
// scale (46 ulps elementwise, at a 6e-5 parameter). AdamW differs in rounding
// only: it folds the step size into the denominator as torch's capturable
// branch does. Lion is bit for bit the same.
constexpr double kFloat64Relative = 1e-12;
constexpr double kFloat32Ulps = 2;

TEST(GraphSafeStep, MatchesTheNormalStepWithLrChangedEveryStep) {
  for (torch::ScalarType dtype : {torch::kDouble, torch::kFloat}) {
    Deviation worst;
    for (const Case& c : Cases()) {
      SCOPED_TRACE(Name(c) + " " + c10::toString(dtype));
      std::vector<torch::Tensor> normal_params = MakeParams(dtype), safe_params = MakeParams(dtype);
      const torch::Tensor untouched = safe_params.back().detach().clone();
      auto normal = MakeOptimizer(c, normal_params);
      auto safe = MakeOptimizer(c, safe_params);
      ASSERT_TRUE(normal && safe);
      ASSERT_TRUE(safe->EnableGraphSafeStep(torch::kCPU).ok());
      EXPECT_TRUE(safe->graph_safe_step());
      EXPECT_FALSE(normal->graph_safe_step());
      for (int step = 0; step < 30; ++step) {
        TakeStep(*normal, normal_params, step);
        TakeStep(*safe, safe_params, step);
      }
      EXPECT_EQ(safe->step_count(), 30);
      EXPECT_TRUE(torch::equal(safe_params.back().detach(), untouched)) << "a parameter without grad moved";
      ExpectCountersAgree(*safe);
      const Deviation d = Compare(safe_params, normal_params, *safe, *normal);
      if (c.type == "Lion") EXPECT_EQ(d.relative, 0.0) << "Lion's graph-safe step is the same arithmetic";
      if (dtype == torch::kDouble) {
        EXPECT_LE(d.relative, kFloat64Relative);
      } else {
        EXPECT_LE(d.ulps, kFloat32Ulps);
      }
      worst = Max(worst, d);
    }
    std::printf("[graph-safe vs normal, %s, 30 steps] max relative %.3g; float32 ulps: %.3g at the tensor's scale, "
                "%.3g elementwise\n",
                c10::toString(dtype), worst.relative, worst.ulps, worst.element_ulps);
  }
}

// State saved in one mode resumes in the other: 10 steps, save, then 10 more
// steps on a resumed optimizer of each mode against the uninterrupted run.
TEST(GraphSafeStep, StateSavedInOneModeResumesInTheOther) {
  for (const Case& c : Cases()) {
    for (bool saved_graph_safe : {false, true}) {
      SCOPED_TRACE(Name(c) + (saved_graph_safe ? " saved graph-safe" : " saved normal"));
      std::vector<torch::Tensor> params = MakeParams(torch::kDouble);
      auto first = MakeOptimizer(c, params);
      ASSERT_TRUE(first);
      if (saved_graph_safe) ASSERT_TRUE(first->EnableGraphSafeStep(torch::kCPU).ok());
      for (int step = 0; step < 10; ++step) TakeStep(*first, params, step);
      auto state = first->SaveState();
      ASSERT_TRUE(state.ok()) << state.status();

      std::vector<torch::Tensor> resumed_params;
      for (const torch::Tensor& p : params) resumed_params.push_back(p.detach().clone().requires_grad_(true));
      auto resumed = MakeOptimizer(c, resumed_params);
      ASSERT_TRUE(resumed);
      if (!saved_graph_safe) {
        ASSERT_TRUE(resumed->EnableGraphSafeStep(torch::kCPU).ok());
        // A stale lr in the device tensor: LoadState must overwrite it.
        ASSERT_TRUE(resumed->SetLr(0, 0.5).ok());
      }
      absl::Status loaded = resumed->LoadState(*state);
      ASSERT_TRUE(loaded.ok()) << loaded;
      EXPECT_EQ(resumed->step_count(), 10);
      if (resumed->graph_safe_step()) ExpectCountersAgree(*resumed);
      auto again = resumed->SaveState();
      ASSERT_TRUE(again.ok());
      EXPECT_EQ(again->values, state->values) << "the host counters and lrs round-trip bit for bit";

      // One step with the loaded lrs (no SetLr), then the schedule again.
      for (std::pair<Optimizer*, const std::vector<torch::Tensor>*> run :
           {std::make_pair(first.get(), &params), std::make_pair(resumed.get(), &resumed_params)}) {
        SetGrads(*run.second, 10);
        ASSERT_TRUE(run.first->Step().ok());
        run.first->ZeroGrad();
        for (int step = 11; step < 20; ++step) TakeStep(*run.first, *run.second, step);
      }
      if (resumed->graph_safe_step()) ExpectCountersAgree(*resumed);
      const Deviation d = Compare(resumed_params, params, *resumed, *first);
      EXPECT_LE(d.relative, kFloat64Relative);
    }
  }
}

// In graph-safe mode LoadState writes into the tensors a captured graph holds.
TEST(GraphSafeStep, LoadStateWritesIntoTheExistingDeviceTensors) {
  const Case c{"AdamW", {"amsgrad=True"}};
  std::vector<torch::Tensor> params = MakeParams(torch::kFloat);
  auto opt = MakeOptimizer(c, params);
  ASSERT_TRUE(opt && opt->EnableGraphSafeStep(torch::kCPU).ok());
  for (int step = 0; step < 3; ++step) TakeStep(*opt, params, step);
  auto state = opt->SaveState();
  ASSERT_TRUE(state.ok());
  const void* step_storage = opt->param_state(1, 0).step_tensor.data_ptr();
  const void* exp_avg_storage = opt->param_state(1, 0).tensors.at("exp_avg").data_ptr();
  for (int step = 3; step < 6; ++step) TakeStep(*opt, params, step);
  ASSERT_TRUE(opt->LoadState(*state).ok());
  EXPECT_EQ(opt->param_state(1, 0).step_tensor.data_ptr(), step_storage);
  EXPECT_EQ(opt->param_state(1, 0).tensors.at("exp_avg").data_ptr(), exp_avg_storage);
  EXPECT_EQ(opt->param_state(1, 0).step, 3);
  ExpectCountersAgree(*opt);
  // The parameter that never had a gradient: counter 0 on both sides.
  EXPECT_EQ(opt->param_state(1, 1).step, 0);
}

// RecordReplayedStep and DiscardCapturedStep move only the host mirrors, for
// the parameters the last Step() updated.
TEST(GraphSafeStep, ReplayedAndCapturedStepsMoveOnlyTheHostMirrors) {
  for (const Case& c : {Cases().front(), Cases()[4]}) {
    SCOPED_TRACE(Name(c));
    std::vector<torch::Tensor> params = MakeParams(torch::kFloat);
    auto opt = MakeOptimizer(c, params);
    ASSERT_TRUE(opt && opt->EnableGraphSafeStep(torch::kCPU).ok());
    for (int step = 0; step < 3; ++step) TakeStep(*opt, params, step);
    // The next step only has gradients in group 0.
    SetGrads(params, 3);
    params[2].mutable_grad() = torch::Tensor();
    ASSERT_TRUE(opt->Step().ok());
    auto before = opt->SaveState();
    ASSERT_TRUE(before.ok());
    std::vector<torch::Tensor> param_copies;
    for (const torch::Tensor& p : params) param_copies.push_back(p.detach().clone());

    opt->RecordReplayedStep();
    EXPECT_EQ(opt->step_count(), 5);
    EXPECT_EQ(opt->param_state(0, 0).step, 5);
    EXPECT_EQ(opt->param_state(0, 1).step, 5);
    EXPECT_EQ(opt->param_state(1, 0).step, 3) << "not updated by the last Step()";
    EXPECT_EQ(opt->param_state(1, 1).step, 0) << "never has a gradient";
    EXPECT_EQ(opt->param_state(0, 0).step_tensor.item<double>(), 4.0) << "the device counter is the replay's";
    auto after = opt->SaveState();
    ASSERT_TRUE(after.ok());
    EXPECT_EQ(after->values.at("0/0/step"), "5");
    EXPECT_EQ(after->values.at("0/1/step"), "5");
    EXPECT_EQ(after->values.at("1/0/step"), "3");
    EXPECT_EQ(after->values.at("step_count"), "5");
    ASSERT_EQ(after->tensors.size(), before->tensors.size());
    for (size_t i = 0; i < before->tensors.size(); ++i) {
      EXPECT_TRUE(torch::equal(after->tensors[i].second, before->tensors[i].second)) << before->tensors[i].first;
    }
    for (size_t i = 0; i < params.size(); ++i) EXPECT_TRUE(torch::equal(params[i].detach(), param_copies[i])) << i;

    opt->DiscardCapturedStep();
    opt->DiscardCapturedStep();
    EXPECT_EQ(opt->step_count(), 3);
    EXPECT_EQ(opt->param_state(0, 0).step, 3);
    EXPECT_EQ(opt->param_state(1, 0).step, 3);
    opt->RecordReplayedStep();
    ExpectCountersAgree(*opt);
  }
}

TEST(GraphSafeStep, NormalModeIgnoresReplayCounting) {
  std::vector<torch::Tensor> params = MakeParams(torch::kFloat);
  auto opt = MakeOptimizer(Cases().front(), params);
  ASSERT_TRUE(opt);
  TakeStep(*opt, params, 0);
  opt->RecordReplayedStep();
  opt->DiscardCapturedStep();
  EXPECT_EQ(opt->step_count(), 1);
  EXPECT_EQ(opt->param_state(0, 0).step, 1);
  EXPECT_FALSE(opt->param_state(0, 0).step_tensor.defined());
}

TEST(GraphSafeStep, EnablingLaterStartsTheDeviceCountersFromTheHostOnes) {
  std::vector<torch::Tensor> normal_params = MakeParams(torch::kDouble), params = MakeParams(torch::kDouble);
  auto normal = MakeOptimizer(Cases()[2], normal_params);
  auto opt = MakeOptimizer(Cases()[2], params);
  ASSERT_TRUE(normal && opt);
  for (int step = 0; step < 5; ++step) {
    TakeStep(*normal, normal_params, step);
    TakeStep(*opt, params, step);
  }
  ASSERT_TRUE(opt->EnableGraphSafeStep(torch::kCPU).ok());
  ExpectCountersAgree(*opt);
  EXPECT_TRUE(opt->EnableGraphSafeStep(torch::Device(torch::kCPU)).ok()) << "again, same device: nothing to do";
  for (int step = 5; step < 15; ++step) {
    TakeStep(*normal, normal_params, step);
    TakeStep(*opt, params, step);
  }
  EXPECT_LE(Compare(params, normal_params, *opt, *normal).relative, kFloat64Relative);
}

TEST(GraphSafeStep, OtherOptimizersAreUnimplemented) {
  for (const std::string type : {"Prodigy", "AdamW8bit", "Adafactor", "CAME", "SGDNesterov", "SGD"}) {
    SCOPED_TRACE(type);
    std::vector<torch::Tensor> params = MakeParams(torch::kFloat);
    auto opt = MakeOptimizer(Case{type, {}}, params);
    ASSERT_TRUE(opt);
    absl::Status status = opt->EnableGraphSafeStep(torch::kCPU);
    EXPECT_EQ(status.code(), absl::StatusCode::kUnimplemented) << status;
    EXPECT_NE(status.message().find(std::string(opt->name())), std::string::npos) << status;
    EXPECT_NE(status.message().find("cuda_graphs = false or optimizer_type AdamW / Lion"), std::string::npos) << status;
    EXPECT_FALSE(opt->graph_safe_step());
  }
}

TEST(GraphSafeStep, ParametersOnAnotherDeviceAreRefused) {
  std::vector<torch::Tensor> params = MakeParams(torch::kFloat);
  auto opt = MakeOptimizer(Cases().front(), params);
  ASSERT_TRUE(opt);
  absl::Status status = opt->EnableGraphSafeStep(torch::Device(torch::kMeta));
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_NE(status.message().find("group 'unet'"), std::string::npos) << status;
  EXPECT_FALSE(opt->graph_safe_step());
}

std::vector<torch::Tensor> GradParams(torch::ScalarType dtype, double scale) {
  torch::manual_seed(3);
  std::vector<torch::Tensor> params = {torch::zeros({7, 3}, dtype).requires_grad_(),
                                       torch::zeros({11}, dtype).requires_grad_(),
                                       torch::zeros({2}, dtype).requires_grad_()};
  params[0].mutable_grad() = (torch::randn({7, 3}) * scale).to(dtype);
  params[1].mutable_grad() = (torch::randn({11}) * scale).to(dtype);
  return params;  // params[2] has no gradient
}

TEST(ClipGradNormOnDevice, EqualsClipGradNorm) {
  for (torch::ScalarType dtype : {torch::kFloat, torch::kDouble, torch::kBFloat16}) {
    for (double max_norm : {0.0, 0.5, 1e6}) {
      SCOPED_TRACE(std::string(c10::toString(dtype)) + " max_norm " + std::to_string(max_norm));
      std::vector<torch::Tensor> a = GradParams(dtype, 2.0), b = GradParams(dtype, 2.0);
      auto host = ClipGradNorm(a, max_norm);
      auto device = ClipGradNormOnDevice(b, max_norm);
      ASSERT_TRUE(host.ok() && device.ok());
      ASSERT_TRUE(device->defined());
      EXPECT_EQ(device->dim(), 0);
      EXPECT_EQ(device->scalar_type(), dtype == torch::kDouble ? torch::kDouble : torch::kFloat);
      EXPECT_EQ(device->item<double>(), *host);
      for (size_t i = 0; i < 2; ++i) EXPECT_TRUE(torch::equal(a[i].grad(), b[i].grad())) << i;
      EXPECT_FALSE(b[2].grad().defined());
    }
  }
}

TEST(ClipGradNormOnDevice, ClipsOnlyAboveMaxNormAndNeverWithZero) {
  std::vector<torch::Tensor> params = GradParams(torch::kDouble, 2.0);
  const torch::Tensor g0 = params[0].grad().clone(), g1 = params[1].grad().clone();
  const double expected = torch::cat({g0.flatten(), g1.flatten()}).norm().item<double>();
  ASSERT_GT(expected, 1.0);

  auto off = ClipGradNormOnDevice(params, 0.0);
  ASSERT_TRUE(off.ok());
  EXPECT_NEAR(off->item<double>(), expected, 1e-12 * expected);
  EXPECT_TRUE(torch::equal(params[0].grad(), g0) && torch::equal(params[1].grad(), g1)) << "max_norm 0 clips nothing";

  auto above = ClipGradNormOnDevice(params, 2.0 * expected);
  ASSERT_TRUE(above.ok());
  EXPECT_TRUE(torch::equal(params[0].grad(), g0) && torch::equal(params[1].grad(), g1)) << "norm below max_norm";

  auto clipped = ClipGradNormOnDevice(params, 1.0);
  ASSERT_TRUE(clipped.ok());
  EXPECT_NEAR(clipped->item<double>(), expected, 1e-12 * expected);
  const double coef = 1.0 / (expected + 1e-6);
  EXPECT_TRUE(torch::allclose(params[0].grad(), g0 * coef, 1e-12, 0));
  EXPECT_TRUE(torch::allclose(params[1].grad(), g1 * coef, 1e-12, 0));
  auto after = ClipGradNormOnDevice(params, 0.0);
  ASSERT_TRUE(after.ok());
  EXPECT_NEAR(after->item<double>(), 1.0, 1e-6);
}

TEST(ClipGradNormOnDevice, NoGradientsAndBadMaxNorm) {
  std::vector<torch::Tensor> params = {torch::zeros({3}).requires_grad_()};
  auto none = ClipGradNormOnDevice(params, 1.0);
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->defined());
  auto host = ClipGradNorm(params, 1.0);
  ASSERT_TRUE(host.ok());
  EXPECT_EQ(*host, 0.0);
  EXPECT_EQ(ClipGradNormOnDevice(params, -1).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ClipGradNormOnDevice(params, std::numeric_limits<double>::infinity()).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace lorad::optim
