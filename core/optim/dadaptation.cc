// D-Adaptation (facebookresearch/dadaptation 3.2), op for op:
//   DAdaptAdam          dadaptation/dadapt_adam.py
//   DAdaptAdamPreprint  dadaptation/experimental/dadapt_adam_preprint.py (kohya's "DAdaptation")
//   DAdaptLion          dadaptation/dadapt_lion.py
//   DAdaptSGD           dadaptation/dadapt_sgd.py
//   DAdaptAdaGrad       dadaptation/dadapt_adagrad.py (dense gradients)
//   DAdaptAdan          dadaptation/dadapt_adan.py
// Each keeps one global step-size estimate d (and the sums it is made of),
// which the reference stores as identical copies in every param group; here
// they are one set of scalars. Python's float arithmetic is double, so the
// scalars are doubles and every tensor reduction is read back as the reference
// reads it (.item()). Weight decay that the reference adds into p.grad in
// place is added into a copy here: the update is the same, p.grad is left alone.
#include <cmath>
#include <functional>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "core/base/status_macros.h"
#include "core/optim/optim_internal.h"

namespace lorad::optim {
namespace {

enum class Variant { kAdam, kAdamPreprint, kLion, kSgd, kAdaGrad, kAdan };

struct DAdaptConfig {
  Variant variant = Variant::kAdam;
  double beta1 = 0.9, beta2 = 0.999, beta3 = 0.0;  // beta3: Adan only
  double eps = 1e-8, weight_decay = 0.0, momentum = 0.0;
  double d0 = 1e-6, growth_rate = INFINITY;
  bool decouple = false, use_bias_correction = false, no_prox = false;
};

const char* VariantName(Variant v) {
  switch (v) {
    case Variant::kAdam:
      return "DAdaptAdam";
    case Variant::kAdamPreprint:
      return "DAdaptAdamPreprint";
    case Variant::kLion:
      return "DAdaptLion";
    case Variant::kSgd:
      return "DAdaptSGD";
    case Variant::kAdaGrad:
      return "DAdaptAdaGrad";
    case Variant::kAdan:
      return "DAdaptAdan";
  }
  return "DAdapt";
}

std::string Exact(double v) {
  if (std::isinf(v)) return v > 0 ? "\"inf\"" : "\"-inf\"";
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.17g", v);
  return buf;
}

double Item(const torch::Tensor& t) { return t.item<double>(); }

class DAdapt final : public Optimizer {
 public:
  DAdapt(std::vector<ParamGroup> groups, std::vector<std::string> args, DAdaptConfig config, std::string class_path)
      : Optimizer(std::move(groups), std::move(args)), c_(config), class_path_(std::move(class_path)) {
    d_ = c_.d0;
  }

  std::string_view name() const override { return VariantName(c_.variant); }
  std::string_view class_path() const override { return class_path_; }
  // What kohya logs for D-Adaptation: d x lr.
  double EffectiveLr(int group) const override { return d_ * lr(group); }

  absl::Status Step() override {
    torch::NoGradGuard no_grad;
    // Adam, AdamPreprint, Lion and SGD use the largest group lr and reject any
    // other non-zero one; AdaGrad and Adan use the first group's lr for all.
    const bool uses_max = c_.variant != Variant::kAdaGrad && c_.variant != Variant::kAdan;
    double lr = lrs_.empty() ? 0.0 : lrs_[0];
    if (uses_max) {
      for (double l : lrs_) lr = std::max(lr, l);
      for (int g = 0; g < num_groups(); ++g) {
        if (lrs_[g] != lr && lrs_[g] != 0.0) {
          return absl::InvalidArgumentError(absl::StrCat(
              std::string(name()), " needs the same lr in every parameter group (or 0): group '", groups_[g].name, "' has ",
              lrs_[g], ", another has ", lr, "; set unet_lr and text_encoder_lr equal"));
        }
      }
    }
    work_.assign(num_groups(), {});
    try {
      bool any = false;
      for (int g = 0; g < num_groups(); ++g) {
        for (size_t i = 0; i < groups_[g].params.size(); ++i) {
          ASSIGN_OR_RETURN(std::optional<WorkTensor> w, PrepareParam(groups_[g].params[i], name()));
          any = any || w.has_value();
          work_[g].push_back(std::move(w));
        }
      }
      if (!any) return absl::OkStatus();
      absl::Status st;
      switch (c_.variant) {
        case Variant::kAdam:
          st = StepAdam(lr);
          break;
        case Variant::kAdamPreprint:
          st = StepAdamPreprint(lr);
          break;
        case Variant::kLion:
          st = StepLion(lr);
          break;
        case Variant::kSgd:
          st = StepSgd(lr);
          break;
        case Variant::kAdaGrad:
          st = StepAdaGrad(lr);
          break;
        case Variant::kAdan:
          st = StepAdan(lr);
          break;
      }
      work_.clear();
      return st;
    } catch (const c10::Error& e) {
      work_.clear();
      return TorchError(name(), e);
    }
  }

