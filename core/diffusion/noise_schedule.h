// The DDPM noise schedule kohya trains with (train_network.py's DDPMScheduler): scaled_linear
// betas, alphas_cumprod, kohya's all_snr (library/custom_train_functions.py:
// prepare_scheduler_for_custom_training), the optional zero-terminal-SNR rescale
// (fix_noise_scheduler_betas_for_zero_terminal_snr; Lin et al. 2023, arXiv 2305.08891), and
// the forward process (add_noise / get_velocity) as diffusers computes them
// (schedulers/scheduling_ddpm.py).
#pragma once

#include <cstdint>

#include <torch/torch.h>

namespace lorad::diffusion {

struct ScheduleOptions {
  int64_t num_train_timesteps = 1000;
  double beta_start = 0.00085;
  double beta_end = 0.012;
  // arXiv 2305.08891 rescale (kohya --zero_terminal_snr). As in kohya, all_snr
  // keeps the values of the ORIGINAL schedule (it is computed before the fix).
  bool zero_terminal_snr = false;
};

// Immutable after construction; all tensors are float32 on `device`. Thread-safe.
class NoiseSchedule {
 public:
  // The tables are computed on the CPU, then kept on `device`: a training step
  // on a GPU gathers from them there without a host copy (a copy from pageable
  // host memory would make every step wait for the GPU).
  explicit NoiseSchedule(const ScheduleOptions& options = {}, const torch::Device& device = torch::kCPU);

  const ScheduleOptions& options() const { return options_; }
  int64_t num_train_timesteps() const { return options_.num_train_timesteps; }
  const torch::Tensor& betas() const { return betas_; }                    // [T]
  const torch::Tensor& alphas_cumprod() const { return alphas_cumprod_; }  // [T]
  // (sqrt(acp) / sqrt(1 - acp))^2 of the schedule before any zero-terminal-SNR fix.
  const torch::Tensor& all_snr() const { return all_snr_; }                // [T]

  // sqrt(acp[t]) * x0 + sqrt(1 - acp[t]) * noise; t int64 [B] on any device.
  torch::Tensor AddNoise(const torch::Tensor& x0, const torch::Tensor& noise, const torch::Tensor& t) const;
  // v target: sqrt(acp[t]) * noise - sqrt(1 - acp[t]) * x0.
  torch::Tensor Velocity(const torch::Tensor& x0, const torch::Tensor& noise, const torch::Tensor& t) const;
  // all_snr[t] as float32 [B] on t's device.
  torch::Tensor SnrAt(const torch::Tensor& t) const;

 private:
  ScheduleOptions options_;
  torch::Tensor betas_, alphas_cumprod_, all_snr_;
};

}  // namespace lorad::diffusion
