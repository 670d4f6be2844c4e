// Gradient checkpointing as a custom autograd Function: the forward pass runs
// without storing activations; backward re-runs it (with the autocast and RNG
// state of the original call restored) and back-propagates through the
// recomputation. Parameters used by `fn` (including adapter parameters that are
// not inputs) receive their gradients during that inner backward.
#pragma once

#include <functional>
#include <vector>

#include <torch/torch.h>

namespace lorad::models {

using CheckpointFn = std::function<torch::Tensor(const std::vector<torch::Tensor>& inputs)>;

// fn(inputs) with activations recomputed in backward. Falls back to a plain
// call when grad mode is off. `inputs` may contain undefined tensors.
torch::Tensor CheckpointedCall(const CheckpointFn& fn, const std::vector<torch::Tensor>& inputs);

}  // namespace lorad::models