 protected:
  void SaveExtraValues(std::map<std::string, std::string>* values) const override {
    (*values)["dadapt/d"] = Exact(d_);
    (*values)["dadapt/k"] = absl::StrCat(k_);
    (*values)["dadapt/numerator_weighted"] = Exact(numerator_weighted_);
    (*values)["dadapt/gsq_weighted"] = Exact(gsq_weighted_);
    (*values)["dadapt/sksq_weighted"] = Exact(sksq_weighted_);
    (*values)["dadapt/skl1"] = Exact(skl1_);
    (*values)["dadapt/g0_norm"] = Exact(g0_norm_);
  }

  absl::Status LoadExtraValues(const std::map<std::string, std::string>& values) override {
    const char* keys[6] = {"dadapt/d", "dadapt/numerator_weighted", "dadapt/gsq_weighted",
                           "dadapt/sksq_weighted", "dadapt/skl1", "dadapt/g0_norm"};
    double parsed[6];
    for (int i = 0; i < 6; ++i) {
      auto it = values.find(keys[i]);
      if (it == values.end() || !absl::SimpleAtod(it->second, &parsed[i])) {
        return absl::InvalidArgumentError(absl::StrCat(std::string(name()), " state lacks a numeric '", keys[i], "'"));
      }
    }
    auto k = values.find("dadapt/k");
    int64_t k_value = 0;
    if (k == values.end() || !absl::SimpleAtoi(k->second, &k_value)) {
      return absl::InvalidArgumentError(absl::StrCat(std::string(name()), " state lacks an integer 'dadapt/k'"));
    }
    d_ = parsed[0];
    numerator_weighted_ = parsed[1];
    gsq_weighted_ = parsed[2];
    sksq_weighted_ = parsed[3];
    skl1_ = parsed[4];
    g0_norm_ = parsed[5];
    k_ = k_value;
    return absl::OkStatus();
  }

 private:
  // Calls fn(group, lr of the group, work tensor, state) for every parameter with a gradient.
  void ForEach(const std::function<void(int, double, WorkTensor&, ParamState&)>& fn) {
    for (int g = 0; g < num_groups(); ++g) {
      for (size_t i = 0; i < work_[g].size(); ++i) {
        if (!work_[g][i]) continue;
        fn(g, lrs_[g], *work_[g][i], state(g, static_cast<int>(i)));
      }
    }
  }
  void CommitAll() {
    ForEach([](int, double, WorkTensor& w, ParamState&) { w.Commit(); });
  }
  torch::Tensor DecayedGrad(const WorkTensor& w, bool coupled) const {
    return (c_.weight_decay != 0 && coupled) ? w.grad.add(w.param, c_.weight_decay) : w.grad;
  }

