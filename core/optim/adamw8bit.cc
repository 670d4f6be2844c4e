// bitsandbytes AdamW8bit (spec 6.2): block-wise (256) dynamic 8-bit quantised
// moments for tensors with >= min_8bit_size elements, bnb's 32-bit Adam kernel
// for smaller ones. Both apply weight decay after the Adam step, as the CUDA
// kernels do. Vectorised with torch ops (bucketize over the 256-entry maps).
#include <cmath>

#include "absl/strings/str_cat.h"
#include "core/common/status_macros.h"
#include "core/optim/optim_internal.h"

namespace lorad::optim {
namespace {

constexpr int64_t kBlock = 256;

// bitsandbytes.functional.create_dynamic_map(signed, max_exponent_bits=7, total_bits=8),
// computed with the same float32 torch ops.
torch::Tensor CreateDynamicMap(bool is_signed) {
  const int max_exponent_bits = 7, non_sign_bits = 7;
  std::vector<torch::Tensor> parts;
  for (int i = 0; i < max_exponent_bits; ++i) {
    const int64_t fraction_items = is_signed ? (int64_t{1} << (i + non_sign_bits - max_exponent_bits)) + 1
                                             : (int64_t{1} << (i + non_sign_bits - max_exponent_bits + 1)) + 1;
    torch::Tensor boundaries = torch::linspace(0.1, 1, fraction_items, torch::kFloat);
    torch::Tensor means = (boundaries.slice(0, 0, -1) + boundaries.slice(0, 1)) / 2.0;
    const double scale = std::pow(10.0, -(max_exponent_bits - 1) + i);
    parts.push_back(scale * means);
    if (is_signed) parts.push_back(-scale * means);
  }
  parts.push_back(torch::tensor({0.0f, 1.0f}));
  torch::Tensor map = std::get<0>(torch::sort(torch::cat(parts)));
  TORCH_CHECK(map.numel() == 256, "dynamic map has ", map.numel(), " entries");
  return map;
}

// Index of the nearest entry of the sorted `map` for each element of x.
torch::Tensor NearestCode(const torch::Tensor& map, const torch::Tensor& x) {
  const int64_t last = map.numel() - 1;
  torch::Tensor hi = torch::searchsorted(map, x).clamp_(0, last);
  torch::Tensor lo = (hi - 1).clamp_(0, last);
  torch::Tensor pick_hi = (map.index_select(0, hi.flatten()).view_as(x) - x).abs() <
                          (x - map.index_select(0, lo.flatten()).view_as(x)).abs();
  return torch::where(pick_hi, hi, lo);
}

struct Adam8Config {
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.01;
  int64_t min_8bit_size = 4096;
};

class AdamW8bit final : public Optimizer {
 public:
  AdamW8bit(std::vector<ParamGroup> groups, std::vector<std::string> args, Adam8Config config, std::string class_path)
      : Optimizer(std::move(groups), std::move(args)), c_(config), class_path_(std::move(class_path)),
        qmap1_(CreateDynamicMap(true)), qmap2_(CreateDynamicMap(false)) {}

  std::string_view name() const override { return "AdamW8bit"; }
  std::string_view class_path() const override { return class_path_; }

  absl::Status Step() override {
    torch::NoGradGuard no_grad;
    bool any = false;
    try {
      for (int g = 0; g < num_groups(); ++g) {
        for (size_t i = 0; i < groups_[g].params.size(); ++i) {
          ASSIGN_OR_RETURN(std::optional<WorkTensor> w, PrepareParam(groups_[g].params[i], name()));
          if (!w) continue;
          any = true;
          ParamState& s = state(g, static_cast<int>(i));
          s.step += 1;
          if (w->param.numel() >= c_.min_8bit_size) {
            Step8bit(lrs_[g], *w, s);
          } else {
            Step32bit(lrs_[g], *w, s);
          }
          w->Commit();
        }
      }
    } catch (const c10::Error& e) {
      return TorchError(name(), e);
    }
    if (any) ++step_count_;
    return absl::OkStatus();
  }

