#include "core/diffusion/noise.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"

namespace lorad::diffusion {
namespace {

torch::TensorOptions DrawOptions(const at::Generator& generator) {
  return torch::TensorOptions().dtype(torch::kFloat32).device(generator.device());
}

// A host draw moved to `device` without making the host wait: a CUDA copy
// from pageable memory blocks until the GPU has drained its queue, a copy from
// pinned memory is queued like a kernel.
torch::Tensor ToDevice(const torch::Tensor& t, const torch::Device& device) {
  if (!device.is_cuda() || t.device() == device) return t.to(device);
  return t.pin_memory().to(device, /*non_blocking=*/true);
}

}  // namespace

UniformSource TorchUniformSource(at::Generator generator) {
  return [generator]() mutable {
    return torch::rand({1}, generator, torch::TensorOptions().dtype(torch::kFloat64)).item<double>();
  };
}

absl::Status NoiseOptions::Validate(int64_t num_train_timesteps) const {
  if (multires_noise_iterations < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("multires_noise_iterations must be >= 0, got ", multires_noise_iterations));
  }
  const int64_t lo = min_timestep.value_or(0);
  const int64_t hi = max_timestep.value_or(num_train_timesteps);
  if (lo < 0 || lo > num_train_timesteps) {
    return absl::InvalidArgumentError(
        absl::StrCat("min_timestep must be in [0, ", num_train_timesteps, "], got ", lo));
  }
  if (hi < 0 || hi > num_train_timesteps) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_timestep must be in [0, ", num_train_timesteps, "], got ", hi));
  }
  if (lo > hi) {
    return absl::InvalidArgumentError(
        absl::StrCat("min_timestep (", lo, ") must not exceed max_timestep (", hi, ")"));
  }
  if (noise_offset && (*noise_offset < 0 || !std::isfinite(*noise_offset))) {
    return absl::InvalidArgumentError(absl::StrCat("noise_offset must be a finite value >= 0, got ", *noise_offset));
  }
  if (ip_noise_gamma && (*ip_noise_gamma < 0 || !std::isfinite(*ip_noise_gamma))) {
    return absl::InvalidArgumentError(
        absl::StrCat("ip_noise_gamma must be a finite value >= 0, got ", *ip_noise_gamma));
  }
  return absl::OkStatus();
}

torch::Tensor ApplyNoiseOffset(const torch::Tensor& latents, const torch::Tensor& noise, const torch::Tensor& offset,
                               std::optional<double> adaptive_noise_scale, at::Generator generator) {
  auto strength = ToDevice(offset.to(torch::kFloat32), latents.device());
  if (adaptive_noise_scale) {
    auto latent_mean = latents.mean({2, 3}, /*keepdim=*/true).abs();
    strength = torch::clamp_min(strength + *adaptive_noise_scale * latent_mean, 0.0);
  }
  auto draw = torch::randn({latents.size(0), latents.size(1), 1, 1}, generator, DrawOptions(generator));
  return noise + strength * ToDevice(draw, latents.device());
}

torch::Tensor PyramidNoiseLike(torch::Tensor noise, int64_t iterations, double discount, at::Generator generator,
                               const UniformSource& uniform) {
  const int64_t b = noise.size(0), c = noise.size(1), w = noise.size(2), h = noise.size(3);
  namespace F = torch::nn::functional;
  for (int64_t i = 0; i < iterations; ++i) {
    const double r = uniform() * 2 + 2;
    const double div = std::pow(r, static_cast<double>(i));
    const int64_t wn = std::max<int64_t>(1, static_cast<int64_t>(static_cast<double>(w) / div));
    const int64_t hn = std::max<int64_t>(1, static_cast<int64_t>(static_cast<double>(h) / div));
    auto level = ToDevice(torch::randn({b, c, wn, hn}, generator, DrawOptions(generator)), noise.device());
    auto up = F::interpolate(level, F::InterpolateFuncOptions()
                                        .size(std::vector<int64_t>{w, h})
                                        .mode(torch::kBilinear)
                                        .align_corners(false));
    noise.add_(up * std::pow(discount, static_cast<double>(i)));
    if (wn == 1 || hn == 1) break;
  }
  return noise / noise.std();
}

torch::Tensor SampleTimesteps(int64_t batch, int64_t min_timestep, int64_t max_timestep, at::Generator generator,
                              torch::Device device) {
  const auto opts = torch::TensorOptions().dtype(torch::kLong).device(generator.device());
  if (min_timestep < max_timestep) {
    return ToDevice(torch::randint(min_timestep, max_timestep, {batch}, generator, opts), device);
  }
  return torch::full({batch}, max_timestep, opts.device(device));
}

NoisyBatch SampleNoisyLatents(const torch::Tensor& latents, const NoiseSchedule& schedule,
                              const NoiseOptions& options, at::Generator generator, const UniformSource& uniform) {
  NoisyBatch out;
  const auto draw_opts = DrawOptions(generator).dtype(latents.scalar_type());
  auto noise = ToDevice(torch::randn(latents.sizes(), generator, draw_opts), latents.device());
  if (options.noise_offset && *options.noise_offset != 0.0) {
    torch::Tensor offset;
    if (options.noise_offset_random_strength) {
      offset = torch::rand({1}, generator, DrawOptions(generator)) * *options.noise_offset;
    } else {
      offset = torch::tensor(*options.noise_offset, torch::kFloat32);
    }
    noise = ApplyNoiseOffset(latents, noise, offset, options.adaptive_noise_scale, generator);
  }
  if (options.multires_noise_iterations > 0) {
    noise = PyramidNoiseLike(noise, options.multires_noise_iterations, options.multires_noise_discount, generator,
                             uniform);
  }
  out.timesteps = SampleTimesteps(latents.size(0), options.min_timestep.value_or(0),
                                  options.max_timestep.value_or(schedule.num_train_timesteps()), generator,
                                  latents.device());
  if (options.ip_noise_gamma && *options.ip_noise_gamma != 0.0) {
    torch::Tensor strength;
    if (options.ip_noise_gamma_random_strength) {
      strength = ToDevice(torch::rand({1}, generator, DrawOptions(generator)) * *options.ip_noise_gamma, latents.device());
    } else {
      strength = ToDevice(torch::tensor(*options.ip_noise_gamma, torch::kFloat32), latents.device());
    }
    auto perturbation = ToDevice(torch::randn(latents.sizes(), generator, draw_opts), latents.device());
    out.noisy_latents = schedule.AddNoise(latents, noise + strength * perturbation, out.timesteps);
  } else {
    out.noisy_latents = schedule.AddNoise(latents, noise, out.timesteps);
  }
  out.noise = noise;
  return out;
}

}  // namespace lorad::diffusion