  absl::Status StepAdam(double lr) {
    const double beta1 = c_.beta1, beta2 = c_.beta2, r = 1.0;  // r: the reference's layer_scale (always 1)
    const double kk = static_cast<double>(k_ + 1);
    const double bias_correction =
        c_.use_bias_correction ? std::pow(1 - std::pow(beta2, kk), 0.5) / (1 - std::pow(beta1, kk)) : 1.0;
    const double dlr = d_ * lr * bias_correction;
    const double sqrt_beta2 = std::pow(beta2, 0.5);
    double numerator_acum = 0.0, sk_l1 = 0.0;
    ForEach([&](int, double group_lr, WorkTensor& w, ParamState& s) {
      w.grad = DecayedGrad(w, !c_.decouple);
      if (s.tensors.empty()) {
        s.tensors["s"] = torch::zeros_like(w.param);
        s.tensors["exp_avg"] = torch::zeros_like(w.param);
        s.tensors["exp_avg_sq"] = torch::zeros_like(w.param);
      }
      if (group_lr > 0.0) {
        torch::Tensor& sk = s.tensors["s"];
        torch::Tensor denom = s.tensors["exp_avg_sq"].sqrt().add_(c_.eps);
        numerator_acum += r * dlr * Item(torch::dot(w.grad.flatten(), sk.div(denom).flatten()));
        s.tensors["exp_avg"].mul_(beta1).add_(w.grad, r * dlr * (1 - beta1));
        s.tensors["exp_avg_sq"].mul_(beta2).addcmul_(w.grad, w.grad, 1 - beta2);
        sk.mul_(sqrt_beta2).add_(w.grad, dlr * (1 - sqrt_beta2));
        sk_l1 += r * Item(sk.abs().sum());
      }
    });
    const double numerator_weighted = sqrt_beta2 * numerator_weighted_ + (1 - sqrt_beta2) * numerator_acum;
    if (sk_l1 == 0) return absl::OkStatus();
    double d = d_;
    if (lr > 0.0) {
      const double d_hat = numerator_weighted / ((1 - sqrt_beta2) * sk_l1);
      d = std::max(d, std::min(d_hat, d * c_.growth_rate));
    }
    numerator_weighted_ = numerator_weighted;
    d_ = d;
    ForEach([&](int, double, WorkTensor& w, ParamState& s) {
      s.step += 1;
      torch::Tensor denom = s.tensors["exp_avg_sq"].sqrt().add_(c_.eps);
      if (c_.weight_decay != 0 && c_.decouple) w.param.add_(w.param, -c_.weight_decay * dlr);
      w.param.addcdiv_(s.tensors["exp_avg"], denom, -1);
    });
    CommitAll();
    Finish();
    return absl::OkStatus();
  }

  absl::Status StepAdamPreprint(double lr) {
    const double beta1 = c_.beta1, beta2 = c_.beta2;
    const double dlr = d_ * lr;
    double g_sq = 0.0, sksq_weighted = 0.0, sk_l1 = 0.0;
    ForEach([&](int, double group_lr, WorkTensor& w, ParamState& s) {
      w.grad = DecayedGrad(w, !c_.decouple);
      if (s.tensors.empty()) {
        s.tensors["s"] = torch::zeros_like(w.param);
        s.tensors["exp_avg"] = torch::zeros_like(w.param);
        s.tensors["exp_avg_sq"] = torch::zeros_like(w.param);
      }
      torch::Tensor grad_grad = w.grad * w.grad;
      if (group_lr > 0) {
        s.tensors["exp_avg"].mul_(beta1).add_(w.grad, dlr * (1 - beta1));
        s.tensors["exp_avg_sq"].mul_(beta2).add_(grad_grad, 1 - beta2);
        torch::Tensor denom = s.tensors["exp_avg_sq"].sqrt().add_(c_.eps);
        g_sq += Item(grad_grad.div_(denom).sum());
        torch::Tensor& sk = s.tensors["s"];
        sk.mul_(beta2).add_(w.grad, dlr * (1 - beta2));
        sksq_weighted += Item((sk * sk).div_(denom).sum());
        sk_l1 += Item(sk.abs().sum());
      }
    });
    const double gsq_weighted = beta2 * gsq_weighted_ + g_sq * (dlr * dlr) * (1 - beta2);
    if (sk_l1 == 0) return absl::OkStatus();
    double d = d_;
    if (lr > 0.0) {
      const double d_hat = (sksq_weighted / (1 - beta2) - gsq_weighted) / sk_l1;
      d = std::max(d, std::min(d_hat, d * c_.growth_rate));
    }
    gsq_weighted_ = gsq_weighted;
    d_ = d;
    ForEach([&](int, double group_lr, WorkTensor& w, ParamState& s) {
      s.step += 1;
      torch::Tensor denom = s.tensors["exp_avg_sq"].sqrt().add_(c_.eps);
      if (c_.weight_decay != 0 && c_.decouple && group_lr > 0) w.param.add_(w.param, -c_.weight_decay * dlr);
      w.param.addcdiv_(s.tensors["exp_avg"], denom, -1);
    });
    CommitAll();
    Finish();
    return absl::OkStatus();
  }

