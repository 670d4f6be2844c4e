// transformers.optimization.Adafactor (src/transformers/optimization.py), op for op.
#include <cmath>

#include "absl/strings/str_cat.h"
#include "core/base/status_macros.h"
#include "core/optim/optim_internal.h"

namespace lorad::optim {
namespace {

struct AdafactorConfig {
  double eps1 = 1e-30, eps2 = 1e-3, clip_threshold = 1.0, decay_rate = -0.8, weight_decay = 0.0;
  std::optional<double> beta1;
  bool scale_parameter = true, relative_step = true, warmup_init = false;
};

class Adafactor final : public PerParameterOptimizer {
 public:
  Adafactor(std::vector<ParamGroup> groups, std::vector<std::string> args, AdafactorConfig config,
            std::string class_path)
      : PerParameterOptimizer(std::move(groups), std::move(args)), c_(config), class_path_(std::move(class_path)) {}

  std::string_view name() const override { return "Adafactor"; }
  std::string_view class_path() const override { return class_path_; }
  bool UsesInternalLr() const override { return c_.relative_step; }

  // What kohya's "adafactor" schedule reports: _get_lr of the group's first
  // parameter once it has stepped; the group's lr before that.
  double EffectiveLr(int group) const override {
    if (!c_.relative_step || groups_.at(group).params.empty()) return lr(group);
    const ParamState& s = state(group, 0);
    if (s.step == 0) return lr(group);
    return LrTensor(lr(group), s).item<double>();
  }

 private:
  // Adafactor._get_lr; a 0-d tensor when it is scaled by RMS (as in Python,
  // where max(eps2, RMS) picks the tensor), so float32 rounding matches.
  torch::Tensor LrTensor(double group_lr, const ParamState& s) const {
    const double t = static_cast<double>(s.step);
    double rel_step = group_lr;
    if (c_.relative_step) {
      const double min_step = c_.warmup_init ? 1e-6 * t : 1e-2;
      rel_step = std::min(min_step, 1.0 / std::sqrt(t));
    }
    const torch::Tensor& rms = s.tensors.at("RMS");
    if (c_.scale_parameter && rms.item<double>() > c_.eps2) return rms * rel_step;
    const double scale = c_.scale_parameter ? c_.eps2 : 1.0;
    return torch::tensor(scale * rel_step, torch::TensorOptions().dtype(torch::kDouble));
  }

  void StepParam(double group_lr, WorkTensor& w, ParamState& s) override {
    const torch::Tensor& grad = w.grad;
    const bool factored = grad.dim() >= 2;
    const bool first_moment = c_.beta1.has_value();
    if (s.tensors.empty()) {
      if (first_moment) s.tensors["exp_avg"] = torch::zeros_like(grad);
      if (factored) {
        auto shape = grad.sizes().vec();
        std::vector<int64_t> row(shape.begin(), shape.end() - 1);
        std::vector<int64_t> col(shape.begin(), shape.end() - 2);
        col.push_back(shape.back());
        s.tensors["exp_avg_sq_row"] = torch::zeros(row, grad.options());
        s.tensors["exp_avg_sq_col"] = torch::zeros(col, grad.options());
      } else {
        s.tensors["exp_avg_sq"] = torch::zeros_like(grad);
      }
    }
    s.step += 1;
    s.tensors["RMS"] = Rms(w.param);
    torch::Tensor lr_t = LrTensor(group_lr, s);
    const double beta2t = 1.0 - std::pow(static_cast<double>(s.step), c_.decay_rate);
    torch::Tensor update = grad.pow(2) + c_.eps1;
    if (factored) {
      torch::Tensor& row = s.tensors["exp_avg_sq_row"];
      torch::Tensor& col = s.tensors["exp_avg_sq_col"];
      row.mul_(beta2t).add_(update.mean(-1), 1.0 - beta2t);
      col.mul_(beta2t).add_(update.mean(-2), 1.0 - beta2t);
      update = ApproxSqGrad(row, col);
      update.mul_(grad);
    } else {
      torch::Tensor& sq = s.tensors["exp_avg_sq"];
      sq.mul_(beta2t).add_(update, 1.0 - beta2t);
      update = sq.rsqrt().mul_(grad);
    }
    update.div_((Rms(update) / c_.clip_threshold).clamp_(1.0));
    if (lr_t.scalar_type() == update.scalar_type()) {
      update.mul_(lr_t);
    } else {
      update.mul_(lr_t.item<double>());  // a Python float lr
    }
    if (first_moment) {
      torch::Tensor& exp_avg = s.tensors["exp_avg"];
      exp_avg.mul_(*c_.beta1).add_(update, 1.0 - *c_.beta1);
      update = exp_avg;
    }
    if (c_.weight_decay != 0) w.param.add_(w.param, -c_.weight_decay * lr_t.item<double>());
    w.param.add_(-update);
  }

