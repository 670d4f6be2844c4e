#include "bench/sdxl_lora_step.h"

#include <ATen/autocast_mode.h>

#include "absl/strings/str_format.h"
#include "core/base/status_macros.h"
#include "core/common/out_of_memory.h"
#include "core/common/torch_compat.h"
#include "core/diffusion/loss.h"
#include "core/networks/network_config.h"
#include "core/networks/targets.h"
#include "core/train/autocast.h"

namespace lorad::bench {

absl::StatusOr<std::unique_ptr<SdxlLoraStep>> SdxlLoraStep::Create(const SdxlLoraOptions& options) {
  std::unique_ptr<SdxlLoraStep> s(new SdxlLoraStep(options));
  const std::string where = absl::StrFormat("building the full-size SDXL U-Net (%s) on %s",
                                            c10::toString(options.weight_dtype), options.device.str());
  RETURN_IF_ERROR(CatchOutOfMemory(where, "use a device with at least 6 GiB free", [&]() -> absl::Status {
    s->unet_ = models::UNet(models::UNetConfig::SdxlBase(),
                            torch::TensorOptions().dtype(options.weight_dtype).device(options.device));
    return absl::OkStatus();
  }));
  for (auto& p : s->unet_->parameters()) {
    p.requires_grad_(false);
    s->unet_parameters_ += p.numel();
  }
  s->unet_->train();

  networks::NetworkConfigInput input;
  input.network_dim = options.rank;
  input.network_alpha = options.alpha;
  ASSIGN_OR_RETURN(networks::NetworkConfig config, networks::ParseNetworkConfig(input));
  ASSIGN_OR_RETURN(auto targets, networks::FindUnetTargets(*s->unet_, /*include_conv_blocks=*/false,
                                                           networks::UnetKeyNames::kLdm));
  ASSIGN_OR_RETURN(s->network_,
                   networks::LoraNetwork::Create(config, targets, at::detail::createCPUGenerator(options.seed)));
  s->network_->Apply();
  s->network_->Train(true);

  std::vector<optim::ParamGroup> groups;
  groups.push_back(optim::ParamGroup{"unet", s->network_->UnetParameters(), options.learning_rate});
  ASSIGN_OR_RETURN(s->optimizer_, optim::CreateOptimizer("AdamW", {}, std::move(groups)));
  optim::SchedulerOptions sched;
  sched.total_steps = 1'000'000;
  ASSIGN_OR_RETURN(optim::LrScheduler scheduler, optim::LrScheduler::Create(sched));
  s->scheduler_.emplace(std::move(scheduler));
  s->noise_gen_ = at::detail::createCPUGenerator(options.seed + 1);
  s->uniform_ = diffusion::TorchUniformSource(s->noise_gen_);
  return s;
}

void SdxlLoraStep::SetBatch(int64_t batch, int64_t latent_size) {
  batch_ = batch;
  latent_size_ = latent_size;
  torch::manual_seed(static_cast<uint64_t>(options_.seed + 2));
  const auto f32 = torch::TensorOptions().dtype(torch::kFloat32);
  const auto on_device = torch::TensorOptions().device(options_.device);
  // Cached latents and text-encoder outputs, as lorad-train holds them on the device.
  latents_ = torch::randn({batch, 4, latent_size, latent_size}, f32).to(options_.device);
  context_ = torch::randn({batch, 77, 2048}, f32).to(on_device.dtype(options_.weight_dtype));
  pooled_ = torch::randn({batch, 1280}, f32).to(on_device.dtype(options_.weight_dtype));
  const int64_t px = latent_size * 8;
  original_hw_ = torch::full({batch, 2}, px, torch::kLong).to(options_.device);
  crop_top_left_ = torch::zeros({batch, 2}, torch::kLong).to(options_.device);
  target_hw_ = original_hw_.clone();
}

absl::StatusOr<double> SdxlLoraStep::StepUnguarded() {
  diffusion::NoisyBatch noisy = diffusion::SampleNoisyLatents(latents_, schedule_, {}, noise_gen_, uniform_);
  torch::Tensor pred;
  {
    train::AutocastScope autocast(options_.autocast_dtype.has_value(), options_.device,
                                 options_.autocast_dtype.value_or(torch::kBFloat16));
    torch::Tensor y = models::SdxlAddedConditioning(pooled_, original_hw_, crop_top_left_, target_hw_,
                                                    unet_->config().addition_time_embed_dim);
    pred = unet_->forward(noisy.noisy_latents.to(options_.weight_dtype), noisy.timesteps, context_, y);
  }
  torch::Tensor target = diffusion::TrainingTarget(schedule_, diffusion::PredictionType::kEpsilon, latents_,
                                                   noisy.noise, noisy.timesteps);
  torch::Tensor loss = diffusion::ConditionalLoss(pred.to(torch::kFloat32), target.to(torch::kFloat32),
                                                  diffusion::LossType::kL2, diffusion::Reduction::kNone);
  loss = diffusion::PostProcessLoss(loss.mean({1, 2, 3}), noisy.timesteps, schedule_, {}).mean();
  const double value = loss.item<double>();
  loss.backward();
  ASSIGN_OR_RETURN(double grad_norm, optim::ClipGradNorm(optimizer_->AllParams(), 1.0));
  (void)grad_norm;
  RETURN_IF_ERROR(scheduler_->Apply(step_, *optimizer_));
  RETURN_IF_ERROR(optimizer_->Step());
  optimizer_->ZeroGrad();
  ++step_;
  return value;
}

absl::StatusOr<double> SdxlLoraStep::Step() {
  if (!latents_.defined()) return absl::FailedPreconditionError("SdxlLoraStep::Step before SetBatch");
  double loss = 0;
  const std::string what = absl::StrFormat(
      "an SDXL LoRA step on %s with batch %d at %dx%d px, gradient checkpointing %s", options_.device.str(), batch_,
      latent_size_ * 8, latent_size_ * 8, unet_->gradient_checkpointing() ? "on" : "off");
  absl::Status status =
      CatchOutOfMemory(what, "lower the batch or enable gradient checkpointing", [&]() -> absl::Status {
        ASSIGN_OR_RETURN(loss, StepUnguarded());
        return absl::OkStatus();
      });
  if (!status.ok()) {
    optimizer_->ZeroGrad();  // a failed step leaves no gradients behind for the next one
    return status;
  }
  return loss;
}

}  // namespace lorad::bench