  // One pass: the parameters move while d's sums accumulate.
  absl::Status StepLion(double lr) {
    const double beta1 = c_.beta1, beta2 = c_.beta2;
    const double dlr = d_ * lr;
    const double sqrt_beta2 = std::pow(beta2, 0.5);
    double numerator_acum = 0.0, sk_l1 = 0.0;
    ForEach([&](int, double, WorkTensor& w, ParamState& s) {
      if (s.tensors.empty()) {
        s.tensors["exp_avg"] = torch::zeros_like(w.param);
        s.tensors["s"] = torch::zeros_like(w.param);
      }
      torch::Tensor& exp_avg = s.tensors["exp_avg"];
      torch::Tensor& sk = s.tensors["s"];
      s.step += 1;
      w.param.mul_(1 - dlr * c_.weight_decay);
      torch::Tensor update = exp_avg.clone().mul_(beta1).add_(w.grad, 1 - beta1).sign_();
      w.param.add_(update, -dlr);
      exp_avg.mul_(beta2).add_(w.grad, (1 - beta2) * dlr);
      numerator_acum += dlr * Item(torch::dot(update.flatten(), sk.flatten()));
      sk.mul_(sqrt_beta2).add_(update, (1 - sqrt_beta2) * dlr);
      sk_l1 += Item(sk.abs().sum());
      w.Commit();
    });
    ++step_count_;
    const double numerator_weighted = sqrt_beta2 * numerator_weighted_ + (1 - sqrt_beta2) * numerator_acum;
    if (sk_l1 == 0) return absl::OkStatus();
    double d = d_;
    if (lr > 0.0) d = std::max(d, numerator_weighted / ((1 - sqrt_beta2) * sk_l1));
    numerator_weighted_ = numerator_weighted;
    d_ = d;
    k_ += 1;
    return absl::OkStatus();
  }

  absl::Status StepSgd(double lr) {
    const double ck = 1 - c_.momentum;
    if (k_ == 0) {
      double g_sq = 0.0;
      ForEach([&](int, double group_lr, WorkTensor& w, ParamState&) {
        // The reference's first pass adds weight decay out of place and drops it: raw gradients.
        if (group_lr > 0.0) g_sq += Item((w.grad * w.grad).sum());
      });
      g0_norm_ = std::sqrt(g_sq);
    }
    if (g0_norm_ == 0) {
      return absl::InvalidArgumentError(
          "DAdaptSGD: the first step's gradients are all zero (the reference divides by their norm)");
    }
    const double dlr = d_ * lr / g0_norm_;
    double numerator_weighted = numerator_weighted_, sk_sq = 0.0;
    ForEach([&](int, double group_lr, WorkTensor& w, ParamState& s) {
      if (s.tensors.empty()) {
        s.tensors["z"] = w.param.clone();
        s.tensors["s"] = torch::zeros_like(w.param);
        s.tensors["x0"] = w.param.clone();
      }
      w.grad = DecayedGrad(w, true);
      if (group_lr > 0.0) {
        torch::Tensor& sk = s.tensors["s"];
        numerator_weighted += dlr * Item(torch::dot(w.grad.flatten(), sk.flatten()));
        sk.add_(w.grad, dlr);
        sk_sq += Item((sk * sk).sum());
      }
    });
    if (sk_sq == 0) return absl::OkStatus();
    double d = d_;
    if (lr > 0.0) {
      const double d_hat = 2 * numerator_weighted / std::sqrt(sk_sq);
      d = std::max(d, std::min(d_hat, d * c_.growth_rate));
    }
    numerator_weighted_ = numerator_weighted;
    d_ = d;
    ForEach([&](int, double, WorkTensor& w, ParamState& s) {
      s.step += 1;
      torch::Tensor& z = s.tensors["z"];
      z.copy_(s.tensors["x0"] - s.tensors["s"]);
      w.param.mul_(1 - ck).add_(z, ck);
    });
    CommitAll();
    Finish();
    return absl::OkStatus();
  }

