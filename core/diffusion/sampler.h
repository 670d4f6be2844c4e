// Preview samplers: diffusers EulerDiscreteScheduler (schedulers/scheduling_euler_discrete.py)
// and DDIMScheduler (schedulers/scheduling_ddim.py, eta 0) with "leading" timestep
// spacing and steps_offset 1, epsilon or v prediction, driven by a denoiser
// callback so this module does not depend on the U-Net. Classifier-free guidance
// wraps a batched [uncond, cond] callback.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "absl/status/statusor.h"
#include "core/diffusion/loss.h"
#include "core/diffusion/noise_schedule.h"

namespace lorad::diffusion {

// The model: (model input x [B, C, H, W], integer timestep) -> eps or v [B, C, H, W].
using Denoiser = std::function<torch::Tensor(const torch::Tensor& x, int64_t timestep)>;

// Wraps a model that is evaluated on the doubled batch cat([x, x]) whose first
// half is conditioned on the negative prompt and second half on the prompt:
// out = u + scale * (c - u). scale == 1 still evaluates both halves.
Denoiser ClassifierFreeGuidance(Denoiser uncond_then_cond, double guidance_scale);

enum class SamplerKind { kEuler, kDdim };
// kohya sample_sampler names: "euler" / "k_euler" -> Euler, "ddim" -> DDIM; any other
// name is INVALID_ARGUMENT naming it and the supported ones.
absl::StatusOr<SamplerKind> ParseSamplerKind(const std::string& name);

// Leading spacing with steps_offset 1: t_i = (n-1-i) * (T / n) + 1 (int64 [n], descending).
torch::Tensor LeadingTimesteps(int64_t steps, int64_t num_train_timesteps = 1000);

// diffusers EulerDiscreteScheduler (no churn, linear interpolation, leading spacing).
class EulerSampler {
 public:
  EulerSampler(const NoiseSchedule& schedule, int64_t steps, PredictionType prediction);

  const torch::Tensor& timesteps() const { return timesteps_; }  // float32 [n]
  const torch::Tensor& sigmas() const { return sigmas_; }        // float32 [n+1], last 0
  double init_noise_sigma() const { return init_noise_sigma_; }  // sqrt(sigma_max^2 + 1)
  int64_t steps() const { return timesteps_.size(0); }

  // x / sqrt(sigma_i^2 + 1).
  torch::Tensor ScaleModelInput(const torch::Tensor& x, int64_t i) const;
  struct StepResult {
    torch::Tensor prev_sample;
    torch::Tensor pred_original_sample;
  };
  StepResult Step(const torch::Tensor& model_output, int64_t i, const torch::Tensor& x) const;

  // Full loop from unit noise: x = noise * init_noise_sigma, then every step.
  torch::Tensor Sample(const torch::Tensor& noise, const Denoiser& denoiser) const;

 private:
  PredictionType prediction_;
  torch::Tensor timesteps_, sigmas_;
  double init_noise_sigma_ = 1.0;
};

// diffusers DDIMScheduler, eta 0, set_alpha_to_one False, clip_sample False.
class DdimSampler {
 public:
  DdimSampler(const NoiseSchedule& schedule, int64_t steps, PredictionType prediction);

  const torch::Tensor& timesteps() const { return timesteps_; }  // int64 [n]
  int64_t steps() const { return timesteps_.size(0); }
  struct StepResult {
    torch::Tensor prev_sample;
    torch::Tensor pred_original_sample;
  };
  StepResult Step(const torch::Tensor& model_output, int64_t i, const torch::Tensor& x) const;
  // Full loop from unit noise (init_noise_sigma 1).
  torch::Tensor Sample(const torch::Tensor& noise, const Denoiser& denoiser) const;

 private:
  PredictionType prediction_;
  torch::Tensor alphas_cumprod_;
  torch::Tensor timesteps_;
  int64_t step_ratio_ = 1;
};

// Runs the chosen sampler from unit Gaussian `noise` (x_T before any scaling).
torch::Tensor SampleLatents(SamplerKind kind, const NoiseSchedule& schedule, int64_t steps,
                            PredictionType prediction, const torch::Tensor& noise, const Denoiser& denoiser);

}  // namespace lorad::diffusion
