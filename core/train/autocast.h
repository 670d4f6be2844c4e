// A scope that runs its body under autocast (CUDA fp16/bf16, CPU bf16), shared
// by the training step and the previews.
#pragma once

#include <torch/torch.h>

#include "core/common/torch_compat.h"

namespace lorad::train {

// Enables autocast for the scope when `enabled` and restores the previous state
// (and clears the autocast cache) on exit. Not thread-safe: autocast state is
// per thread.
class AutocastScope {
 public:
  AutocastScope(bool enabled, const torch::Device& device, torch::ScalarType dtype)
      : saved_(compat::CaptureAutocast()), enabled_(enabled) {
    if (!enabled_) return;
    compat::AutocastState s = saved_;
    if (device.is_cuda()) {
      s.gpu_enabled = true;
      s.gpu_dtype = dtype;
    } else {
      s.cpu_enabled = true;
      s.cpu_dtype = dtype;
    }
    compat::RestoreAutocast(s);
  }
  ~AutocastScope() {
    if (!enabled_) return;
    compat::RestoreAutocast(saved_);
    at::autocast::clear_cache();
  }
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  compat::AutocastState saved_;
  bool enabled_;
};

}  // namespace lorad::train