  absl::Status StepAdaGrad(double lr) {
    const double ck = 1 - c_.momentum;
    const double dlr = d_ * lr;
    double g_sq = 0.0, sksq_weighted_change = 0.0, skl1_change = 0.0;
    ForEach([&](int, double, WorkTensor& w, ParamState& s) {
      if (s.tensors.empty()) {
        s.tensors["alphak"] = torch::full_like(w.param, 1e-6);
        s.tensors["sk"] = torch::zeros_like(w.param);
        s.tensors["x0"] = w.param.clone();
      }
      torch::Tensor& sk = s.tensors["sk"];
      torch::Tensor& alphak = s.tensors["alphak"];
      w.grad = DecayedGrad(w, true);
      const double old_sksq_weighted = Item((sk * sk).div(torch::sqrt(alphak) + c_.eps).sum());
      const double old_skl1 = Item(sk.abs().sum());
      alphak.add_(w.grad * w.grad);
      g_sq += Item((w.grad * w.grad).div(torch::sqrt(alphak) + c_.eps).sum());
      sk.add_(w.grad, dlr);
      const double sksq_weighted = Item((sk * sk).div(torch::sqrt(alphak) + c_.eps).sum());
      const double skl1 = Item(sk.abs().sum());
      sksq_weighted_change += sksq_weighted - old_sksq_weighted;
      skl1_change += skl1 - old_skl1;
    });
    const double sksq_weighted = sksq_weighted_ + sksq_weighted_change;
    const double skl1 = skl1_ + skl1_change;
    if (skl1 == 0) return absl::OkStatus();
    const double gsq_weighted = gsq_weighted_ + dlr * dlr * g_sq;
    double d = d_;
    if (lr > 0.0) {
      const double d_hat = (sksq_weighted - gsq_weighted) / skl1;
      d = std::max(d, std::min(d_hat, d * c_.growth_rate));
    }
    gsq_weighted_ = gsq_weighted;
    skl1_ = skl1;
    sksq_weighted_ = sksq_weighted;
    d_ = d;
    ForEach([&](int, double, WorkTensor& w, ParamState& s) {
      s.step += 1;
      torch::Tensor z = s.tensors["x0"] - s.tensors["sk"].div(torch::sqrt(s.tensors["alphak"]) + c_.eps);
      if (c_.momentum != 0) {
        w.param.mul_(1 - ck).add_(z, ck);
      } else {
        w.param.copy_(z);
      }
    });
    CommitAll();
    Finish();
    return absl::OkStatus();
  }

  absl::Status StepAdan(double lr) {
    const double beta1 = c_.beta1, beta2 = c_.beta2, beta3 = c_.beta3;
    const double dlr = d_ * lr;
    double g_sq = 0.0, sksq_weighted = 0.0, sk_l1 = 0.0;
    ForEach([&](int, double, WorkTensor& w, ParamState& s) {
      if (s.tensors.empty()) {
        s.tensors["s"] = torch::zeros_like(w.param);
        s.tensors["exp_avg"] = torch::zeros_like(w.param);
        s.tensors["exp_avg_diff"] = torch::zeros_like(w.param);
        s.tensors["exp_avg_sq"] = torch::zeros_like(w.param);
      }
      if (s.step == 0) s.tensors["pre_grad"] = w.grad.clone();
      const torch::Tensor& grad = w.grad;
      torch::Tensor grad_diff = grad - s.tensors["pre_grad"];
      torch::Tensor grad_grad = grad * grad;
      torch::Tensor update = grad + grad_diff * beta2;
      torch::Tensor update_update = update * update;
      s.tensors["exp_avg"].mul_(beta1).add_(grad, dlr * (1. - beta1));
      s.tensors["exp_avg_diff"].mul_(beta2).add_(grad_diff, dlr * (1. - beta2));
      s.tensors["exp_avg_sq"].mul_(beta3).add_(update_update, 1. - beta3);
      torch::Tensor denom = s.tensors["exp_avg_sq"].sqrt().add_(c_.eps);
      g_sq += Item(grad_grad.div_(denom).sum());
      torch::Tensor& sk = s.tensors["s"];
      sk.mul_(beta3).add_(grad, dlr * (1. - beta3));
      sksq_weighted += Item((sk * sk).div_(denom).sum());
      sk_l1 += Item(sk.abs().sum());
    });
    const double gsq_weighted = beta3 * gsq_weighted_ + g_sq * (dlr * dlr) * (1 - beta3);
    if (sk_l1 == 0) return absl::OkStatus();
    double d = d_;
    if (lr > 0.0) {
      const double d_hat = (sksq_weighted / (1 - beta3) - gsq_weighted) / sk_l1;
      d = std::max(d, std::min(d_hat, d * c_.growth_rate));
    }
    gsq_weighted_ = gsq_weighted;
    d_ = d;
    ForEach([&](int, double, WorkTensor& w, ParamState& s) {
      s.step += 1;
      torch::Tensor denom = s.tensors["exp_avg_sq"].sqrt().add_(c_.eps);
      torch::Tensor update = (s.tensors["exp_avg"] + s.tensors["exp_avg_diff"] * beta2).div_(denom);
      if (c_.no_prox) {
        w.param.mul_(1 - dlr * c_.weight_decay);
        w.param.add_(update, -1);
      } else {
        w.param.add_(update, -1);
        w.param.div_(1 + dlr * c_.weight_decay);
      }
      s.tensors["pre_grad"].copy_(w.grad);
    });
    CommitAll();
    Finish();
    return absl::OkStatus();
  }

