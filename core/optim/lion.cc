// lion_pytorch.Lion (lucidrains/lion-pytorch lion_pytorch/lion_pytorch.py), op for op.
#include <cmath>

#include "core/base/status_macros.h"
#include "core/optim/optim_internal.h"

namespace lorad::optim {
namespace {

struct LionConfig {
  double beta1 = 0.9, beta2 = 0.99, weight_decay = 0.0;
  bool decoupled_weight_decay = false;
};

class Lion final : public PerParameterOptimizer {
 public:
  Lion(std::vector<ParamGroup> groups, std::vector<std::string> args, LionConfig config, std::string class_path)
      : PerParameterOptimizer(std::move(groups), std::move(args)), c_(config), class_path_(std::move(class_path)) {}

  std::string_view name() const override { return "Lion"; }
  std::string_view class_path() const override { return class_path_; }

 private:
  void StepParam(double lr, WorkTensor& w, ParamState& s) override {
    // decoupled_weight_decay divides wd by the lr the optimizer was created with.
    const double wd = c_.decoupled_weight_decay ? c_.weight_decay / initial_lr_ : c_.weight_decay;
    if (s.tensors.empty()) s.tensors["exp_avg"] = torch::zeros_like(w.param);
    torch::Tensor& exp_avg = s.tensors["exp_avg"];
    s.step += 1;
    w.param.mul_(1.0 - lr * wd);
    torch::Tensor update = exp_avg.clone().mul_(c_.beta1).add(w.grad, 1.0 - c_.beta1).sign_();
    w.param.add_(update, -lr);
    exp_avg.mul_(c_.beta2).add_(w.grad, 1.0 - c_.beta2);
  }

  // The same ops as StepParam over the whole group, one foreach launch each.
  bool StepFused(double lr, FusedGroup& group) override {
#if TORCH_VERSION_MAJOR >= 2
    const double wd = c_.decoupled_weight_decay ? c_.weight_decay / initial_lr_ : c_.weight_decay;
    std::vector<torch::Tensor> exp_avgs;
    for (size_t i = 0; i < group.params.size(); ++i) {
      ParamState& s = *group.states[i];
      if (s.tensors.empty()) s.tensors["exp_avg"] = torch::zeros_like(group.params[i]);
      exp_avgs.push_back(s.tensors["exp_avg"]);
      s.step += 1;
    }
    at::_foreach_mul_(group.params, 1.0 - lr * wd);
    std::vector<torch::Tensor> update = at::_foreach_mul(exp_avgs, c_.beta1);
    at::_foreach_add_(update, group.grads, 1.0 - c_.beta1);
    at::_foreach_sign_(update);
    at::_foreach_add_(group.params, update, -lr);
    at::_foreach_mul_(exp_avgs, c_.beta2);
    at::_foreach_add_(exp_avgs, group.grads, 1.0 - c_.beta2);
    return true;
#else
    (void)lr;
    (void)group;
    return false;
#endif
  }

  // Graph-safe: the same update with the lr a 0-dim float64 device tensor
  // (lion_pytorch's p.add_(update.sign_(), alpha=-lr) as p -= sign * lr, the
  // same value). The step counter is counted on the device like AdamW's, though
  // Lion's update does not read it.
  void StepParamGraphSafe(const torch::Tensor& lr, WorkTensor& w, ParamState& s) override {
    const double wd = c_.decoupled_weight_decay ? c_.weight_decay / initial_lr_ : c_.weight_decay;
    if (s.tensors.empty()) s.tensors["exp_avg"] = torch::zeros_like(w.param);
    torch::Tensor& exp_avg = s.tensors["exp_avg"];
    s.step_tensor.add_(1);
    s.step += 1;
    if (wd != 0) w.param.mul_(torch::rsub(lr * wd, 1.0));
    torch::Tensor update = exp_avg.clone().mul_(c_.beta1).add(w.grad, 1.0 - c_.beta1).sign_();
    w.param.sub_(update.mul_(lr));
    exp_avg.mul_(c_.beta2).add_(w.grad, 1.0 - c_.beta2);
  }

  // StepFused with the lr tensor: foreach ops with a 0-dim tensor operand.
  bool StepFusedGraphSafe(const torch::Tensor& lr, FusedGroup& group) override {
#if LORAD_TORCH_TENSOR_SCALAR_KERNELS
    const double wd = c_.decoupled_weight_decay ? c_.weight_decay / initial_lr_ : c_.weight_decay;
    std::vector<torch::Tensor> exp_avgs, steps;
    for (size_t i = 0; i < group.params.size(); ++i) {
      ParamState& s = *group.states[i];
      if (s.tensors.empty()) s.tensors["exp_avg"] = torch::zeros_like(group.params[i]);
      exp_avgs.push_back(s.tensors["exp_avg"]);
      steps.push_back(s.step_tensor);
      s.step += 1;
    }
    at::_foreach_add_(steps, 1);
    // The foreach kernels read the 0-dim operand in the lists' dtype.
    const torch::Tensor lr32 = lr.to(torch::kFloat);
    if (wd != 0) at::_foreach_mul_(group.params, torch::rsub(lr * wd, 1.0).to(torch::kFloat));
    std::vector<torch::Tensor> update = at::_foreach_mul(exp_avgs, c_.beta1);
    at::_foreach_add_(update, group.grads, 1.0 - c_.beta1);
    at::_foreach_sign_(update);
    at::_foreach_mul_(update, lr32);
    at::_foreach_sub_(group.params, update);
    at::_foreach_mul_(exp_avgs, c_.beta2);
    at::_foreach_add_(exp_avgs, group.grads, 1.0 - c_.beta2);
    return true;
#else
    (void)lr;
    (void)group;
    return false;
#endif
  }

  bool SupportsGraphSafeStep() const override { return true; }

  LionConfig c_;
  std::string class_path_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Optimizer>> MakeLion(const OptimizerArgs& args, std::vector<ParamGroup> groups,
                                                    std::string class_path) {
  const std::string n = "Lion";
  RETURN_IF_ERROR(args.CheckKnown(n, {"betas", "weight_decay", "decoupled_weight_decay", "use_triton"}));
  LionConfig c;
  ASSIGN_OR_RETURN(std::vector<double> betas, args.Floats("betas", {c.beta1, c.beta2}));
  c.beta1 = betas[0];
  c.beta2 = betas[1];
  ASSIGN_OR_RETURN(c.weight_decay, args.Float("weight_decay", c.weight_decay));
  ASSIGN_OR_RETURN(c.decoupled_weight_decay, args.Bool("decoupled_weight_decay", false));
  ASSIGN_OR_RETURN(bool use_triton, args.Bool("use_triton", false));
  (void)use_triton;  // a kernel choice, same math
  RETURN_IF_ERROR(RequireRange(n, "betas[0]", c.beta1, 0, true, 1, false));
  RETURN_IF_ERROR(RequireRange(n, "betas[1]", c.beta2, 0, true, 1, false));
  RETURN_IF_ERROR(RequireRange(n, "weight_decay", c.weight_decay, 0, true, INFINITY, false));
  if (c.decoupled_weight_decay && !groups.empty() && groups.front().lr <= 0) {
    return absl::InvalidArgumentError("Lion decoupled_weight_decay=True needs a positive learning rate");
  }
  return std::unique_ptr<Optimizer>(new Lion(std::move(groups), args.DescribeArgs(), c, std::move(class_path)));
}

}  // namespace lorad::optim
