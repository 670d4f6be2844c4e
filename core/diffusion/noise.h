// kohya's noise pipeline (sd-scripts library/train_util.py:get_noise_noisy_latents_and_timesteps,
// library/custom_train_functions.py:apply_noise_offset, pyramid_noise_like):
// base noise, noise offset (+ random strength, adaptive scale), multi-resolution
// (pyramid) noise, timestep sampling in [min, max), input perturbation
// (ip_noise_gamma). Every draw goes through the given generator in kohya's call
// order, so a seeded CPU generator reproduces the reference's tensors.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>

#include <torch/torch.h>

#include "absl/status/status.h"
#include "core/diffusion/noise_schedule.h"

namespace lorad::diffusion {

// Python's random.random() as pyramid noise draws it: U[0, 1). kohya uses
// Python's own generator here; tests inject the recorded values.
using UniformSource = std::function<double()>;

// A UniformSource backed by a torch generator (torch.rand(1) in double).
UniformSource TorchUniformSource(at::Generator generator);

struct NoiseOptions {
  std::optional<double> noise_offset;          // --noise_offset
  bool noise_offset_random_strength = false;   // offset *= U(0,1)
  std::optional<double> adaptive_noise_scale;  // --adaptive_noise_scale
  int64_t multires_noise_iterations = 0;       // --multires_noise_iterations (0 = off)
  double multires_noise_discount = 0.3;        // --multires_noise_discount
  std::optional<int64_t> min_timestep;         // default 0
  std::optional<int64_t> max_timestep;         // default num_train_timesteps
  std::optional<double> ip_noise_gamma;        // --ip_noise_gamma
  bool ip_noise_gamma_random_strength = false;

  // INVALID_ARGUMENT naming the option when a value is out of range
  // (negative iterations, min > max, timesteps outside [0, T]).
  absl::Status Validate(int64_t num_train_timesteps) const;
};

struct NoisyBatch {
  torch::Tensor noise;          // the epsilon target (without the ip-noise perturbation)
  torch::Tensor noisy_latents;  // add_noise(latents, noise [+ gamma * xi], t)
  torch::Tensor timesteps;      // int64 [B]
};

// custom_train_functions.apply_noise_offset: one randn [B, C, 1, 1] draw.
// `offset` is a scalar tensor ([] or [1]) so a random strength can be passed.
torch::Tensor ApplyNoiseOffset(const torch::Tensor& latents, const torch::Tensor& noise, const torch::Tensor& offset,
                               std::optional<double> adaptive_noise_scale, at::Generator generator);

// custom_train_functions.pyramid_noise_like; returns noise / noise.std(). Adds
// the levels to `noise` in place, as the reference does.
torch::Tensor PyramidNoiseLike(torch::Tensor noise, int64_t iterations, double discount, at::Generator generator,
                               const UniformSource& uniform);

// timesteps ~ randint(min, max, [B]) or full(max) when min >= max (no draw).
torch::Tensor SampleTimesteps(int64_t batch, int64_t min_timestep, int64_t max_timestep, at::Generator generator,
                              torch::Device device);

// The whole of get_noise_noisy_latents_and_timesteps. Draws are made on the
// generator's device and moved to the latents' device.
NoisyBatch SampleNoisyLatents(const torch::Tensor& latents, const NoiseSchedule& schedule,
                              const NoiseOptions& options, at::Generator generator, const UniformSource& uniform);

}  // namespace lorad::diffusion
