#include "core/models/norm.h"

#include "core/nn/layer.h"

namespace lorad::models {

torch::TensorOptions ParamOptions(torch::TensorOptions options) {
  return options.has_dtype() ? options : options.dtype(torch::kFloat32);
}

bool ShouldInitialize(const torch::TensorOptions& options) {
  return options.device().type() != torch::kMeta && !nn::NoInitGuard::active();
}

GroupNormImpl::GroupNormImpl(int64_t groups, int64_t channels, double eps, torch::TensorOptions options)
    : groups_(groups), eps_(eps) {
  const auto opts = ParamOptions(options);
  weight_ = register_parameter("weight", torch::empty({channels}, opts));
  bias_ = register_parameter("bias", torch::empty({channels}, opts));
  if (ShouldInitialize(opts)) {
    torch::NoGradGuard no_grad;
    weight_.fill_(1.0);
    bias_.zero_();
  }
}

torch::Tensor GroupNormImpl::forward(const torch::Tensor& x) {
  return torch::group_norm(x, groups_, weight_, bias_, eps_);
}

LayerNormImpl::LayerNormImpl(int64_t dim, double eps, torch::TensorOptions options) : dim_(dim), eps_(eps) {
  const auto opts = ParamOptions(options);
  weight_ = register_parameter("weight", torch::empty({dim}, opts));
  bias_ = register_parameter("bias", torch::empty({dim}, opts));
  if (ShouldInitialize(opts)) {
    torch::NoGradGuard no_grad;
    weight_.fill_(1.0);
    bias_.zero_();
  }
}

torch::Tensor LayerNormImpl::forward(const torch::Tensor& x) {
  return torch::layer_norm(x, {dim_}, weight_, bias_, eps_);
}

}  // namespace lorad::models
