// torch.optim.AdamW, single-tensor (foreach=False) path, op for op (torch/optim/adamw.py).
#include <cmath>

#include "core/base/status_macros.h"
#include "core/optim/optim_internal.h"

namespace lorad::optim {
namespace {

struct AdamWConfig {
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.01;
  bool amsgrad = false, maximize = false;
};

class AdamW final : public PerParameterOptimizer {
 public:
  AdamW(std::vector<ParamGroup> groups, std::vector<std::string> args, AdamWConfig config, std::string class_path)
      : PerParameterOptimizer(std::move(groups), std::move(args)), c_(config), class_path_(std::move(class_path)) {}

  std::string_view name() const override { return "AdamW"; }
  std::string_view class_path() const override { return class_path_; }

 private:
  void StepParam(double lr, WorkTensor& w, ParamState& s) override {
    if (s.tensors.empty()) {
      s.tensors["exp_avg"] = torch::zeros_like(w.param);
      s.tensors["exp_avg_sq"] = torch::zeros_like(w.param);
      if (c_.amsgrad) s.tensors["max_exp_avg_sq"] = torch::zeros_like(w.param);
    }
    torch::Tensor& exp_avg = s.tensors["exp_avg"];
    torch::Tensor& exp_avg_sq = s.tensors["exp_avg_sq"];
    torch::Tensor grad = c_.maximize ? -w.grad : w.grad;
    s.step += 1;
    const double step = static_cast<double>(s.step);

    w.param.mul_(1 - lr * c_.weight_decay);
    exp_avg.lerp_(grad, 1 - c_.beta1);
    exp_avg_sq.mul_(c_.beta2).addcmul_(grad, grad, 1 - c_.beta2);
    const double bias_correction1 = 1 - std::pow(c_.beta1, step);
    const double bias_correction2 = 1 - std::pow(c_.beta2, step);
    const double step_size = lr / bias_correction1;
    const double bias_correction2_sqrt = std::sqrt(bias_correction2);
    torch::Tensor denom;
    if (c_.amsgrad) {
      torch::Tensor& max_sq = s.tensors["max_exp_avg_sq"];
      torch::maximum_out(max_sq, max_sq, exp_avg_sq);
      denom = (max_sq.sqrt() / bias_correction2_sqrt).add_(c_.eps);
    } else {
      denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(c_.eps);
    }
    w.param.addcdiv_(exp_avg, denom, -step_size);
  }

  // Graph-safe: torch.optim.AdamW(capturable=True), single-tensor branch
  // (torch/optim/adam.py _single_tensor_adam with capturable, decoupled weight
  // decay): the step count and the lr are device tensors, the bias
  // corrections are computed from them on the device, and the step size is
  // folded into the denominator as torch does there. The scalar math runs in
  // float64 0-dim tensors (the normal path's host doubles); the tensor ops cast
  // the result to the parameter's dtype as they cast a host scalar.
  void StepParamGraphSafe(const torch::Tensor& lr, WorkTensor& w, ParamState& s) override {
    if (s.tensors.empty()) {
      s.tensors["exp_avg"] = torch::zeros_like(w.param);
      s.tensors["exp_avg_sq"] = torch::zeros_like(w.param);
      if (c_.amsgrad) s.tensors["max_exp_avg_sq"] = torch::zeros_like(w.param);
    }
    torch::Tensor& exp_avg = s.tensors["exp_avg"];
    torch::Tensor& exp_avg_sq = s.tensors["exp_avg_sq"];
    torch::Tensor grad = c_.maximize ? -w.grad : w.grad;
    s.step_tensor.add_(1);
    s.step += 1;
    const torch::Tensor step = s.step_tensor.to(torch::kDouble);

    if (c_.weight_decay != 0) w.param.mul_(torch::rsub(lr * c_.weight_decay, 1.0));
    exp_avg.lerp_(grad, 1 - c_.beta1);
    exp_avg_sq.mul_(c_.beta2).addcmul_(grad, grad, 1 - c_.beta2);
    const torch::Tensor bias_correction1 = torch::rsub(torch::pow(c_.beta1, step), 1.0);
    const torch::Tensor bias_correction2 = torch::rsub(torch::pow(c_.beta2, step), 1.0);
    const torch::Tensor step_size_neg = (lr / bias_correction1).neg();
    const torch::Tensor bias_correction2_sqrt = bias_correction2.sqrt();
    const torch::Tensor scale = bias_correction2_sqrt * step_size_neg;
    const torch::Tensor eps = c_.eps / step_size_neg;
    torch::Tensor denom;
    if (c_.amsgrad) {
      torch::Tensor& max_sq = s.tensors["max_exp_avg_sq"];
      torch::maximum_out(max_sq, max_sq, exp_avg_sq);
      denom = (max_sq.sqrt() / scale).add_(eps);
    } else {
      denom = (exp_avg_sq.sqrt() / scale).add_(eps);
    }
    w.param.addcdiv_(exp_avg, denom);
  }

