#include "core/train/cuda_tuning.h"

#include <ATen/Context.h>

namespace lorad::train {

void TuneForCuda(torch::nn::Module& module, const torch::Device& device) {
  if (!device.is_cuda()) return;
  at::globalContext().setBenchmarkCuDNN(true);
  torch::NoGradGuard no_grad;
  for (torch::Tensor& p : module.parameters()) {
    if (p.dim() == 4 && p.is_cuda()) p.set_data(p.data().contiguous(torch::MemoryFormat::ChannelsLast));
  }
  for (torch::Tensor& b : module.buffers()) {
    if (b.dim() == 4 && b.is_cuda()) b.set_data(b.data().contiguous(torch::MemoryFormat::ChannelsLast));
  }
}

torch::Tensor ChannelsLastOnCuda(const torch::Tensor& x) {
  if (!x.defined() || !x.is_cuda() || x.dim() != 4) return x;
  return x.contiguous(torch::MemoryFormat::ChannelsLast);
}

}  // namespace lorad::train