  AdafactorConfig c_;
  std::string class_path_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Optimizer>> MakeAdafactor(const OptimizerArgs& args, std::vector<ParamGroup> groups,
                                                         std::string class_path) {
  const std::string n = "Adafactor";
  RETURN_IF_ERROR(args.CheckKnown(n, {"eps", "clip_threshold", "decay_rate", "beta1", "weight_decay",
                                      "scale_parameter", "relative_step", "warmup_init"}));
  AdafactorConfig c;
  ASSIGN_OR_RETURN(std::vector<double> eps, args.Floats("eps", {c.eps1, c.eps2}));
  c.eps1 = eps[0];
  c.eps2 = eps[1];
  ASSIGN_OR_RETURN(c.clip_threshold, args.Float("clip_threshold", c.clip_threshold));
  ASSIGN_OR_RETURN(c.decay_rate, args.Float("decay_rate", c.decay_rate));
  ASSIGN_OR_RETURN(c.beta1, args.OptionalFloat("beta1", std::nullopt));
  ASSIGN_OR_RETURN(c.weight_decay, args.Float("weight_decay", c.weight_decay));
  ASSIGN_OR_RETURN(c.scale_parameter, args.Bool("scale_parameter", true));
  // kohya: relative_step defaults to True when not given.
  ASSIGN_OR_RETURN(c.relative_step, args.Bool("relative_step", true));
  ASSIGN_OR_RETURN(c.warmup_init, args.Bool("warmup_init", false));
  RETURN_IF_ERROR(RequireRange(n, "eps[0]", c.eps1, 0, false, INFINITY, false));
  RETURN_IF_ERROR(RequireRange(n, "eps[1]", c.eps2, 0, false, INFINITY, false));
  RETURN_IF_ERROR(RequireRange(n, "clip_threshold", c.clip_threshold, 0, false, INFINITY, false));
  RETURN_IF_ERROR(RequireRange(n, "decay_rate", c.decay_rate, -INFINITY, false, 0, false));
  if (c.beta1) RETURN_IF_ERROR(RequireRange(n, "beta1", *c.beta1, 0, true, 1, false));
  RETURN_IF_ERROR(RequireRange(n, "weight_decay", c.weight_decay, 0, true, INFINITY, false));
  // kohya turns relative_step on when warmup_init is set (transformers would raise);
  // OptimizerWarnings reports it.
  if (c.warmup_init && !c.relative_step) c.relative_step = true;
  if (!c.relative_step) {
    for (const ParamGroup& g : groups) {
      if (g.lr <= 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            "Adafactor with relative_step=False needs a positive learning rate; group '", g.name, "' has ", g.lr));
      }
    }
  }
  std::vector<std::string> describe = args.DescribeArgs();
  if (!args.Has("relative_step")) describe.push_back("relative_step=True");  // kohya adds it to optimizer_kwargs
  return std::unique_ptr<Optimizer>(new Adafactor(std::move(groups), std::move(describe), c, std::move(class_path)));
}

}  // namespace lorad::optim
