// prodigyopt.Prodigy (konstmish/prodigy prodigyopt/prodigy.py), op for op. The d estimate is
// global: one set of scalars shared by every group, as the reference keeps
// identical copies in each param group.
#include <cmath>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "core/base/status_macros.h"
#include "core/optim/optim_internal.h"

namespace lorad::optim {
namespace {

struct ProdigyConfig {
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.0;
  std::optional<double> beta3;
  bool decouple = true, use_bias_correction = false, safeguard_warmup = false;
  double d0 = 1e-6, d_coef = 1.0, growth_rate = INFINITY;
  int64_t slice_p = 1;
};

std::string Exact(double v) {
  if (std::isinf(v)) return v > 0 ? "\"inf\"" : "\"-inf\"";
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.17g", v);
  return buf;
}

class Prodigy final : public Optimizer {
 public:
  Prodigy(std::vector<ParamGroup> groups, std::vector<std::string> args, ProdigyConfig config, std::string class_path)
      : Optimizer(std::move(groups), std::move(args)), c_(config), class_path_(std::move(class_path)) {
    d_ = d_max_ = d_hat_ = c_.d0;
  }

  std::string_view name() const override { return "Prodigy"; }
  std::string_view class_path() const override { return class_path_; }
  double EffectiveLr(int group) const override { return d_ * lr(group); }

  absl::Status Step() override {
    torch::NoGradGuard no_grad;
    const double beta3 = c_.beta3 ? *c_.beta3 : std::sqrt(c_.beta2);
    double lr = 0;
    for (double l : lrs_) lr = std::max(lr, l);
    for (int g = 0; g < num_groups(); ++g) {
      if (lrs_[g] != lr && lrs_[g] != 0.0) {
        return absl::InvalidArgumentError(absl::StrCat(
            "Prodigy needs the same lr in every parameter group (or 0): group '", groups_[g].name, "' has ", lrs_[g],
            ", another has ", lr, "; set unet_lr and text_encoder_lr equal"));
      }
    }
    const double kk = static_cast<double>(k_ + 1);
    const double bias_correction =
        c_.use_bias_correction ? std::pow(1 - std::pow(c_.beta2, kk), 0.5) / (1 - std::pow(c_.beta1, kk)) : 1.0;
    const double dlr = d_ * lr * bias_correction;
    const double d = d_, d0 = c_.d0;
    double d_numerator = d_numerator_ * beta3;
    double d_denom = 0.0;
    std::vector<std::vector<std::optional<WorkTensor>>> work(num_groups());
    try {
      for (int g = 0; g < num_groups(); ++g) {
        for (size_t i = 0; i < groups_[g].params.size(); ++i) {
          ASSIGN_OR_RETURN(std::optional<WorkTensor> w, PrepareParam(groups_[g].params[i], name()));
          work[g].push_back(w);
          if (!w) continue;
          torch::Tensor grad = w->grad;
          if (c_.weight_decay != 0 && !c_.decouple) grad = grad.add(w->param, c_.weight_decay);
          work[g].back()->grad = grad;
          ParamState& s = state(g, static_cast<int>(i));
          torch::Tensor flat = Sliced(w->param);
          if (s.tensors.empty()) {
            s.tensors["s"] = torch::zeros_like(flat);
            // An all-zero parameter (a LoRA up matrix) keeps a 0-d zero as p0, as the reference does.
            s.tensors["p0"] = w->param.any().item<bool>() ? flat.clone() : torch::zeros({}, flat.options());
            s.tensors["exp_avg"] = torch::zeros_like(w->param);
            s.tensors["exp_avg_sq"] = torch::zeros_like(w->param);
          }
          if (lrs_[g] > 0.0) {
            torch::Tensor sliced_grad = Sliced(grad);
            d_numerator += (d / d0) * dlr * torch::dot(sliced_grad, s.tensors["p0"] - flat).item<double>();
            s.tensors["exp_avg"].mul_(c_.beta1).add_(grad, d * (1 - c_.beta1));
            s.tensors["exp_avg_sq"].mul_(c_.beta2).addcmul_(grad, grad, d * d * (1 - c_.beta2));
            torch::Tensor& sv = s.tensors["s"];
            sv.mul_(beta3).add_(sliced_grad, c_.safeguard_warmup ? (d / d0) * d : (d / d0) * dlr);
            d_denom += sv.abs().sum().item<double>();
          }
        }
      }
      // No progress possible yet (all gradients zero): nothing else changes.
      if (d_denom == 0) return absl::OkStatus();
      double new_d = d, d_max = d_max_, d_hat = d;
      if (lr > 0.0) {
        d_hat = c_.d_coef * d_numerator / d_denom;
        if (new_d == d0) new_d = std::max(new_d, d_hat);
        d_max = std::max(d_max, d_hat);
        new_d = std::min(d_max, new_d * c_.growth_rate);
      }
      d_numerator_ = d_numerator;
      d_denom_ = d_denom;
      d_ = new_d;
      d_max_ = d_max;
      d_hat_ = d_hat;
      for (int g = 0; g < num_groups(); ++g) {
        for (size_t i = 0; i < groups_[g].params.size(); ++i) {
          std::optional<WorkTensor>& w = work[g][i];
          if (!w) continue;
          ParamState& s = state(g, static_cast<int>(i));
          s.step += 1;
          torch::Tensor denom = s.tensors["exp_avg_sq"].sqrt().add_(new_d * c_.eps);
          if (c_.weight_decay != 0 && c_.decouple) w->param.add_(w->param, -c_.weight_decay * dlr);
          w->param.addcdiv_(s.tensors["exp_avg"], denom, -dlr);
          w->Commit();
        }
      }
    } catch (const c10::Error& e) {
      return TorchError(name(), e);
    }
    k_ += 1;
    ++step_count_;
    return absl::OkStatus();
  }

