#include "core/train/loss_scaler.h"

#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace lorad::train {

DynamicLossScaler::DynamicLossScaler(double init_scale, int64_t growth_interval, double growth_factor,
                                     double backoff_factor)
    : scale_(init_scale),
      growth_interval_(growth_interval),
      growth_factor_(growth_factor),
      backoff_factor_(backoff_factor) {}

bool DynamicLossScaler::UnscaleAndCheck(const std::vector<torch::Tensor>& params) const {
  torch::NoGradGuard no_grad;
  const double inverse = 1.0 / scale_;
  bool finite = true;
  for (const torch::Tensor& p : params) {
    torch::Tensor g = p.grad();
    if (!g.defined()) continue;
    g.mul_(inverse);
    if (finite && !torch::isfinite(g).all().item<bool>()) finite = false;
  }
  return finite;
}

void DynamicLossScaler::Update(bool found_inf) {
  if (found_inf) {
    scale_ *= backoff_factor_;
    growth_tracker_ = 0;
    return;
  }
  if (++growth_tracker_ >= growth_interval_) {
    scale_ *= growth_factor_;
    growth_tracker_ = 0;
  }
}

std::map<std::string, std::string> DynamicLossScaler::SaveState() const {
  std::ostringstream scale;
  scale.precision(17);
  scale << scale_;
  return {{"loss_scale", scale.str()}, {"loss_scale_growth_tracker", std::to_string(growth_tracker_)}};
}

absl::Status DynamicLossScaler::LoadState(const std::map<std::string, std::string>& values) {
  auto s = values.find("loss_scale");
  auto g = values.find("loss_scale_growth_tracker");
  if (s == values.end() || g == values.end() || !absl::SimpleAtod(s->second, &scale_) ||
      !absl::SimpleAtoi(g->second, &growth_tracker_)) {
    return absl::InvalidArgumentError("training state: the fp16 loss scaler's values are missing or malformed");
  }
  return absl::OkStatus();
}

}  // namespace lorad::train
