#include "core/optim/optimizer.h"

#include <cmath>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace lorad::optim {
namespace {

std::string StateKey(int group, int param, const std::string& name) {
  return absl::StrCat(group, "/", param, "/", name);
}

std::string FormatDouble(double v) {
  if (std::isinf(v)) return v > 0 ? "\"inf\"" : "\"-inf\"";
  if (std::isnan(v)) return "\"nan\"";
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.17g", v);  // round-trips exactly
  return buf;
}

}  // namespace

Optimizer::Optimizer(std::vector<ParamGroup> groups, std::vector<std::string> describe_args)
    : groups_(std::move(groups)), describe_args_(std::move(describe_args)) {
  for (const ParamGroup& g : groups_) {
    lrs_.push_back(g.lr);
    states_.emplace_back(g.params.size());
  }
  initial_lr_ = groups_.empty() ? 0.0 : groups_.front().lr;
}

void Optimizer::ZeroGrad() {
  for (ParamGroup& g : groups_) {
    for (torch::Tensor& p : g.params) {
      if (p.grad().defined()) p.mutable_grad() = torch::Tensor();
    }
  }
}

std::vector<torch::Tensor> Optimizer::AllParams() const {
  std::vector<torch::Tensor> out;
  for (const ParamGroup& g : groups_) out.insert(out.end(), g.params.begin(), g.params.end());
  return out;
}

absl::Status Optimizer::SetLr(int group, double lr) {
  if (group < 0 || group >= num_groups()) {
    return absl::OutOfRangeError(absl::StrCat("no parameter group ", group, " (have ", num_groups(), ")"));
  }
  if (!std::isfinite(lr) || lr < 0) {
    return absl::InvalidArgumentError(absl::StrCat("learning rate ", lr, " for group '", groups_[group].name,
                                                   "' must be finite and >= 0"));
  }
  lrs_[group] = lr;
  return absl::OkStatus();
}

std::string Optimizer::Describe() const {
  std::string out(class_path());
  if (!describe_args_.empty()) absl::StrAppend(&out, "(", absl::StrJoin(describe_args_, ","), ")");
  return out;
}

int64_t Optimizer::StateBytes() const {
  int64_t bytes = 0;
  for (const auto& group : states_) {
    for (const ParamState& s : group) {
      for (const auto& [name, t] : s.tensors) {
        if (t.defined()) bytes += t.numel() * static_cast<int64_t>(t.element_size());
      }
    }
  }
  return bytes;
}

absl::StatusOr<OptimizerState> Optimizer::SaveState() const {
  OptimizerState out;
  try {
    for (int g = 0; g < num_groups(); ++g) {
      out.values[absl::StrCat("lr/", g)] = FormatDouble(lrs_[g]);
      for (int p = 0; p < static_cast<int>(states_[g].size()); ++p) {
        const ParamState& s = states_[g][p];
        if (s.step == 0 && s.tensors.empty()) continue;
        out.values[StateKey(g, p, "step")] = absl::StrCat(s.step);
        for (const auto& [name, t] : s.tensors) {
          out.tensors.emplace_back(StateKey(g, p, name), t.detach().to(torch::kCPU).clone().contiguous());
        }
      }
    }
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("saving ", std::string(name()), " state: ", e.what_without_backtrace()));
  }
  out.values["optimizer"] = std::string(name());
  out.values["step_count"] = absl::StrCat(step_count_);
  out.values["num_groups"] = absl::StrCat(num_groups());
  SaveExtraValues(&out.values);
  return out;
}