 protected:
  void SaveExtraValues(std::map<std::string, std::string>* values) const override {
    (*values)["prodigy/d"] = Exact(d_);
    (*values)["prodigy/d_max"] = Exact(d_max_);
    (*values)["prodigy/d_hat"] = Exact(d_hat_);
    (*values)["prodigy/d_numerator"] = Exact(d_numerator_);
    (*values)["prodigy/d_denom"] = Exact(d_denom_);
    (*values)["prodigy/k"] = absl::StrCat(k_);
  }

  absl::Status LoadExtraValues(const std::map<std::string, std::string>& values) override {
    double parsed[5];
    const char* keys[5] = {"prodigy/d", "prodigy/d_max", "prodigy/d_hat", "prodigy/d_numerator", "prodigy/d_denom"};
    for (int i = 0; i < 5; ++i) {
      auto it = values.find(keys[i]);
      if (it == values.end() || !absl::SimpleAtod(it->second, &parsed[i])) {
        return absl::InvalidArgumentError(absl::StrCat("Prodigy state lacks a numeric '", keys[i], "'"));
      }
    }
    auto k = values.find("prodigy/k");
    int64_t k_value = 0;
    if (k == values.end() || !absl::SimpleAtoi(k->second, &k_value)) {
      return absl::InvalidArgumentError("Prodigy state lacks an integer 'prodigy/k'");
    }
    d_ = parsed[0];
    d_max_ = parsed[1];
    d_hat_ = parsed[2];
    d_numerator_ = parsed[3];
    d_denom_ = parsed[4];
    k_ = k_value;
    return absl::OkStatus();
  }

 private:
  torch::Tensor Sliced(const torch::Tensor& t) const {
    torch::Tensor flat = t.flatten();
    return c_.slice_p == 1 ? flat : flat.slice(0, 0, c10::nullopt, c_.slice_p);
  }

  ProdigyConfig c_;
  std::string class_path_;
  double d_ = 0, d_max_ = 0, d_hat_ = 0, d_numerator_ = 0, d_denom_ = 0;
  int64_t k_ = 0;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Optimizer>> MakeProdigy(const OptimizerArgs& args, std::vector<ParamGroup> groups,
                                                       std::string class_path) {
  const std::string n = "Prodigy";
  RETURN_IF_ERROR(args.CheckKnown(n, {"betas", "beta3", "eps", "weight_decay", "decouple", "use_bias_correction",
                                      "safeguard_warmup", "d0", "d_coef", "growth_rate", "slice_p", "fsdp_in_use"}));
  ProdigyConfig c;
  ASSIGN_OR_RETURN(std::vector<double> betas, args.Floats("betas", {c.beta1, c.beta2}));
  c.beta1 = betas[0];
  c.beta2 = betas[1];
  ASSIGN_OR_RETURN(c.beta3, args.OptionalFloat("beta3", std::nullopt));
  ASSIGN_OR_RETURN(c.eps, args.Float("eps", c.eps));
  ASSIGN_OR_RETURN(c.weight_decay, args.Float("weight_decay", c.weight_decay));
  ASSIGN_OR_RETURN(c.decouple, args.Bool("decouple", true));
  ASSIGN_OR_RETURN(c.use_bias_correction, args.Bool("use_bias_correction", false));
  ASSIGN_OR_RETURN(c.safeguard_warmup, args.Bool("safeguard_warmup", false));
  ASSIGN_OR_RETURN(c.d0, args.Float("d0", c.d0));
  ASSIGN_OR_RETURN(c.d_coef, args.Float("d_coef", c.d_coef));
  ASSIGN_OR_RETURN(c.growth_rate, args.Float("growth_rate", c.growth_rate));
  ASSIGN_OR_RETURN(c.slice_p, args.Int("slice_p", 1));
  ASSIGN_OR_RETURN(bool fsdp, args.Bool("fsdp_in_use", false));
  if (fsdp) return absl::InvalidArgumentError("Prodigy fsdp_in_use=True is not supported (single-process training)");
  RETURN_IF_ERROR(RequireRange(n, "betas[0]", c.beta1, 0, true, 1, false));
  RETURN_IF_ERROR(RequireRange(n, "betas[1]", c.beta2, 0, true, 1, false));
  if (c.beta3) RETURN_IF_ERROR(RequireRange(n, "beta3", *c.beta3, 0, true, 1, false));
  RETURN_IF_ERROR(RequireRange(n, "eps", c.eps, 0, false, INFINITY, false));
  RETURN_IF_ERROR(RequireRange(n, "weight_decay", c.weight_decay, 0, true, INFINITY, false));
  RETURN_IF_ERROR(RequireRange(n, "d0", c.d0, 0, false, INFINITY, false));
  RETURN_IF_ERROR(RequireRange(n, "d_coef", c.d_coef, 0, false, INFINITY, false));
  RETURN_IF_ERROR(RequireRange(n, "growth_rate", c.growth_rate, 0, false, INFINITY, true));
  if (c.slice_p < 1) {
    return absl::InvalidArgumentError(absl::StrCat("invalid Prodigy arg slice_p=", c.slice_p, ": must be >= 1"));
  }
  return std::unique_ptr<Optimizer>(new Prodigy(std::move(groups), args.DescribeArgs(), c, std::move(class_path)));
}

}  // namespace lorad::optim