 private:
  struct Scalars {
    float correction2, step_size, decay;
  };
  // The kernels' float scalars: correction2 = sqrt(1 - b2^t), step_size = -lr*c2/(1 - b1^t).
  Scalars Coefficients(double lr, int64_t step) const {
    const float b1 = static_cast<float>(c_.beta1), b2 = static_cast<float>(c_.beta2);
    const float t = static_cast<float>(step);
    const float correction1 = 1.0f - std::pow(b1, t);
    const float correction2 = std::sqrt(1.0f - std::pow(b2, t));
    const float lr_f = static_cast<float>(lr);
    return {correction2, -lr_f * correction2 / correction1,
            1.0f - lr_f * static_cast<float>(c_.weight_decay)};
  }

  // bnb kOptimizer32bit2State, ADAM branch.
  void Step32bit(double lr, WorkTensor& w, ParamState& s) {
    if (s.tensors.empty()) {
      s.tensors["state1"] = torch::zeros_like(w.param);
      s.tensors["state2"] = torch::zeros_like(w.param);
    }
    torch::Tensor& m = s.tensors["state1"];
    torch::Tensor& v = s.tensors["state2"];
    const Scalars k = Coefficients(lr, s.step);
    m.mul_(c_.beta1).add_(w.grad, 1.0 - c_.beta1);
    v.mul_(c_.beta2).addcmul_(w.grad, w.grad, 1.0 - c_.beta2);
    w.param.addcdiv_(m, v.sqrt().add_(c_.eps * k.correction2), k.step_size);
    if (c_.weight_decay > 0) w.param.mul_(k.decay);
  }

  // bnb kOptimizerStatic8bit2StateBlockwise (ADAM), per block of 256 elements.
  void Step8bit(double lr, WorkTensor& w, ParamState& s) {
    const int64_t n = w.param.numel();
    const int64_t blocks = (n + kBlock - 1) / kBlock;
    const auto f32 = w.param.options().dtype(torch::kFloat);
    if (s.tensors.empty()) {
      s.tensors["state1"] = torch::zeros({n}, w.param.options().dtype(torch::kUInt8));
      s.tensors["state2"] = torch::zeros({n}, w.param.options().dtype(torch::kUInt8));
      s.tensors["absmax1"] = torch::zeros({blocks}, f32);
      s.tensors["absmax2"] = torch::zeros({blocks}, f32);
    }
    const torch::Tensor qmap1 = qmap1_.to(w.param.device()), qmap2 = qmap2_.to(w.param.device());
    torch::Tensor& c1 = s.tensors["state1"];
    torch::Tensor& c2 = s.tensors["state2"];
    torch::Tensor& absmax1 = s.tensors["absmax1"];
    torch::Tensor& absmax2 = s.tensors["absmax2"];
    const int64_t pad = blocks * kBlock - n;
    auto blocked = [&](const torch::Tensor& flat) {
      return torch::constant_pad_nd(flat, {0, pad}, 0).view({blocks, kBlock});
    };
    torch::Tensor g = blocked(w.grad.flatten().to(torch::kFloat));
    // 1. dequantise, 2. moment updates (state of non-finite gradients resets to 0, as in the kernel).
    torch::Tensor m = blocked(qmap1.index_select(0, c1.to(torch::kLong))) * absmax1.unsqueeze(1);
    torch::Tensor v = blocked(qmap2.index_select(0, c2.to(torch::kLong))) * absmax2.unsqueeze(1);
    torch::Tensor finite = torch::isfinite(g);
    torch::Tensor g0 = torch::where(finite, g, torch::zeros({}, f32));
    m.mul_(c_.beta1).add_(g0, 1.0 - c_.beta1);
    v.mul_(c_.beta2).addcmul_(g0, g0, 1.0 - c_.beta2);
    // 3. new per-block absmax.
    torch::Tensor new_absmax1 = std::get<0>(m.abs().max(1));
    torch::Tensor new_absmax2 = std::get<0>(v.abs().max(1));
    // 4. parameter update, then decay, only where the gradient is finite.
    const Scalars k = Coefficients(lr, s.step);
    torch::Tensor p = blocked(w.param.flatten().to(torch::kFloat));
    torch::Tensor stepped = torch::addcdiv(p, m, v.sqrt().add_(c_.eps * k.correction2), k.step_size);
    if (c_.weight_decay > 0) stepped.mul_(k.decay);
    stepped = torch::where(finite, stepped, p);
    w.param.copy_(stepped.flatten().slice(0, 0, n).view_as(w.param));
    // 5. re-quantise: nearest code of x / absmax; state1's code keeps m's sign.
    torch::Tensor x1 = m / new_absmax1.unsqueeze(1);
    torch::Tensor x2 = v / new_absmax2.unsqueeze(1);
    x1 = torch::where(new_absmax1.unsqueeze(1) > 0, x1, torch::zeros({}, f32));
    x2 = torch::where(new_absmax2.unsqueeze(1) > 0, x2, torch::zeros({}, f32));
    torch::Tensor code1 = NearestCode(qmap1, x1);
    torch::Tensor wrong_sign = torch::signbit(qmap1.index_select(0, code1.flatten()).view_as(x1)) != torch::signbit(x1);
    code1 = torch::where(wrong_sign, code1 + ((x1 > 0).to(torch::kLong) * 2 - 1), code1).clamp_(0, 255);
    torch::Tensor code2 = NearestCode(qmap2, x2);
    c1.copy_(code1.flatten().slice(0, 0, n));
    c2.copy_(code2.flatten().slice(0, 0, n));
    absmax1.copy_(new_absmax1);
    absmax2.copy_(new_absmax2);
  }

