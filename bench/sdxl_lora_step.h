// The benchmark workload of issue 11: a full-size SDXL U-Net (random frozen
// weights, built in memory), a kohya LoRA (rank 32 / alpha 16 on the U-Net's
// transformer layers) and AdamW, trained one step at a time on random cached
// latents and random text conditioning (context [B,77,2048], pooled [B,1280] ->
// added conditioning [B,2816]), so the text encoders and the VAE are not built.
//
// A step is the sequence lorad-train runs per optimizer step, through the same
// engine components: kohya noise and timesteps from a CPU generator, the SDXL
// added conditioning, the U-Net forward under autocast (channels_last on CUDA,
// as lorad-train tunes it), the L2 loss, backward, gradient clipping
// (max_grad_norm 1), the lr schedule, AdamW and zero_grad. The step runs in one
// of three modes (StepMode), so a benchmark measures each optimisation against
// the plain eager step in the same process; the forward, loss, backward,
// clipping and optimizer step are one function (Body) in all of them.
// Not thread-safe.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <torch/torch.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/diffusion/noise.h"
#include "core/diffusion/noise_schedule.h"
#include "core/models/unet.h"
#include "core/networks/lora_network.h"
#include "core/optim/lr_scheduler.h"
#include "core/optim/optimizer.h"
#include "core/train/step_graphs.h"

namespace lorad::bench {

// How a step runs. Each mode adds one optimisation to the one before.
enum class StepMode {
  // lorad eager with no graphs or fusions: the optimizer's per-parameter
  // kernels, and the host reads the loss back after the forward and the
  // gradient norm after clipping, waiting for the device each time.
  kEager,
  // The fused (multi-tensor) optimizer kernels (AdamW's at::_fused_adamw_ on
  // CUDA with LibTorch 2.x; elsewhere the optimizer has none and runs as in
  // kEager), the LoRA weights cast for the forward and their gradients cast
  // back in one multi-tensor copy each (networks::ComputeCopies), and no
  // read-back inside the step: loss and gradient norm stay on the device
  // (optim::ClipGradNormOnDevice), so the host queues ahead.
  kFused,
  // kFused with the whole step (forward to optimizer step) captured as a CUDA
  // graph once per batch shape and replayed (train::StepGraphs), on static
  // input buffers and the optimizer's graph-safe step. Where graphs cannot be
  // captured (the CPU, LibTorch 1.x) the same static-buffer step runs eagerly.
  kGraphs,
};

// "eager", "fused", "graphs".
const char* StepModeName(StepMode mode);
// The inverse of StepModeName; INVALID_ARGUMENT naming the accepted names.
absl::StatusOr<StepMode> ParseStepMode(std::string_view name);
// A comma-separated list of mode names ("graphs,eager"), each once, eager
// first (the others' ratios divide by it); INVALID_ARGUMENT for an unknown name.
absl::StatusOr<std::vector<StepMode>> ParseStepModes(std::string_view list);

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
  StepMode mode = StepMode::kEager;
};

class SdxlLoraStep {
 public:
  // Builds the U-Net on options.device (about 2.6e9 parameters: 5.2 GB in bf16),
  // attaches the LoRA and creates AdamW for options.mode. Errors name the part
  // that failed.
  static absl::StatusOr<std::unique_ptr<SdxlLoraStep>> Create(const SdxlLoraOptions& options);

  // Switches the step mode: a new AdamW (fresh state, on the same LoRA
  // weights) set up for the mode, and no captured graphs. Errors come from the
  // optimizer (the graph-safe step's requirements).
  absl::Status SetMode(StepMode mode);
  StepMode mode() const { return options_.mode; }

  // Sets the batch for the following steps: `batch` random latents of
  // latent_size x latent_size (1024 px = 128) and their conditioning, on the
  // device. Drops captured graphs (they read the previous batch's buffers).
  void SetBatch(int64_t batch, int64_t latent_size);
  // Drops captured graphs too: they recorded the forward with the old setting.
  void SetGradientCheckpointing(bool on);

  // One training step. Returns its loss, a 0-dim float32 tensor on the device
  // (a copy: a later step does not change it); reading it (item()) waits for
  // the step, which kFused and kGraphs never do themselves. RESOURCE_EXHAUSTED
  // (naming batch, resolution and checkpointing) when the device runs out of
  // memory; INTERNAL when a CUDA graph capture fails (naming the cause).
  absl::StatusOr<torch::Tensor> Step();

  // How the last Step() ran through the graphs: kEager for warm-up steps,
  // in kEager / kFused mode and where graphs cannot be captured.
  train::StepGraphs::Ran last_run() const { return last_run_; }
  // True when kGraphs captures on this device and LibTorch build.
  bool captures_graphs() const;

  int64_t unet_parameters() const { return unet_parameters_; }
  int64_t lora_parameters() const { return network_->NumParameters(); }
  int64_t lora_modules() const { return static_cast<int64_t>(network_->modules().size()); }
  int64_t batch() const { return batch_; }
  int64_t latent_size() const { return latent_size_; }
  const SdxlLoraOptions& options() const { return options_; }

 private:
  explicit SdxlLoraStep(const SdxlLoraOptions& options);
  absl::Status StepUnguarded();
  // Forward, loss, backward, clipping and optimizer step on inputs_ and the
  // batch tensors; writes the loss into loss_. Graph-safe in kFused and
  // kGraphs; in kEager it reads the loss and the gradient norm back.
  absl::Status Body();
  // Releases the captured graphs and the static input buffers.
  void ResetGraphs();

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
  // This step's noise, noisy latents and timesteps. In kGraphs they are static
  // buffers refilled in place each step (a replay reads their addresses).
  diffusion::NoisyBatch inputs_;
  torch::Tensor loss_;  // float32 [], the body's output, written in place
  std::unique_ptr<train::StepGraphs> graphs_;  // kGraphs only
  train::StepGraphs::Ran last_run_ = train::StepGraphs::Ran::kEager;
};

}  // namespace lorad::bench
