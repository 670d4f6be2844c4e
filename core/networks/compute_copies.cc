#include "core/networks/compute_copies.h"

#include <ATen/autocast_mode.h>
#include <torch/csrc/autograd/custom_function.h>

#include "core/common/torch_compat.h"

// LibTorch 2.1 added at::_foreach_copy_, which casts between dtypes in its
// multi-tensor CUDA kernel; before it, one copy_ per tensor.
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 1)
#define LORAD_TORCH_FOREACH_COPY 1
#else
#define LORAD_TORCH_FOREACH_COPY 0
#endif

namespace lorad::networks {
namespace {

void CopyAll(const std::vector<torch::Tensor>& dst, const std::vector<torch::Tensor>& src) {
  if (dst.empty()) return;
#if LORAD_TORCH_FOREACH_COPY
  at::_foreach_copy_(dst, src);
#else
  for (size_t i = 0; i < dst.size(); ++i) dst[i].copy_(src[i]);
#endif
}

// weights -> copies in `dtype`; the backward casts each copy's gradient back
// to the weights' dtype, all in one multi-tensor copy. An unused copy gets no
// gradient (not a zero one): its weight's .grad stays as it was.
class CastAll : public torch::autograd::Function<CastAll> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, at::TensorList weights,
                                                torch::ScalarType dtype) {
    ctx->set_materialize_grads(false);
    ctx->saved_data["weight_dtype"] = weights.empty() ? torch::kFloat32 : weights.front().scalar_type();
    std::vector<torch::Tensor> src(weights.begin(), weights.end());
    std::vector<torch::Tensor> copies;
    copies.reserve(src.size());
    for (const torch::Tensor& w : src) copies.push_back(torch::empty_like(w, w.options().dtype(dtype)));
    CopyAll(copies, src);
    return copies;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const torch::ScalarType weight_dtype = ctx->saved_data["weight_dtype"].toScalarType();
    torch::autograd::variable_list out(grads.size() + 1);  // + the dtype argument
    std::vector<torch::Tensor> src, dst;
    src.reserve(grads.size());
    dst.reserve(grads.size());
    for (size_t i = 0; i < grads.size(); ++i) {
      if (!grads[i].defined()) continue;
      // empty_like keeps the gradient's strides, which the multi-tensor copy needs.
      out[i] = torch::empty_like(grads[i], grads[i].options().dtype(weight_dtype));
      src.push_back(grads[i]);
      dst.push_back(out[i]);
    }
    CopyAll(dst, src);
    return out;
  }
};

}  // namespace

ComputeCopies::Scope::~Scope() {
  if (owner_ != nullptr) owner_->Clear();
}

ComputeCopies::Scope::Scope(Scope&& other) noexcept : owner_(other.owner_) { other.owner_ = nullptr; }

ComputeCopies::Scope& ComputeCopies::Scope::operator=(Scope&& other) noexcept {
  if (this != &other) {
    if (owner_ != nullptr) owner_->Clear();
    owner_ = other.owner_;
    other.owner_ = nullptr;
  }
  return *this;
}

size_t ComputeCopies::Scope::size() const { return owner_ == nullptr ? 0 : owner_->copies_.size(); }

ComputeCopies::Scope ComputeCopies::Make(const std::vector<torch::Tensor>& weights, torch::ScalarType dtype) {
  Clear();
  std::vector<torch::Tensor> cast;
  cast.reserve(weights.size());
  for (const torch::Tensor& w : weights) {
    if (w.defined() && w.requires_grad() && w.scalar_type() != dtype) cast.push_back(w);
  }
  if (cast.empty()) return Scope(this);
  dtype_ = dtype;
  copies_ = CastAll::apply(at::TensorList(cast), dtype);
  index_.reserve(cast.size());
  for (size_t i = 0; i < cast.size(); ++i) index_.emplace(cast[i].unsafeGetTensorImpl(), i);
  return Scope(this);
}

torch::ScalarType ComputeCopies::ComputeDtype(const torch::Tensor& input) {
  const compat::AutocastState autocast = compat::CaptureAutocast();
  if (input.is_cuda() && autocast.gpu_enabled) return autocast.gpu_dtype;
  if (input.is_cpu() && autocast.cpu_enabled) return autocast.cpu_dtype;
  return input.scalar_type();
}

torch::Tensor ComputeCopies::For(const torch::Tensor& weight, const torch::Tensor& input) const {
  if (!index_.empty()) {
    auto it = index_.find(weight.unsafeGetTensorImpl());
    if (it != index_.end() && ComputeDtype(input) == dtype_) return copies_[it->second];
  }
  return weight.to(input.scalar_type());
}

void ComputeCopies::Clear() {
  copies_.clear();
  index_.clear();
}

}  // namespace lorad::networks