  void Finish() {
    k_ += 1;
    ++step_count_;
  }

  DAdaptConfig c_;
  std::string class_path_;
  double d_ = 0, numerator_weighted_ = 0, gsq_weighted_ = 0, sksq_weighted_ = 0, skl1_ = 0, g0_norm_ = 0;
  int64_t k_ = 0;
  std::vector<std::vector<std::optional<WorkTensor>>> work_;  // only during Step()
};

absl::StatusOr<std::unique_ptr<Optimizer>> MakeDAdapt(Variant variant, const OptimizerArgs& args,
                                                      std::vector<ParamGroup> groups, std::string class_path) {
  const std::string n = VariantName(variant);
  DAdaptConfig c;
  c.variant = variant;
  switch (variant) {
    case Variant::kAdam:
      RETURN_IF_ERROR(args.CheckKnown(n, {"betas", "eps", "weight_decay", "log_every", "decouple",
                                          "use_bias_correction", "d0", "growth_rate", "fsdp_in_use"}));
      break;
    case Variant::kAdamPreprint:
      RETURN_IF_ERROR(args.CheckKnown(
          n, {"betas", "eps", "weight_decay", "log_every", "decouple", "d0", "growth_rate", "fsdp_in_use"}));
      break;
    case Variant::kLion:
      RETURN_IF_ERROR(args.CheckKnown(n, {"betas", "weight_decay", "log_every", "d0", "fsdp_in_use"}));
      c.beta2 = 0.99;
      break;
    case Variant::kSgd:
      RETURN_IF_ERROR(
          args.CheckKnown(n, {"momentum", "weight_decay", "log_every", "d0", "growth_rate", "fsdp_in_use"}));
      break;
    case Variant::kAdaGrad:
      RETURN_IF_ERROR(args.CheckKnown(n, {"momentum", "log_every", "weight_decay", "eps", "d0", "growth_rate"}));
      c.eps = 1e-6;
      break;
    case Variant::kAdan:
      RETURN_IF_ERROR(
          args.CheckKnown(n, {"betas", "eps", "weight_decay", "no_prox", "log_every", "d0", "growth_rate"}));
      c.beta1 = 0.98;
      c.beta2 = 0.92;
      c.beta3 = 0.99;
      c.weight_decay = 0.02;
      break;
  }
  if (variant == Variant::kAdan) {
    ASSIGN_OR_RETURN(std::vector<double> betas, args.Floats("betas", {c.beta1, c.beta2, c.beta3}));
    c.beta1 = betas[0];
    c.beta2 = betas[1];
    c.beta3 = betas[2];
    RETURN_IF_ERROR(RequireRange(n, "betas[2]", c.beta3, 0, true, 1, false));
  } else if (variant != Variant::kSgd && variant != Variant::kAdaGrad) {
    ASSIGN_OR_RETURN(std::vector<double> betas, args.Floats("betas", {c.beta1, c.beta2}));
    c.beta1 = betas[0];
    c.beta2 = betas[1];
  }
  RETURN_IF_ERROR(RequireRange(n, "betas[0]", c.beta1, 0, true, 1, false));
  RETURN_IF_ERROR(RequireRange(n, "betas[1]", c.beta2, 0, true, 1, false));
  ASSIGN_OR_RETURN(c.eps, args.Float("eps", c.eps));
  ASSIGN_OR_RETURN(c.weight_decay, args.Float("weight_decay", c.weight_decay));
  ASSIGN_OR_RETURN(c.momentum, args.Float("momentum", c.momentum));
  ASSIGN_OR_RETURN(c.d0, args.Float("d0", c.d0));
  ASSIGN_OR_RETURN(c.growth_rate, args.Float("growth_rate", c.growth_rate));
  ASSIGN_OR_RETURN(c.decouple, args.Bool("decouple", false));
  ASSIGN_OR_RETURN(c.use_bias_correction, args.Bool("use_bias_correction", false));
  ASSIGN_OR_RETURN(c.no_prox, args.Bool("no_prox", false));
  ASSIGN_OR_RETURN(int64_t log_every, args.Int("log_every", 0));
  (void)log_every;  // the reference's logging cadence; lorad logs d x lr every step
  ASSIGN_OR_RETURN(bool fsdp, args.Bool("fsdp_in_use", false));
  if (fsdp) return absl::InvalidArgumentError(n + " fsdp_in_use=True is not supported (single-process training)");
  RETURN_IF_ERROR(RequireRange(n, "eps", c.eps, 0, false, INFINITY, false));
  RETURN_IF_ERROR(RequireRange(n, "weight_decay", c.weight_decay, 0, true, INFINITY, false));
  RETURN_IF_ERROR(RequireRange(n, "momentum", c.momentum, 0, true, 1, false));
  RETURN_IF_ERROR(RequireRange(n, "d0", c.d0, 0, false, INFINITY, false));
  RETURN_IF_ERROR(RequireRange(n, "growth_rate", c.growth_rate, 0, false, INFINITY, true));
  // The reference's constructor needs lr > 0 (DAdaptLion: >= 0).
  double max_lr = 0;
  for (const ParamGroup& g : groups) max_lr = std::max(max_lr, g.lr);
  if (variant != Variant::kLion && max_lr <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(n, " needs a positive learning rate (1.0 is recommended), got ", max_lr));
  }
  // The reference rejects unequal non-zero group lrs at the first step (Adam,
  // AdamPreprint, Lion, SGD); fail before training starts instead.
  if (variant != Variant::kAdaGrad && variant != Variant::kAdan) {
    double lr = 0;
    for (const ParamGroup& g : groups) lr = std::max(lr, g.lr);
    for (const ParamGroup& g : groups) {
      if (g.lr != lr && g.lr != 0.0) {
        return absl::InvalidArgumentError(absl::StrCat(
            n, " needs the same learning rate in every parameter group (or 0): group '", g.name, "' has ", g.lr,
            ", another has ", lr, "; set unet_lr and text_encoder_lr equal (and no LoRA+ ratio)"));
      }
    }
  }
  return std::unique_ptr<Optimizer>(new DAdapt(std::move(groups), args.DescribeArgs(), c, std::move(class_path)));
}

}  // namespace

