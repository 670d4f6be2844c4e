#include "core/nn/layer.h"

#include <cmath>

namespace lorad::nn {
namespace {

thread_local bool no_init_active = false;

torch::TensorOptions Resolve(torch::TensorOptions o) {
  return o.has_dtype() ? o : o.dtype(torch::kFloat32);
}

}  // namespace

LayerOptions LinearOptions(int64_t in, int64_t out, bool bias, torch::TensorOptions tensor_options) {
  LayerOptions o;
  o.kind = LayerKind::kLinear;
  o.in = in;
  o.out = out;
  o.bias = bias;
  o.tensor_options = Resolve(tensor_options);
  return o;
}

LayerOptions Conv2dOptions(int64_t in, int64_t out, int64_t kernel, int64_t stride, int64_t padding, bool bias,
                           torch::TensorOptions tensor_options) {
  LayerOptions o;
  o.kind = LayerKind::kConv2d;
  o.in = in;
  o.out = out;
  o.kernel = kernel;
  o.stride = stride;
  o.padding = padding;
  o.bias = bias;
  o.tensor_options = Resolve(tensor_options);
  return o;
}

LayerImpl::LayerImpl(const LayerOptions& options) : options_(options) {
  const auto opts = Resolve(options_.tensor_options);
  std::vector<int64_t> shape = {options_.out, options_.in};
  if (options_.kind == LayerKind::kConv2d) shape = {options_.out, options_.in, options_.kernel, options_.kernel};
  weight_ = register_parameter("weight", torch::empty(shape, opts));
  if (options_.bias) bias_ = register_parameter("bias", torch::empty({options_.out}, opts));
  if (opts.device().type() != torch::kMeta && !NoInitGuard::active()) ResetParameters();
}

void LayerImpl::ResetParameters() {
  torch::NoGradGuard no_grad;
  const int64_t fan_in = options_.in * (options_.kind == LayerKind::kConv2d ? options_.kernel * options_.kernel : 1);
  const double bound = fan_in > 0 ? 1.0 / std::sqrt(static_cast<double>(fan_in)) : 0.0;
  // kaiming_uniform_(a=sqrt(5)) gives bound = sqrt(6 / ((1 + 5) * fan_in)) = 1/sqrt(fan_in).
  weight_.uniform_(-bound, bound);
  if (bias_.defined()) bias_.uniform_(-bound, bound);
}

torch::Tensor LayerImpl::forward(const torch::Tensor& x) {
  return adapter_ ? adapter_->Forward(x, *this) : BaseForward(x);
}

torch::Tensor LayerImpl::BaseForward(const torch::Tensor& x) const {
  return ForwardWithWeight(x, weight_, bias_);
}

torch::Tensor LayerImpl::ForwardWithWeight(const torch::Tensor& x, const torch::Tensor& weight,
                                           const torch::Tensor& bias) const {
  if (options_.kind == LayerKind::kLinear) return torch::nn::functional::linear(x, weight, bias);
  return torch::conv2d(x, weight, bias, {options_.stride, options_.stride}, {options_.padding, options_.padding});
}

NoInitGuard::NoInitGuard() : previous_(no_init_active) { no_init_active = true; }
NoInitGuard::~NoInitGuard() { no_init_active = previous_; }
bool NoInitGuard::active() { return no_init_active; }

std::vector<std::pair<std::string, std::shared_ptr<LayerImpl>>> FindLayers(torch::nn::Module& root) {
  std::vector<std::pair<std::string, std::shared_ptr<LayerImpl>>> found;
  for (const auto& item : root.named_modules("", /*include_self=*/false)) {
    if (auto layer = std::dynamic_pointer_cast<LayerImpl>(item.value())) found.emplace_back(item.key(), layer);
  }
  return found;
}

}  // namespace lorad::nn
