// The fp16 dynamic loss scaler (torch.cuda.amp.GradScaler's algorithm): the loss
// is multiplied by `scale` before backward; before the optimizer step the
// gradients are divided by it and checked. A step whose gradients hold inf/NaN
// is skipped and the scale halves; after `growth_interval` clean steps it doubles.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "absl/status/status.h"

namespace lorad::train {

class DynamicLossScaler {
 public:
  explicit DynamicLossScaler(double init_scale = 65536.0, int64_t growth_interval = 2000,
                             double growth_factor = 2.0, double backoff_factor = 0.5);

  torch::Tensor Scale(const torch::Tensor& loss) const { return loss * scale_; }
  // Divides every defined gradient by the scale (in place); false when any
  // gradient holds inf or NaN (the step must then be skipped).
  bool UnscaleAndCheck(const std::vector<torch::Tensor>& params) const;
  // Halves the scale after an overflow, grows it after growth_interval clean steps.
  void Update(bool found_inf);

  double scale() const { return scale_; }
  int64_t growth_tracker() const { return growth_tracker_; }

  // Resumable state as text values.
  std::map<std::string, std::string> SaveState() const;
  absl::Status LoadState(const std::map<std::string, std::string>& values);

 private:
  double scale_;
  int64_t growth_interval_;
  double growth_factor_;
  double backoff_factor_;
  int64_t growth_tracker_ = 0;
};

}  // namespace lorad::train
