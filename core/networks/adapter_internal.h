// Shared helpers of the adapter implementations (not part of the public API).
#pragma once

#include <optional>
#include <vector>

#include <torch/torch.h>

#include "core/networks/adapter.h"

namespace lorad::networks::internal {

// torch.nn.init.kaiming_uniform_(t, a=sqrt(5)) drawn from `gen` (fan_in = size(1) * receptive field).
// Both draw on `gen`'s device and copy into `t`, which may live elsewhere (a GPU).
void KaimingUniform(torch::Tensor& t, at::Generator gen);
// torch.nn.init.normal_(t, 0, std) drawn from `gen`.
void Normal(torch::Tensor& t, double std, at::Generator gen);

// Layer-shaped tensor reshaped to the layer weight's shape.
torch::Tensor ToWeightShape(const torch::Tensor& t, const std::vector<int64_t>& shape);

// einsum("i j k l, i p, j r -> p r k l", t, a, b): LyCORIS' rebuild_tucker.
torch::Tensor RebuildTucker(const torch::Tensor& t, const torch::Tensor& a, const torch::Tensor& b);

// LoHa and LoKr: adapters that rebuild their full delta weight and apply it as
// base(x) + x (*) (delta * multiplier), with LyCORIS' rebuild-mode dropouts.
class RebuiltDeltaAdapter : public Adapter {
 protected:
  using Adapter::Adapter;
  torch::Tensor ForwardDelta(const torch::Tensor& x, const nn::LayerImpl& layer, bool training) final;
  // Element dropout on the rebuilt delta, then rank dropout as whole output rows.
  torch::Tensor TrainingDeltaWeight(bool training) final;
};

// Each factory: validates the spec for the layer and builds the adapter.
absl::StatusOr<std::shared_ptr<Adapter>> MakeLoraAdapter(const nn::LayerImpl& layer, const AdapterSpec& spec,
                                                         at::Generator gen);
absl::StatusOr<std::shared_ptr<Adapter>> MakeLohaAdapter(const nn::LayerImpl& layer, const AdapterSpec& spec,
                                                         at::Generator gen);
absl::StatusOr<std::shared_ptr<Adapter>> MakeLokrAdapter(const nn::LayerImpl& layer, const AdapterSpec& spec,
                                                         at::Generator gen);

}  // namespace lorad::networks::internal
