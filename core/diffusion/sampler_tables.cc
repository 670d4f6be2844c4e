// The timestep and sigma constructions the diffusers schedulers share
// (schedulers/scheduling_*.py: set_timesteps, _sigma_to_t).
#include <algorithm>
#include <cmath>

#include "core/diffusion/sampler_internal.h"

namespace lorad::diffusion::sampler_internal {

double RoundHalfEven(double x) {
  const double r = std::round(x);  // halves away from zero
  if (std::abs(x - std::trunc(x)) == 0.5) return 2.0 * std::round(x / 2.0);
  return r;
}

std::vector<double> SpacedTimesteps(TimestepSpacing spacing, int64_t steps, int64_t num_train_timesteps,
                                    int64_t steps_offset) {
  std::vector<double> t(static_cast<size_t>(steps));
  if (spacing == TimestepSpacing::kLinspace) {
    // np.linspace(0, T - 1, n): start + i * step, the last value exactly T - 1.
    const double stop = static_cast<double>(num_train_timesteps - 1);
    const double step = steps > 1 ? stop / static_cast<double>(steps - 1) : 0.0;
    for (int64_t i = 0; i < steps; ++i) {
      t[static_cast<size_t>(steps - 1 - i)] = (i == steps - 1 && steps > 1) ? stop : static_cast<double>(i) * step;
    }
  } else {
    const int64_t ratio = num_train_timesteps / steps;
    for (int64_t i = 0; i < steps; ++i) {
      t[static_cast<size_t>(steps - 1 - i)] = static_cast<double>(i * ratio + steps_offset);
    }
  }
  return t;
}

std::vector<float> TrainSigmas(const NoiseSchedule& schedule) {
  const auto& acp = schedule.alphas_cumprod();
  return ToVector(((1 - acp) / acp).pow(0.5));
}

double InterpolateSigma(const std::vector<float>& table, double t) {
  const double last = static_cast<double>(table.size() - 1);
  if (t <= 0) return table.front();
  if (t >= last) return table.back();
  const size_t j = static_cast<size_t>(std::floor(t));
  const double slope = static_cast<double>(table[j + 1]) - static_cast<double>(table[j]);
  return slope * (t - static_cast<double>(j)) + static_cast<double>(table[j]);
}

float SigmaToTimestep(float sigma, const std::vector<float>& log_sigmas) {
  const float log_sigma = std::log(std::max(sigma, 1e-10f));
  // The last index whose log sigma is <= log_sigma (0 when none is), at most T - 2.
  int64_t low = 0;
  for (int64_t i = 0; i < static_cast<int64_t>(log_sigmas.size()); ++i) {
    if (log_sigma - log_sigmas[static_cast<size_t>(i)] >= 0) low = i;
  }
  low = std::min<int64_t>(low, static_cast<int64_t>(log_sigmas.size()) - 2);
  const int64_t high = low + 1;
  const float lo = log_sigmas[static_cast<size_t>(low)];
  const float hi = log_sigmas[static_cast<size_t>(high)];
  float w = (lo - log_sigma) / (lo - hi);
  w = std::clamp(w, 0.0f, 1.0f);
  return (1 - w) * static_cast<float>(low) + w * static_cast<float>(high);
}

float InputScale(float sigma) { return std::sqrt(sigma * sigma + 1.0f); }

torch::Tensor SigmaPredictedX0(PredictionType prediction, const torch::Tensor& model_output, const torch::Tensor& x,
                               float sigma) {
  if (prediction == PredictionType::kVPrediction) {
    return model_output * static_cast<double>(-sigma / InputScale(sigma)) +
           x / static_cast<double>(sigma * sigma + 1.0f);
  }
  return x - static_cast<double>(sigma) * model_output;
}

torch::Tensor ToTensor(const std::vector<float>& values) {
  return torch::tensor(values, torch::kFloat32);
}

std::vector<float> ToVector(const torch::Tensor& t) {
  auto c = t.to(torch::kCPU, torch::kFloat32).contiguous();
  return std::vector<float>(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
}

}  // namespace lorad::diffusion::sampler_internal
