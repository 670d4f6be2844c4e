// came_pytorch.CAME (yangluo7/CAME came_pytorch/CAME.py), op for op, and the
// CAME of LoRA_Easy_Training_Scripts (derrian-distro/LoRA_Easy_Training_scripts_Backend
// custom_scheduler/LoraEasyCustomOptimizer/came.py, kozistr/pytorch_optimizer's
// CAME with stochastic rounding), which differs in four ways:
//  - args eps1/eps2 (not eps=(..)), weight_decouple, fixed_decay, ams_bound;
//  - weight decay multiplies p by 1 - lr*wd (1 - wd with fixed_decay); with
//    weight_decouple=False it is added to the gradient after the update was
//    computed, so it has no effect;
//  - for 1-D parameters the update aliases exp_avg, so exp_avg itself is
//    scaled by lr every step (the reference's behaviour, kept);
//  - bfloat16 parameters are written back with stochastic rounding.
#include <cmath>

#include "absl/strings/str_cat.h"
#include "core/base/status_macros.h"
#include "core/optim/optim_internal.h"

namespace lorad::optim {
namespace {

struct CameConfig {
  double eps1 = 1e-30, eps2 = 1e-16, clip_threshold = 1.0;
  double beta1 = 0.9, beta2 = 0.999, beta3 = 0.9999, weight_decay = 0.0;
  bool lora_easy = false;  // the LoraEasyCustomOptimizer.came.CAME semantics
  bool weight_decouple = true, fixed_decay = false, ams_bound = false;
};

class Came final : public PerParameterOptimizer {
 public:
  Came(std::vector<ParamGroup> groups, std::vector<std::string> args, CameConfig config, std::string class_path)
      : PerParameterOptimizer(std::move(groups), std::move(args)), c_(config), class_path_(std::move(class_path)) {}

  std::string_view name() const override { return c_.lora_easy ? "LoraEasyCAME" : "CAME"; }
  std::string_view class_path() const override { return class_path_; }

 private:
  void StepParam(double lr, WorkTensor& w, ParamState& s) override {
    const torch::Tensor& grad = w.grad;
    const bool factored = grad.dim() >= 2;
    if (s.tensors.empty()) {
      s.tensors["exp_avg"] = torch::zeros_like(grad);
      if (factored) {
        auto shape = grad.sizes().vec();
        std::vector<int64_t> row(shape.begin(), shape.end() - 1);
        std::vector<int64_t> col(shape.begin(), shape.end() - 2);
        col.push_back(shape.back());
        s.tensors["exp_avg_sq_row"] = torch::zeros(row, grad.options());
        s.tensors["exp_avg_sq_col"] = torch::zeros(col, grad.options());
        s.tensors["exp_avg_res_row"] = torch::zeros(row, grad.options());
        s.tensors["exp_avg_res_col"] = torch::zeros(col, grad.options());
      } else {
        s.tensors["exp_avg_sq"] = torch::zeros_like(grad);
      }
    }
    s.step += 1;
    torch::Tensor update = grad.pow(2) + c_.eps1;
    if (factored) {
      torch::Tensor& row = s.tensors["exp_avg_sq_row"];
      torch::Tensor& col = s.tensors["exp_avg_sq_col"];
      row.mul_(c_.beta2).add_(update.mean(-1), 1.0 - c_.beta2);
      col.mul_(c_.beta2).add_(update.mean(-2), 1.0 - c_.beta2);
      update = ApproxSqGrad(row, col);
    } else {
      torch::Tensor& sq = s.tensors["exp_avg_sq"];
      sq.mul_(c_.beta2).add_(update, 1.0 - c_.beta2);
      update = sq.rsqrt();
    }
    if (c_.ams_bound) {
      // pytorch_optimizer: exp_avg_sq_hat = max(exp_avg_sq_hat, 1 / factor), factor = rsqrt(hat / beta2).
      if (!s.tensors.count("exp_avg_sq_hat")) s.tensors["exp_avg_sq_hat"] = torch::zeros_like(grad);
      torch::Tensor& hat = s.tensors["exp_avg_sq_hat"];
      hat.copy_(torch::max(hat, 1 / update));
      update = (hat / c_.beta2).rsqrt_();
    }
    update.mul_(grad);
    update.div_((Rms(update) / c_.clip_threshold).clamp_(1.0));
    torch::Tensor& exp_avg = s.tensors["exp_avg"];
    exp_avg.mul_(c_.beta1).add_(update, 1.0 - c_.beta1);
    // Confidence: instability of the update against its moving average.
    torch::Tensor res = (update - exp_avg).pow(2) + c_.eps2;
    if (factored) {
      torch::Tensor& res_row = s.tensors["exp_avg_res_row"];
      torch::Tensor& res_col = s.tensors["exp_avg_res_col"];
      res_row.mul_(c_.beta3).add_(res.mean(-1), 1.0 - c_.beta3);
      res_col.mul_(c_.beta3).add_(res.mean(-2), 1.0 - c_.beta3);
      update = ApproxSqGrad(res_row, res_col).mul_(exp_avg);
    } else {
      update = c_.lora_easy ? exp_avg : exp_avg.clone();
    }
    if (c_.lora_easy) {
      if (c_.weight_decouple && c_.weight_decay != 0) {
        w.param.mul_(1.0 - c_.weight_decay * (c_.fixed_decay ? 1.0 : lr));
      }
    } else if (c_.weight_decay != 0) {
      w.param.add_(w.param, -c_.weight_decay * lr);
    }
    update.mul_(lr);
    w.param.add_(-update);
    if (c_.lora_easy && w.original.scalar_type() == torch::kBFloat16) {
      CopyStochasticBf16(w.original, w.param);
      w.param = w.original;  // Commit() is then a no-op
    }
  }

