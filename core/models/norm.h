// GroupNorm / LayerNorm built with explicit TensorOptions (torch::nn's versions
// always allocate on the CPU in float32, which rules out meta-device structure
// and direct-to-dtype loading). Parameters: weight, bias.
#pragma once

#include <cstdint>

#include <torch/torch.h>

namespace lorad::models {

class GroupNormImpl : public torch::nn::Module {
 public:
  GroupNormImpl(int64_t groups, int64_t channels, double eps, torch::TensorOptions options);
  torch::Tensor forward(const torch::Tensor& x);
  int64_t groups() const { return groups_; }

 private:
  int64_t groups_;
  double eps_;
  torch::Tensor weight_, bias_;
};
TORCH_MODULE(GroupNorm);

class LayerNormImpl : public torch::nn::Module {
 public:
  LayerNormImpl(int64_t dim, double eps, torch::TensorOptions options);
  torch::Tensor forward(const torch::Tensor& x);

 private:
  int64_t dim_;
  double eps_;
  torch::Tensor weight_, bias_;
};
TORCH_MODULE(LayerNorm);

// Parameter options with float32 as the default dtype.
torch::TensorOptions ParamOptions(torch::TensorOptions options);
// True when parameters must be initialised (not meta, not under nn::NoInitGuard).
bool ShouldInitialize(const torch::TensorOptions& options);

}  // namespace lorad::models