  // torch.optim.AdamW(fused=True): one kernel launch for the whole group. The
  // kernel reads the step counters, which the caller advances first
  // (torch/optim/adam.py _fused_adam: _foreach_add_(state_steps, 1) before the
  // call); ParamState::step (what SaveState writes) follows on the host.
  bool StepFused(double lr, FusedGroup& group) override {
#if TORCH_VERSION_MAJOR >= 2
    std::vector<torch::Tensor> exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps;
    CollectState(group, &exp_avgs, &exp_avg_sqs, &max_exp_avg_sqs);
    for (size_t i = 0; i < group.params.size(); ++i) {
      steps.push_back(torch::full({}, static_cast<double>(group.states[i]->step + 1), group.params[i].options()));
    }
    at::_fused_adamw_(group.params, group.grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, lr, c_.beta1, c_.beta2,
                      c_.weight_decay, c_.eps, c_.amsgrad, c_.maximize);
    for (ParamState* s : group.states) s->step += 1;
    return true;
#else
    (void)lr;
    (void)group;
    return false;
#endif
  }

  // Graph-safe fused: the same kernel with its Tensor-lr overload and the
  // persistent float32 device step counters (ParamState::step_tensor),
  // advanced on the device before the call as torch's _fused_adam does.
  bool StepFusedGraphSafe(const torch::Tensor& lr, FusedGroup& group) override {
#if LORAD_TORCH_TENSOR_SCALAR_KERNELS
    std::vector<torch::Tensor> exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps;
    CollectState(group, &exp_avgs, &exp_avg_sqs, &max_exp_avg_sqs);
    for (ParamState* s : group.states) steps.push_back(s->step_tensor);
    at::_foreach_add_(steps, 1);
    // The kernel reads lr as float32 (at::native _fused_adamw_cuda_impl_).
    const torch::Tensor lr32 = lr.to(torch::kFloat);
    at::_fused_adamw_(group.params, group.grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, lr32, c_.beta1,
                      c_.beta2, c_.weight_decay, c_.eps, c_.amsgrad, c_.maximize);
    for (ParamState* s : group.states) s->step += 1;
    return true;
#else
    (void)lr;
    (void)group;
    return false;
#endif
  }

  // The state tensors of a fused group, created on a parameter's first update.
  void CollectState(FusedGroup& group, std::vector<torch::Tensor>* exp_avgs, std::vector<torch::Tensor>* exp_avg_sqs,
                    std::vector<torch::Tensor>* max_exp_avg_sqs) {
    for (size_t i = 0; i < group.params.size(); ++i) {
      ParamState& s = *group.states[i];
      const torch::Tensor& p = group.params[i];
      if (s.tensors.empty()) {
        s.tensors["exp_avg"] = torch::zeros_like(p);
        s.tensors["exp_avg_sq"] = torch::zeros_like(p);
        if (c_.amsgrad) s.tensors["max_exp_avg_sq"] = torch::zeros_like(p);
      }
      exp_avgs->push_back(s.tensors["exp_avg"]);
      exp_avg_sqs->push_back(s.tensors["exp_avg_sq"]);
      if (c_.amsgrad) max_exp_avg_sqs->push_back(s.tensors["max_exp_avg_sq"]);
    }
  }

  bool SupportsGraphSafeStep() const override { return true; }

  AdamWConfig c_;
  std::string class_path_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Optimizer>> MakeAdamW(const OptimizerArgs& args, std::vector<ParamGroup> groups,
                                                     std::string class_path) {
  const std::string n = "AdamW";
  RETURN_IF_ERROR(args.CheckKnown(n, {"betas", "eps", "weight_decay", "amsgrad", "maximize", "foreach", "fused",
                                      "capturable", "differentiable"}));
  AdamWConfig c;
  ASSIGN_OR_RETURN(std::vector<double> betas, args.Floats("betas", {c.beta1, c.beta2}));
  c.beta1 = betas[0];
  c.beta2 = betas[1];
  ASSIGN_OR_RETURN(c.eps, args.Float("eps", c.eps));
  ASSIGN_OR_RETURN(c.weight_decay, args.Float("weight_decay", c.weight_decay));
  ASSIGN_OR_RETURN(c.amsgrad, args.Bool("amsgrad", false));
  ASSIGN_OR_RETURN(c.maximize, args.Bool("maximize", false));
  // Implementation selectors that do not change the math.
  for (const char* k : {"foreach", "fused", "capturable", "differentiable"}) {
    if (args.Has(k)) {
      ASSIGN_OR_RETURN(bool ignored, args.Bool(k, false));
      (void)ignored;
    }
  }
  RETURN_IF_ERROR(RequireRange(n, "betas[0]", c.beta1, 0, true, 1, false));
  RETURN_IF_ERROR(RequireRange(n, "betas[1]", c.beta2, 0, true, 1, false));
  RETURN_IF_ERROR(RequireRange(n, "eps", c.eps, 0, false, INFINITY, false));
  RETURN_IF_ERROR(RequireRange(n, "weight_decay", c.weight_decay, 0, true, INFINITY, false));
  return std::unique_ptr<Optimizer>(new AdamW(std::move(groups), args.DescribeArgs(), c, std::move(class_path)));
}

}  // namespace lorad::optim
