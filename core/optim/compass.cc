// Compass (LoRA_Easy_Training_Scripts: derrian-distro/LoRA_Easy_Training_scripts_Backend
// custom_scheduler/LoraEasyCustomOptimizer/compass.py), op for op: Adam whose
// second moment and step use the gradient amplified by its own EMA
// (g + amp_fac * ema), with optional gradient centralisation and decoupled
// weight decay scaled by the bias-corrected step size. For bfloat16 parameters
// the reference keeps the state in bfloat16 and writes state and parameter back
// with stochastic rounding; so does this.
#include <cmath>

#include "core/base/status_macros.h"
#include "core/optim/optim_internal.h"

namespace lorad::optim {
namespace {

struct CompassConfig {
  double beta1 = 0.99, beta2 = 0.999, amp_fac = 2, eps = 1e-8, weight_decay = 0, centralization = 0;
};

class Compass final : public PerParameterOptimizer {
 public:
  Compass(std::vector<ParamGroup> groups, std::vector<std::string> args, CompassConfig config, std::string class_path)
      : PerParameterOptimizer(std::move(groups), std::move(args)), c_(config), class_path_(std::move(class_path)) {}

  std::string_view name() const override { return "Compass"; }
  std::string_view class_path() const override { return class_path_; }

 private:
  void StepParam(double lr, WorkTensor& w, ParamState& s) override {
    const bool bf16 = w.original.scalar_type() == torch::kBFloat16;
    if (s.tensors.empty()) {
      s.tensors["ema"] = torch::zeros_like(w.original);
      s.tensors["ema_squared"] = torch::zeros_like(w.original);
    }
    const bool low_precision = w.param.scalar_type() != w.original.scalar_type();
    torch::Tensor ema = low_precision ? s.tensors["ema"].to(torch::kFloat) : s.tensors["ema"];
    torch::Tensor ema_squared = low_precision ? s.tensors["ema_squared"].to(torch::kFloat) : s.tensors["ema_squared"];
    torch::Tensor grad = w.grad.clone();
    s.step += 1;
    if (c_.centralization != 0 && grad.dim() > 1) {
      std::vector<int64_t> dims;
      for (int64_t d = 1; d < grad.dim(); ++d) dims.push_back(d);
      grad.sub_(grad.mean(dims, /*keepdim=*/true).mul_(c_.centralization));
    } else if (c_.centralization != 0) {
      // A 1-D gradient: torch's mean over the empty tuple of dims reduces all of them.
      grad.sub_(grad.mean().mul_(c_.centralization));
    }
    const double t = static_cast<double>(s.step);
    const double bias_correction = 1 - std::pow(c_.beta1, t);
    const double bias_correction_sqrt = std::pow(1 - std::pow(c_.beta2, t), 1.0 / 2);
    const double step_size = lr / bias_correction;
    ema.mul_(c_.beta1).add_(grad, 1 - c_.beta1);
    grad.add_(ema, c_.amp_fac);
    ema_squared.mul_(c_.beta2).addcmul_(grad, grad, 1 - c_.beta2);
    torch::Tensor denom = (ema_squared.sqrt() / bias_correction_sqrt).add_(c_.eps);
    if (c_.weight_decay != 0) w.param.mul_(1 - step_size * c_.weight_decay);
    w.param.addcdiv_(grad, denom, -step_size);
    if (low_precision) {
      if (bf16) {
        CopyStochasticBf16(s.tensors["ema"], ema);
        CopyStochasticBf16(s.tensors["ema_squared"], ema_squared);
        CopyStochasticBf16(w.original, w.param);
        w.param = w.original;
      } else {
        s.tensors["ema"].copy_(ema);
        s.tensors["ema_squared"].copy_(ema_squared);
      }
    }
  }

  CompassConfig c_;
  std::string class_path_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Optimizer>> MakeCompass(const OptimizerArgs& args, std::vector<ParamGroup> groups,
                                                       std::string class_path) {
  const std::string n = "LoraEasyCustomOptimizer.compass.Compass";
  RETURN_IF_ERROR(args.CheckKnown(n, {"betas", "amp_fac", "eps", "weight_decay", "centralization"}));
  CompassConfig c;
  ASSIGN_OR_RETURN(std::vector<double> betas, args.Floats("betas", {c.beta1, c.beta2}));
  c.beta1 = betas[0];
  c.beta2 = betas[1];
  ASSIGN_OR_RETURN(c.amp_fac, args.Float("amp_fac", c.amp_fac));
  ASSIGN_OR_RETURN(c.eps, args.Float("eps", c.eps));
  ASSIGN_OR_RETURN(c.weight_decay, args.Float("weight_decay", c.weight_decay));
  ASSIGN_OR_RETURN(c.centralization, args.Float("centralization", c.centralization));
  RETURN_IF_ERROR(RequireRange(n, "betas[0]", c.beta1, 0, true, 1, false));
  RETURN_IF_ERROR(RequireRange(n, "betas[1]", c.beta2, 0, true, 1, false));
  RETURN_IF_ERROR(RequireRange(n, "eps", c.eps, 0, false, INFINITY, false));
  RETURN_IF_ERROR(RequireRange(n, "weight_decay", c.weight_decay, 0, true, INFINITY, false));
  return std::unique_ptr<Optimizer>(new Compass(std::move(groups), args.DescribeArgs(), c, std::move(class_path)));
}

}  // namespace lorad::optim
