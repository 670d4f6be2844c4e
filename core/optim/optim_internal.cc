#include "core/optim/optim_internal.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "core/base/status_macros.h"
#include "core/common/torch_compat.h"

namespace lorad::optim {

absl::StatusOr<std::optional<WorkTensor>> PrepareParam(const torch::Tensor& param, std::string_view optimizer) {
  const torch::Tensor& grad = param.grad();
  if (!grad.defined()) return std::optional<WorkTensor>();
  if (!param.is_floating_point()) {
    return absl::InvalidArgumentError(absl::StrCat(std::string(optimizer), " can only optimize floating-point parameters, got ",
                                                   c10::toString(param.scalar_type())));
  }
  if (grad.sizes() != param.sizes()) {
    return absl::InvalidArgumentError(absl::StrCat(std::string(optimizer), ": gradient shape ", c10::str(grad.sizes()),
                                                   " differs from parameter shape ", c10::str(param.sizes())));
  }
  WorkTensor w;
  w.original = param.detach();
  auto type = param.scalar_type();
  if (type == torch::kFloat || type == torch::kDouble) {
    w.param = w.original;
    w.grad = grad.detach().to(type);
  } else {
    w.param = w.original.to(torch::kFloat);
    w.grad = grad.detach().to(torch::kFloat);
  }
  return std::optional<WorkTensor>(std::move(w));
}

torch::Tensor Rms(const torch::Tensor& x) { return x.norm(2) / std::sqrt(static_cast<double>(x.numel())); }

torch::Tensor ApproxSqGrad(const torch::Tensor& row, const torch::Tensor& col) {
  torch::Tensor r_factor = (row / row.mean(-1, /*keepdim=*/true)).rsqrt_().unsqueeze(-1);
  torch::Tensor c_factor = col.unsqueeze(-2).rsqrt();
  return torch::mul(r_factor, c_factor);
}

void CopyStochasticBf16(const torch::Tensor& target, const torch::Tensor& source) {
  torch::Tensor bits = source.to(torch::kFloat).contiguous().view(torch::kInt);
  torch::Tensor r = torch::randint_like(bits, 0, int64_t{1} << 16);
  r.add_(bits).bitwise_and_(-65536);  // keep the upper 16 bits
  target.copy_(r.view(torch::kFloat));
}

absl::Status TorchError(std::string_view optimizer, const c10::Error& e) {
  return absl::InternalError(absl::StrCat(std::string(optimizer), " step failed: ", e.what_without_backtrace()));
}

std::optional<FusedGroup> PerParameterOptimizer::CollectFused(int g) {
  if (!compat::kTorch2 || !fused_kernels()) return std::nullopt;
  FusedGroup f;
  for (size_t i = 0; i < groups_[g].params.size(); ++i) {
    const torch::Tensor& p = groups_[g].params[i];
    const torch::Tensor& grad = p.grad();
    if (!grad.defined()) continue;
    if (!p.is_cuda() || p.scalar_type() != torch::kFloat || !grad.is_cuda() || grad.scalar_type() != torch::kFloat ||
        grad.is_sparse() || grad.sizes() != p.sizes() || grad.device() != p.device()) {
      return std::nullopt;
    }
    f.params.push_back(p.detach());
    f.grads.push_back(grad.detach());
    f.states.push_back(&state(g, static_cast<int>(i)));
    f.indices.push_back(static_cast<int>(i));
  }
  if (f.params.empty()) return std::nullopt;
  return f;
}

void PerParameterOptimizer::StepParamGraphSafe(const torch::Tensor& lr, WorkTensor& w, ParamState& s) {
  (void)lr;
  (void)w;
  (void)s;
  // EnableGraphSafeStep refuses optimizers without this override.
  TORCH_CHECK(false, std::string(name()), " has no graph-safe step");
}

absl::Status PerParameterOptimizer::Step() {
  torch::NoGradGuard no_grad;
  std::vector<std::pair<int, int>> updated;
  try {
    for (int g = 0; g < num_groups(); ++g) {
      if (std::optional<FusedGroup> fused = CollectFused(g); fused) {
        bool done = false;
        if (!graph_safe_) {
          done = StepFused(lrs_[g], *fused);
        } else if (LORAD_TORCH_TENSOR_SCALAR_KERNELS) {
          done = StepFusedGraphSafe(lr_tensors_[g], *fused);
        }
        if (done) {
          for (int i : fused->indices) updated.emplace_back(g, i);
          continue;
        }
      }
      for (size_t i = 0; i < groups_[g].params.size(); ++i) {
        ASSIGN_OR_RETURN(std::optional<WorkTensor> w, PrepareParam(groups_[g].params[i], name()));
        if (!w) continue;
        updated.emplace_back(g, static_cast<int>(i));
        if (graph_safe_) {
          StepParamGraphSafe(lr_tensors_[g], *w, state(g, static_cast<int>(i)));
        } else {
          StepParam(lrs_[g], *w, state(g, static_cast<int>(i)));
        }
        w->Commit();
      }
    }
  } catch (const c10::Error& e) {
    return TorchError(name(), e);
  }
  if (!updated.empty()) ++step_count_;
  if (graph_safe_) last_updated_ = std::move(updated);
  return absl::OkStatus();
}

}  // namespace lorad::optim