  Adam8Config c_;
  std::string class_path_;
  torch::Tensor qmap1_, qmap2_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Optimizer>> MakeAdamW8bit(const OptimizerArgs& args, std::vector<ParamGroup> groups,
                                                         std::string class_path) {
  const std::string n = "AdamW8bit";
  RETURN_IF_ERROR(args.CheckKnown(n, {"betas", "eps", "weight_decay", "amsgrad", "optim_bits", "min_8bit_size",
                                      "percentile_clipping", "block_wise", "is_paged"}));
  Adam8Config c;
  ASSIGN_OR_RETURN(std::vector<double> betas, args.Floats("betas", {c.beta1, c.beta2}));
  c.beta1 = betas[0];
  c.beta2 = betas[1];
  ASSIGN_OR_RETURN(c.eps, args.Float("eps", c.eps));
  ASSIGN_OR_RETURN(c.weight_decay, args.Float("weight_decay", c.weight_decay));
  ASSIGN_OR_RETURN(c.min_8bit_size, args.Int("min_8bit_size", c.min_8bit_size));
  ASSIGN_OR_RETURN(bool amsgrad, args.Bool("amsgrad", false));
  ASSIGN_OR_RETURN(int64_t optim_bits, args.Int("optim_bits", 32));
  ASSIGN_OR_RETURN(int64_t percentile_clipping, args.Int("percentile_clipping", 100));
  ASSIGN_OR_RETURN(bool block_wise, args.Bool("block_wise", true));
  ASSIGN_OR_RETURN(bool is_paged, args.Bool("is_paged", false));
  (void)is_paged;  // memory placement only
  if (amsgrad) return absl::InvalidArgumentError("AdamW8bit arg amsgrad=True is not supported (bitsandbytes neither)");
  if (optim_bits != 32 && optim_bits != 8) {
    return absl::InvalidArgumentError(absl::StrCat("invalid AdamW8bit arg optim_bits=", optim_bits, ": 8 or 32"));
  }
  if (percentile_clipping != 100) {
    return absl::InvalidArgumentError(absl::StrCat("AdamW8bit arg percentile_clipping=", percentile_clipping,
                                                   " is not supported: only 100 (off); use max_grad_norm"));
  }
  if (!block_wise) return absl::InvalidArgumentError("AdamW8bit arg block_wise=False is not supported");
  RETURN_IF_ERROR(RequireRange(n, "betas[0]", c.beta1, 0, true, 1, false));
  RETURN_IF_ERROR(RequireRange(n, "betas[1]", c.beta2, 0, true, 1, false));
  RETURN_IF_ERROR(RequireRange(n, "eps", c.eps, 0, false, INFINITY, false));
  RETURN_IF_ERROR(RequireRange(n, "weight_decay", c.weight_decay, 0, true, INFINITY, false));
  if (c.min_8bit_size < 0) {
    return absl::InvalidArgumentError(absl::StrCat("invalid AdamW8bit arg min_8bit_size=", c.min_8bit_size));
  }
  return std::unique_ptr<Optimizer>(new AdamW8bit(std::move(groups), args.DescribeArgs(), c, std::move(class_path)));
}

}  // namespace lorad::optim
