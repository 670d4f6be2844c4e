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

// While one lives on a thread, the checkpointed calls started there keep no RNG
// state for their recomputation. CUDA graph capture needs this: reading a CUDA
// generator's state is not allowed while a stream is captured. Correct only for
// functions that draw no random numbers, as lorad's U-Net blocks (no dropout).
class RngFreeCheckpointScope {
 public:
  RngFreeCheckpointScope();
  ~RngFreeCheckpointScope();
  RngFreeCheckpointScope(const RngFreeCheckpointScope&) = delete;
  RngFreeCheckpointScope& operator=(const RngFreeCheckpointScope&) = delete;

 private:
  bool previous_;
};

}  // namespace lorad::models
