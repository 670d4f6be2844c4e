// The benchmark workload of issue 11: a full-size SDXL U-Net (random frozen
// weights, built in memory), a kohya LoRA (rank 32 / alpha 16 on the U-Net's
// transformer layers) and AdamW, trained one step at a time on random cached
// latents and random text conditioning (context [B,77,2048], pooled [B,1280] ->
// added conditioning [B,2816]), so the text encoders and the VAE are not built.
//
// A step is the sequence lorad-train runs per optimizer step, through the same
// engine components: kohya noise and timesteps from a CPU generator, the SDXL
// added conditioning, the U-Net forward under autocast, the L2 loss read back
// to the host, backward, gradient clipping (max_grad_norm 1), the lr schedule,
// AdamW and zero_grad. That is lorad's eager path, the only one the engine has.
// Not thread-safe.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include <torch/torch.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/diffusion/noise.h"
#include "core/diffusion/noise_schedule.h"
#include "core/models/unet.h"
#include "core/networks/lora_network.h"
#include "core/optim/lr_scheduler.h"
#include "core/optim/optimizer.h"

namespace lorad::bench {

struct SdxlLoraOptions {
  torch::Device device = torch::kCPU;
  // Frozen U-Net weights (bf16 as kohya stores them with mixed_precision=bf16).
  torch::ScalarType weight_dtype = torch::kBFloat16;
  // Autocast to this dtype around the forward; nullopt = no autocast.
  std::optional<torch::ScalarType> autocast_dtype = torch::kBFloat16;
  int64_t rank = 32;
  double alpha = 16;
  double learning_rate = 1e-4;
  uint64_t seed = 0;
};

class SdxlLoraStep {
 public:
  // Builds the U-Net on options.device (about 2.6e9 parameters: 5.2 GB in bf16),
  // attaches the LoRA and creates AdamW. Errors name the part that failed.
  static absl::StatusOr<std::unique_ptr<SdxlLoraStep>> Create(const SdxlLoraOptions& options);

  // Sets the batch for the following steps: `batch` random latents of
  // latent_size x latent_size (1024 px = 128) and their conditioning, on the device.
  void SetBatch(int64_t batch, int64_t latent_size);
  void SetGradientCheckpointing(bool on) { unet_->set_gradient_checkpointing(on); }

  // One training step; returns its loss. RESOURCE_EXHAUSTED (naming batch,
  // resolution and checkpointing) when the device runs out of memory.
  absl::StatusOr<double> Step();

  int64_t unet_parameters() const { return unet_parameters_; }
  int64_t lora_parameters() const { return network_->NumParameters(); }
  int64_t lora_modules() const { return static_cast<int64_t>(network_->modules().size()); }
  int64_t batch() const { return batch_; }
  int64_t latent_size() const { return latent_size_; }
  const SdxlLoraOptions& options() const { return options_; }

 private:
  explicit SdxlLoraStep(const SdxlLoraOptions& options) : options_(options) {}
  absl::StatusOr<double> StepUnguarded();

  SdxlLoraOptions options_;
  models::UNet unet_{nullptr};
  int64_t unet_parameters_ = 0;
  std::unique_ptr<networks::LoraNetwork> network_;
  std::unique_ptr<optim::Optimizer> optimizer_;
  std::optional<optim::LrScheduler> scheduler_;
  diffusion::NoiseSchedule schedule_;
  at::Generator noise_gen_;
  diffusion::UniformSource uniform_;
  int64_t step_ = 0;
  int64_t batch_ = 0;
  int64_t latent_size_ = 0;
  torch::Tensor latents_, context_, pooled_, original_hw_, crop_top_left_, target_hw_;
};

}  // namespace lorad::bench
