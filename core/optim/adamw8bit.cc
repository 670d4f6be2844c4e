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

// Midpoints between consecutive map entries: searchsorted over them gives the
// nearest entry (ties to the lower one) in one pass.
torch::Tensor Midpoints(const torch::Tensor& map) { return (map.slice(0, 1) + map.slice(0, 0, -1)) / 2; }

struct Adam8Config {
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.01;
  int64_t min_8bit_size = 4096;
};

class AdamW8bit final : public Optimizer {
 public:
  AdamW8bit(std::vector<ParamGroup> groups, std::vector<std::string> args, Adam8Config config, std::string class_path)
      : Optimizer(std::move(groups), std::move(args)), c_(config), class_path_(std::move(class_path)),
        qmap1_(CreateDynamicMap(true)), qmap2_(CreateDynamicMap(false)) {
    mid1_ = Midpoints(qmap1_);
    mid2_ = Midpoints(qmap2_);
    zero_code1_ = qmap1_.lt(0).sum().item<int64_t>();
  }

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
    if (w.param.device() != qmap1_.device()) MoveMaps(w.param.device());
    torch::Tensor& c1 = s.tensors["state1"];
    torch::Tensor& c2 = s.tensors["state2"];
    torch::Tensor& absmax1 = s.tensors["absmax1"];
    torch::Tensor& absmax2 = s.tensors["absmax2"];
    const int64_t pad = blocks * kBlock - n;
    auto blocked = [&](const torch::Tensor& flat) {
      return (pad == 0 ? flat : torch::constant_pad_nd(flat, {0, pad}, 0)).view({blocks, kBlock});
    };
    torch::Tensor g = blocked(w.grad.flatten().to(torch::kFloat));
    // Non-finite gradients leave their parameter alone and reset its state to 0, as in the kernel.
    const bool all_finite = torch::isfinite(g).all().item<bool>();
    torch::Tensor finite = all_finite ? torch::Tensor() : torch::isfinite(g);
    if (!all_finite) g = torch::where(finite, g, torch::zeros({}, f32));
    // 1. dequantise, 2. moment updates.
    torch::Tensor m = blocked(qmap1_.index_select(0, c1.to(torch::kInt))).mul_(absmax1.unsqueeze(1));
    torch::Tensor v = blocked(qmap2_.index_select(0, c2.to(torch::kInt))).mul_(absmax2.unsqueeze(1));
    m.mul_(c_.beta1).add_(g, 1.0 - c_.beta1);
    v.mul_(c_.beta2).addcmul_(g, g, 1.0 - c_.beta2);
    if (!all_finite) {
      m.masked_fill_(finite.logical_not(), 0);
      v.masked_fill_(finite.logical_not(), 0);
    }
    // 3. new per-block absmax (v >= 0).
    torch::Tensor new_absmax1 = m.abs().amax(1);
    torch::Tensor new_absmax2 = v.amax(1);
    // 4. parameter update, then decay.
    const Scalars k = Coefficients(lr, s.step);
    torch::Tensor p = blocked(w.param.flatten().to(torch::kFloat));
    torch::Tensor stepped = torch::addcdiv(p, m, v.sqrt().add_(c_.eps * k.correction2), k.step_size);
    if (c_.weight_decay > 0) stepped.mul_(k.decay);
    if (!all_finite) stepped = torch::where(finite, stepped, p);
    w.param.copy_(stepped.view({-1}).slice(0, 0, n).view_as(w.param));
    // 5. re-quantise: nearest code of moment / absmax (0 for an all-zero block).
    torch::Tensor x1 = m.div_(new_absmax1.unsqueeze(1));
    torch::Tensor x2 = v.div_(new_absmax2.unsqueeze(1));
    if (!new_absmax1.gt(0).all().item<bool>()) x1.nan_to_num_(0.0);  // 0/0 in an all-zero block
    if (!new_absmax2.gt(0).all().item<bool>()) x2.nan_to_num_(0.0);
    torch::Tensor code1 = torch::searchsorted(mid1_, x1, /*out_int32=*/true);
    // State1's code must keep m's sign: codes below zero_code_ are the negative entries.
    torch::Tensor wrong_sign = code1.lt(zero_code1_).ne(torch::signbit(x1));
    code1.add_(wrong_sign.to(torch::kInt) * (x1.gt(0).to(torch::kInt) * 2 - 1)).clamp_(0, 255);
    torch::Tensor code2 = torch::searchsorted(mid2_, x2, /*out_int32=*/true);
    c1.copy_(code1.view({-1}).slice(0, 0, n));
    c2.copy_(code2.view({-1}).slice(0, 0, n));
    absmax1.copy_(new_absmax1);
    absmax2.copy_(new_absmax2);
  }

  void MoveMaps(const torch::Device& device) {
    qmap1_ = qmap1_.to(device);
    qmap2_ = qmap2_.to(device);
    mid1_ = Midpoints(qmap1_);
    mid2_ = Midpoints(qmap2_);
  }

  Adam8Config c_;
  std::string class_path_;
  torch::Tensor qmap1_, qmap2_, mid1_, mid2_;
  int64_t zero_code1_ = 0;  // index of 0.0 in the signed map
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
