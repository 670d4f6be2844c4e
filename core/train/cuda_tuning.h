// What only the CUDA path sets up: cuDNN autotuning (it benchmarks the
// convolution algorithms once per input shape, so once per bucket resolution
// and batch size, and caches the winner) and channels_last (NHWC) storage for
// the U-Net's convolution weights and inputs, the layout the tensor-core
// kernels read without transposes. Every function leaves non-CUDA devices
// untouched, so CPU results do not change.
#pragma once

#include <torch/torch.h>

namespace lorad::train {

// On CUDA: turns on cudnn.benchmark and stores every 4-D parameter and buffer
// of `module` channels_last. Does nothing on other devices.
void TuneForCuda(torch::nn::Module& module, const torch::Device& device);

// `x` (4-D, on CUDA) in channels_last memory format; `x` itself otherwise.
torch::Tensor ChannelsLastOnCuda(const torch::Tensor& x);

}  // namespace lorad::train