absl::StatusOr<std::unique_ptr<Optimizer>> MakeDAdaptAdam(const OptimizerArgs& a, std::vector<ParamGroup> g,
                                                          std::string p) {
  return MakeDAdapt(Variant::kAdam, a, std::move(g), std::move(p));
}
absl::StatusOr<std::unique_ptr<Optimizer>> MakeDAdaptAdamPreprint(const OptimizerArgs& a, std::vector<ParamGroup> g,
                                                                  std::string p) {
  return MakeDAdapt(Variant::kAdamPreprint, a, std::move(g), std::move(p));
}
absl::StatusOr<std::unique_ptr<Optimizer>> MakeDAdaptLion(const OptimizerArgs& a, std::vector<ParamGroup> g,
                                                          std::string p) {
  return MakeDAdapt(Variant::kLion, a, std::move(g), std::move(p));
}
absl::StatusOr<std::unique_ptr<Optimizer>> MakeDAdaptSgd(const OptimizerArgs& a, std::vector<ParamGroup> g,
                                                         std::string p) {
  return MakeDAdapt(Variant::kSgd, a, std::move(g), std::move(p));
}
absl::StatusOr<std::unique_ptr<Optimizer>> MakeDAdaptAdaGrad(const OptimizerArgs& a, std::vector<ParamGroup> g,
                                                             std::string p) {
  return MakeDAdapt(Variant::kAdaGrad, a, std::move(g), std::move(p));
}
absl::StatusOr<std::unique_ptr<Optimizer>> MakeDAdaptAdan(const OptimizerArgs& a, std::vector<ParamGroup> g,
                                                          std::string p) {
  return MakeDAdapt(Variant::kAdan, a, std::move(g), std::move(p));
}

}  // namespace lorad::optim
