#include "core/diffusion/sampler.h"

#include <cmath>

#include "absl/strings/str_cat.h"

namespace lorad::diffusion {

Denoiser ClassifierFreeGuidance(Denoiser uncond_then_cond, double guidance_scale) {
  return [model = std::move(uncond_then_cond), guidance_scale](const torch::Tensor& x, int64_t t) {
    auto out = model(torch::cat({x, x}), t);
    auto halves = out.chunk(2, 0);
    return halves[0] + guidance_scale * (halves[1] - halves[0]);
  };
}

absl::StatusOr<SamplerKind> ParseSamplerKind(const std::string& name) {
  if (name == "euler" || name == "k_euler") return SamplerKind::kEuler;
  if (name == "ddim") return SamplerKind::kDdim;
  return absl::InvalidArgumentError(
      absl::StrCat("sample_sampler '", name, "' is not supported; use one of euler, k_euler, ddim"));
}

torch::Tensor LeadingTimesteps(int64_t steps, int64_t num_train_timesteps) {
  const int64_t ratio = num_train_timesteps / steps;
  // diffusers: (arange(0, n) * ratio).round()[::-1] + steps_offset
  return torch::arange(steps - 1, -1, -1, torch::kLong) * ratio + 1;
}

EulerSampler::EulerSampler(const NoiseSchedule& schedule, int64_t steps, PredictionType prediction)
    : prediction_(prediction) {
  auto t = LeadingTimesteps(steps, schedule.num_train_timesteps());
  const auto& acp = schedule.alphas_cumprod();
  auto all_sigmas = ((1 - acp) / acp).pow(0.5);
  // Integer timesteps: linear interpolation picks the table values exactly.
  sigmas_ = torch::cat({all_sigmas.index_select(0, t), torch::zeros({1}, torch::kFloat32)});
  timesteps_ = t.to(torch::kFloat32);
  auto sigma_max = sigmas_.max();
  init_noise_sigma_ = (sigma_max.pow(2) + 1).pow(0.5).item<double>();
}

torch::Tensor EulerSampler::ScaleModelInput(const torch::Tensor& x, int64_t i) const {
  const auto sigma = sigmas_[i].to(x.device(), x.scalar_type());
  return x / (sigma.pow(2) + 1).pow(0.5);
}

EulerSampler::StepResult EulerSampler::Step(const torch::Tensor& model_output, int64_t i,
                                            const torch::Tensor& x) const {
  auto sample = x.to(torch::kFloat32);
  auto out = model_output.to(torch::kFloat32);
  const auto sigma = sigmas_[i].to(x.device());
  const auto sigma_next = sigmas_[i + 1].to(x.device());
  torch::Tensor pred;
  if (prediction_ == PredictionType::kVPrediction) {
    pred = out * (-sigma / (sigma.pow(2) + 1).pow(0.5)) + sample / (sigma.pow(2) + 1);
  } else {
    pred = sample - sigma * out;
  }
  auto derivative = (sample - pred) / sigma;
  auto dt = sigma_next - sigma;
  return {(sample + derivative * dt).to(x.scalar_type()), pred};
}

torch::Tensor EulerSampler::Sample(const torch::Tensor& noise, const Denoiser& denoiser) const {
  auto x = noise * init_noise_sigma_;
  for (int64_t i = 0; i < steps(); ++i) {
    const int64_t t = static_cast<int64_t>(timesteps_[i].item<float>());
    auto model_output = denoiser(ScaleModelInput(x, i), t);
    x = Step(model_output, i, x).prev_sample;
  }
  return x;
}

DdimSampler::DdimSampler(const NoiseSchedule& schedule, int64_t steps, PredictionType prediction)
    : prediction_(prediction),
      alphas_cumprod_(schedule.alphas_cumprod()),
      timesteps_(LeadingTimesteps(steps, schedule.num_train_timesteps())),
      step_ratio_(schedule.num_train_timesteps() / steps) {}

DdimSampler::StepResult DdimSampler::Step(const torch::Tensor& model_output, int64_t i,
                                          const torch::Tensor& x) const {
  const int64_t t = timesteps_[i].item<int64_t>();
  const int64_t prev_t = t - step_ratio_;
  auto alpha_t = alphas_cumprod_[t].to(x.device());
  // set_alpha_to_one=False: the final step uses alphas_cumprod[0].
  auto alpha_prev = (prev_t >= 0 ? alphas_cumprod_[prev_t] : alphas_cumprod_[0]).to(x.device());
  auto beta_t = 1 - alpha_t;
  torch::Tensor pred_x0, pred_eps;
  if (prediction_ == PredictionType::kVPrediction) {
    pred_x0 = alpha_t.pow(0.5) * x - beta_t.pow(0.5) * model_output;
    pred_eps = alpha_t.pow(0.5) * model_output + beta_t.pow(0.5) * x;
  } else {
    pred_x0 = (x - beta_t.pow(0.5) * model_output) / alpha_t.pow(0.5);
    pred_eps = model_output;
  }
  auto direction = (1 - alpha_prev).pow(0.5) * pred_eps;
  return {alpha_prev.pow(0.5) * pred_x0 + direction, pred_x0};
}

torch::Tensor DdimSampler::Sample(const torch::Tensor& noise, const Denoiser& denoiser) const {
  auto x = noise;
  for (int64_t i = 0; i < steps(); ++i) {
    auto model_output = denoiser(x, timesteps_[i].item<int64_t>());
    x = Step(model_output, i, x).prev_sample;
  }
  return x;
}

torch::Tensor SampleLatents(SamplerKind kind, const NoiseSchedule& schedule, int64_t steps,
                            PredictionType prediction, const torch::Tensor& noise, const Denoiser& denoiser) {
  if (kind == SamplerKind::kDdim) return DdimSampler(schedule, steps, prediction).Sample(noise, denoiser);
  return EulerSampler(schedule, steps, prediction).Sample(noise, denoiser);
}

}  // namespace lorad::diffusion