absl::Status Optimizer::LoadState(const OptimizerState& state) {
  auto value = [&](const std::string& key) -> absl::StatusOr<std::string> {
    auto it = state.values.find(key);
    if (it == state.values.end()) {
      return absl::InvalidArgumentError(absl::StrCat("optimizer state lacks '", key, "'"));
    }
    return it->second;
  };
  auto number = [&](const std::string& key) -> absl::StatusOr<double> {
    auto v = value(key);
    if (!v.ok()) return v.status();
    double d;
    if (*v == "\"inf\"") return INFINITY;
    if (!absl::SimpleAtod(*v, &d)) {
      return absl::InvalidArgumentError(absl::StrCat("optimizer state '", key, "'='", *v, "' is not a number"));
    }
    return d;
  };
  auto type = value("optimizer");
  if (!type.ok()) return type.status();
  if (*type != name()) {
    return absl::InvalidArgumentError(absl::StrCat("optimizer state was saved by ", *type, ", cannot load into ",
                                                   std::string(name()), ": resume with the same optimizer_type"));
  }
  auto groups = number("num_groups");
  if (!groups.ok()) return groups.status();
  if (static_cast<int>(*groups) != num_groups()) {
    return absl::InvalidArgumentError(absl::StrCat("optimizer state has ", *groups, " parameter groups, this run has ",
                                                   num_groups()));
  }
  std::vector<std::vector<ParamState>> loaded;
  std::vector<double> lrs;
  for (int g = 0; g < num_groups(); ++g) {
    loaded.emplace_back(groups_[g].params.size());
    auto lr = number(absl::StrCat("lr/", g));
    if (!lr.ok()) return lr.status();
    lrs.push_back(*lr);
  }
  try {
    for (const auto& [key, tensor] : state.tensors) {
      std::vector<std::string> parts = absl::StrSplit(key, absl::MaxSplits('/', 2));
      int g = -1, p = -1;
      if (parts.size() != 3 || !absl::SimpleAtoi(parts[0], &g) || !absl::SimpleAtoi(parts[1], &p) || g < 0 ||
          g >= num_groups() || p < 0 || p >= static_cast<int>(groups_[g].params.size())) {
        return absl::InvalidArgumentError(absl::StrCat("optimizer state tensor '", key,
                                                       "' does not name a parameter of this run"));
      }
      const torch::Tensor& param = groups_[g].params[p];
      loaded[g][p].tensors[parts[2]] = tensor.detach().to(param.device()).clone();
    }
    for (int g = 0; g < num_groups(); ++g) {
      for (int p = 0; p < static_cast<int>(loaded[g].size()); ++p) {
        std::string step_key = StateKey(g, p, "step");
        if (!state.values.count(step_key)) {
          if (!loaded[g][p].tensors.empty()) {
            return absl::InvalidArgumentError(absl::StrCat("optimizer state lacks '", step_key, "'"));
          }
          continue;
        }
        auto step = number(step_key);
        if (!step.ok()) return step.status();
        loaded[g][p].step = static_cast<int64_t>(*step);
        const torch::Tensor& param = groups_[g].params[p];
        for (const char* full : {"exp_avg", "exp_avg_sq", "max_exp_avg_sq"}) {
          auto it = loaded[g][p].tensors.find(full);
          if (it != loaded[g][p].tensors.end() && it->second.dim() > 0 && it->second.sizes() != param.sizes()) {
            return absl::InvalidArgumentError(absl::StrCat("optimizer state '", StateKey(g, p, full), "' has shape ",
                                                           c10::str(it->second.sizes()), ", parameter has ",
                                                           c10::str(param.sizes())));
          }
        }
      }
    }
  } catch (const c10::Error& e) {
    return absl::InvalidArgumentError(absl::StrCat("loading optimizer state: ", e.what_without_backtrace()));
  }
  auto steps = number("step_count");
  if (!steps.ok()) return steps.status();
  absl::Status extra = LoadExtraValues(state.values);
  if (!extra.ok()) return extra;
  states_ = std::move(loaded);
  lrs_ = std::move(lrs);
  step_count_ = static_cast<int64_t>(*steps);
  return absl::OkStatus();
}

absl::StatusOr<double> ClipGradNorm(const std::vector<torch::Tensor>& params, double max_norm) {
  if (!std::isfinite(max_norm) || max_norm < 0) {
    return absl::InvalidArgumentError(absl::StrCat("max_grad_norm ", max_norm, " must be finite and >= 0 (0 disables)"));
  }
  try {
    torch::NoGradGuard no_grad;
    std::vector<torch::Tensor> grads;
    for (const torch::Tensor& p : params) {
      if (p.grad().defined()) grads.push_back(p.grad());
    }
    if (grads.empty()) return 0.0;
    // As torch.nn.utils.clip_grad_norm_: per-tensor L2 norms, then the norm of the norms.
    std::vector<torch::Tensor> norms;
    norms.reserve(grads.size());
    for (const torch::Tensor& g : grads) norms.push_back(torch::linalg_vector_norm(g, 2, c10::nullopt, false, c10::nullopt));
    torch::Tensor total = torch::linalg_vector_norm(torch::stack(norms), 2, c10::nullopt, false, c10::nullopt);
    if (max_norm > 0) {
      torch::Tensor coef = torch::clamp_max(max_norm / (total + 1e-6), 1.0);
      for (torch::Tensor& g : grads) g.mul_(coef.to(g.device(), g.scalar_type()));
    }
    return total.item<double>();
  } catch (const c10::Error& e) {
    return absl::InvalidArgumentError(absl::StrCat("clip_grad_norm: ", e.what_without_backtrace()));
  }
}

}  // namespace lorad::optim