  CameConfig c_;
  std::string class_path_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Optimizer>> MakeLoraEasyCame(const OptimizerArgs& args, std::vector<ParamGroup> groups,
                                                            std::string class_path) {
  const std::string n = "LoraEasyCustomOptimizer.came.CAME";
  RETURN_IF_ERROR(args.CheckKnown(n, {"betas", "weight_decay", "weight_decouple", "fixed_decay", "clip_threshold",
                                      "ams_bound", "eps1", "eps2"}));
  CameConfig c;
  c.lora_easy = true;
  ASSIGN_OR_RETURN(c.eps1, args.Float("eps1", c.eps1));
  ASSIGN_OR_RETURN(c.eps2, args.Float("eps2", c.eps2));
  ASSIGN_OR_RETURN(c.clip_threshold, args.Float("clip_threshold", c.clip_threshold));
  ASSIGN_OR_RETURN(std::vector<double> betas, args.Floats("betas", {c.beta1, c.beta2, c.beta3}));
  c.beta1 = betas[0];
  c.beta2 = betas[1];
  c.beta3 = betas[2];
  ASSIGN_OR_RETURN(c.weight_decay, args.Float("weight_decay", c.weight_decay));
  ASSIGN_OR_RETURN(c.weight_decouple, args.Bool("weight_decouple", true));
  ASSIGN_OR_RETURN(c.fixed_decay, args.Bool("fixed_decay", false));
  ASSIGN_OR_RETURN(c.ams_bound, args.Bool("ams_bound", false));
  RETURN_IF_ERROR(RequireRange(n, "eps1", c.eps1, 0, true, INFINITY, false));
  RETURN_IF_ERROR(RequireRange(n, "eps2", c.eps2, 0, true, INFINITY, false));
  RETURN_IF_ERROR(RequireRange(n, "clip_threshold", c.clip_threshold, 0, false, INFINITY, false));
  RETURN_IF_ERROR(RequireRange(n, "betas[0]", c.beta1, 0, true, 1, false));
  RETURN_IF_ERROR(RequireRange(n, "betas[1]", c.beta2, 0, true, 1, false));
  RETURN_IF_ERROR(RequireRange(n, "betas[2]", c.beta3, 0, true, 1, false));
  RETURN_IF_ERROR(RequireRange(n, "weight_decay", c.weight_decay, 0, true, INFINITY, false));
  return std::unique_ptr<Optimizer>(new Came(std::move(groups), args.DescribeArgs(), c, std::move(class_path)));
}

absl::StatusOr<std::unique_ptr<Optimizer>> MakeCame(const OptimizerArgs& args, std::vector<ParamGroup> groups,
                                                    std::string class_path) {
  const std::string n = "CAME";
  RETURN_IF_ERROR(args.CheckKnown(n, {"eps", "clip_threshold", "betas", "weight_decay"}));
  CameConfig c;
  ASSIGN_OR_RETURN(std::vector<double> eps, args.Floats("eps", {c.eps1, c.eps2}));
  c.eps1 = eps[0];
  c.eps2 = eps[1];
  ASSIGN_OR_RETURN(c.clip_threshold, args.Float("clip_threshold", c.clip_threshold));
  ASSIGN_OR_RETURN(std::vector<double> betas, args.Floats("betas", {c.beta1, c.beta2, c.beta3}));
  c.beta1 = betas[0];
  c.beta2 = betas[1];
  c.beta3 = betas[2];
  ASSIGN_OR_RETURN(c.weight_decay, args.Float("weight_decay", c.weight_decay));
  RETURN_IF_ERROR(RequireRange(n, "eps[0]", c.eps1, 0, false, INFINITY, false));
  RETURN_IF_ERROR(RequireRange(n, "eps[1]", c.eps2, 0, false, INFINITY, false));
  RETURN_IF_ERROR(RequireRange(n, "clip_threshold", c.clip_threshold, 0, false, INFINITY, false));
  RETURN_IF_ERROR(RequireRange(n, "betas[0]", c.beta1, 0, true, 1, false));
  RETURN_IF_ERROR(RequireRange(n, "betas[1]", c.beta2, 0, true, 1, false));
  RETURN_IF_ERROR(RequireRange(n, "betas[2]", c.beta3, 0, true, 1, false));
  RETURN_IF_ERROR(RequireRange(n, "weight_decay", c.weight_decay, 0, true, INFINITY, false));
  for (const ParamGroup& g : groups) {
    if (g.lr <= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("CAME needs a positive learning rate; group '", g.name, "' has ", g.lr));
    }
  }
  return std::unique_ptr<Optimizer>(new Came(std::move(groups), args.DescribeArgs(), c, std::move(class_path)));
}

}  // namespace lorad::optim
