// Low-precision compute copies of a network's trainable weights, made once per
// training forward.
//
// Mixed precision keeps the LoRA weights in float32 and computes in bf16/fp16.
// Cast one weight at a time (as kohya's modules and the adapters without this
// do), every weight costs two kernels per step: the cast in the forward and the
// cast of its gradient back to float32 in the backward, about 2,900 small
// kernels for an SDXL LoRA with 722 modules. ComputeCopies makes all the
// casts of a step in one multi-tensor copy before the forward and casts all the
// gradients back in one after the backward (at::_foreach_copy_, which CUDA runs
// as a few multi-tensor kernels), through one autograd node. The values are
// the same bits: each copy is the weight cast to the compute dtype, and each
// float32 gradient the cast of its copy's gradient, exactly what the
// per-weight casts compute.
//
// Only weights that a forward uses once may be registered (LoRA / LoCon
// without DoRA): a weight used twice would have its two gradients summed in
// the compute dtype before the cast, which rounds differently.
#pragma once

#include <cstddef>
#include <memory>
#include <optional>
#include <unordered_map>
#include <vector>

#include <torch/torch.h>

namespace lorad::networks {

class ComputeCopies {
 public:
  // The copies live while a Scope does; an adapter outside one casts its own
  // weights (previews, evaluation, and the recomputation of a checkpointed
  // block in the backward, which runs after the scope of its forward).
  class Scope {
   public:
    Scope() = default;
    ~Scope();
    Scope(Scope&& other) noexcept;
    Scope& operator=(Scope&& other) noexcept;
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;
    // How many weights the scope's copies cover (0: no copies were made).
    size_t size() const;

   private:
    friend class ComputeCopies;
    explicit Scope(ComputeCopies* owner) : owner_(owner) {}
    ComputeCopies* owner_ = nullptr;
  };

  // Copies of those of `weights` that require grad and are not `dtype`
  // already, made now (one autograd node) and used until the Scope ends.
  // The weights must be on one device and share one dtype. Copies already
  // in use are replaced.
  Scope Make(const std::vector<torch::Tensor>& weights, torch::ScalarType dtype);

  // The weight as the compute of `input` reads it: its copy when a scope is
  // open, it has one and `input`'s compute dtype (autocast's for its device
  // when autocast is on there, else its own dtype) is the copies' dtype;
  // otherwise weight.to(input's dtype), the per-weight cast.
  torch::Tensor For(const torch::Tensor& weight, const torch::Tensor& input) const;

  // The dtype a forward on `input` computes linear layers and convolutions in.
  static torch::ScalarType ComputeDtype(const torch::Tensor& input);

 private:
  void Clear();

  torch::ScalarType dtype_ = torch::kFloat32;
  std::vector<torch::Tensor> copies_;
  std::unordered_map<const c10::TensorImpl*, size_t> index_;
};

}  // namespace lorad::networks
