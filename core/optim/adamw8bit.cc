// bitsandbytes AdamW8bit (bitsandbytes/optim/optimizer.py, csrc/kernels.cu; Dettmers et al.,
// "8-bit Optimizers via Block-wise Quantization"): block-wise (256) dynamic 8-bit quantised
// moments for tensors with >= min_8bit_size elements, bnb's 32-bit Adam kernel
// for smaller ones. Both apply weight decay after the Adam step, as the CUDA
// kernels do. The 8-bit step is a fused kernel on CPU and torch ops elsewhere
// (adamw8bit_kernel.h); both give the same bits.
#include <cmath>

#include "absl/strings/str_cat.h"
#include "core/base/status_macros.h"
#include "core/optim/adamw8bit_kernel.h"
#include "core/optim/optim_internal.h"

namespace lorad::optim {
namespace {

struct Adam8Config {
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.01;
  int64_t min_8bit_size = 4096;
};

class AdamW8bit final : public PerParameterOptimizer {
 public:
  AdamW8bit(std::vector<ParamGroup> groups, std::vector<std::string> args, Adam8Config config, std::string class_path)
      : PerParameterOptimizer(std::move(groups), std::move(args)), c_(config), class_path_(std::move(class_path)) {}

  std::string_view name() const override { return "AdamW8bit"; }
  std::string_view class_path() const override { return class_path_; }

 private:
  void StepParam(double lr, WorkTensor& w, ParamState& s) override {
    s.step += 1;
    if (w.param.numel() >= c_.min_8bit_size) {
      Step8bit(lr, w, s);
    } else {
      Step32bit(lr, w, s);
    }
  }

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
    const int64_t blocks = (n + kAdam8bitBlock - 1) / kAdam8bitBlock;
    const auto f32 = w.param.options().dtype(torch::kFloat);
    if (s.tensors.empty()) {
      s.tensors["state1"] = torch::zeros({n}, w.param.options().dtype(torch::kUInt8));
      s.tensors["state2"] = torch::zeros({n}, w.param.options().dtype(torch::kUInt8));
      s.tensors["absmax1"] = torch::zeros({blocks}, f32);
      s.tensors["absmax2"] = torch::zeros({blocks}, f32);
    }
    for (const char* key : {"state1", "state2", "absmax1", "absmax2"}) {
      torch::Tensor& t = s.tensors[key];
      if (!t.is_contiguous()) t = t.contiguous();
    }
    const Adam8bitState state{s.tensors["state1"], s.tensors["state2"], s.tensors["absmax1"], s.tensors["absmax2"]};
    const Adam8bitHyper h{c_.beta1, c_.beta2, c_.eps, c_.weight_decay};
    if (w.param.is_cpu()) {
      Adam8bitStepFusedCpu(maps_, h, lr, s.step, w.param, w.grad, state);
    } else {
      Adam8bitStepTorchOps(maps_, h, lr, s.step, w.param, w.grad, state);
    }
  }

  Adam8Config c_;
  std::string class_path_;
  DynamicMaps maps_;
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
