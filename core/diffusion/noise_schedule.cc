#include "core/diffusion/noise_schedule.h"

#include <cmath>

namespace lorad::diffusion {
namespace {

// arXiv 2305.08891 algorithm 1 as kohya's fix_noise_scheduler_betas_for_zero_terminal_snr.
torch::Tensor ZeroTerminalSnrBetas(const torch::Tensor& betas) {
  auto alphas = 1.0 - betas;
  auto alphas_bar_sqrt = torch::cumprod(alphas, 0).sqrt();
  auto first = alphas_bar_sqrt[0].clone();
  auto last = alphas_bar_sqrt[-1].clone();
  alphas_bar_sqrt = alphas_bar_sqrt - last;
  alphas_bar_sqrt = alphas_bar_sqrt * (first / (first - last));
  auto alphas_bar = alphas_bar_sqrt.pow(2);
  auto rest = alphas_bar.slice(0, 1) / alphas_bar.slice(0, 0, -1);
  auto new_alphas = torch::cat({alphas_bar.slice(0, 0, 1), rest});
  return 1.0 - new_alphas;
}

torch::Tensor Gather(const torch::Tensor& table, const torch::Tensor& t, const torch::Tensor& like) {
  auto values = table.to(like.device(), like.scalar_type()).index_select(0, t.to(like.device()).to(torch::kLong).flatten());
  std::vector<int64_t> shape(like.dim(), 1);
  shape[0] = values.size(0);
  return values.view(shape);
}

}  // namespace

NoiseSchedule::NoiseSchedule(const ScheduleOptions& options, const torch::Device& device) : options_(options) {
  torch::NoGradGuard no_grad;
  const auto f32 = torch::TensorOptions().dtype(torch::kFloat32);
  betas_ = torch::linspace(std::sqrt(options_.beta_start), std::sqrt(options_.beta_end),
                           options_.num_train_timesteps, f32)
               .pow(2);
  alphas_cumprod_ = torch::cumprod(1.0 - betas_, 0);
  // kohya's prepare_scheduler_for_custom_training, before any zero-terminal fix.
  all_snr_ = (alphas_cumprod_.sqrt() / (1.0 - alphas_cumprod_).sqrt()).pow(2);
  if (options_.zero_terminal_snr) {
    betas_ = ZeroTerminalSnrBetas(betas_);
    alphas_cumprod_ = torch::cumprod(1.0 - betas_, 0);
  }
  betas_ = betas_.to(device);
  alphas_cumprod_ = alphas_cumprod_.to(device);
  all_snr_ = all_snr_.to(device);
}

torch::Tensor NoiseSchedule::AddNoise(const torch::Tensor& x0, const torch::Tensor& noise,
                                      const torch::Tensor& t) const {
  auto acp = Gather(alphas_cumprod_, t, x0);
  return acp.pow(0.5) * x0 + (1.0 - acp).pow(0.5) * noise;
}

torch::Tensor NoiseSchedule::Velocity(const torch::Tensor& x0, const torch::Tensor& noise,
                                      const torch::Tensor& t) const {
  auto acp = Gather(alphas_cumprod_, t, x0);
  return acp.pow(0.5) * noise - (1.0 - acp).pow(0.5) * x0;
}

torch::Tensor NoiseSchedule::SnrAt(const torch::Tensor& t) const {
  return all_snr_.to(t.device()).index_select(0, t.to(torch::kLong).flatten());
}

}  // namespace lorad::diffusion
