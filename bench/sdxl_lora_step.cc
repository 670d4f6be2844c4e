#include "bench/sdxl_lora_step.h"

#include <algorithm>

#include <ATen/autocast_mode.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "core/base/status_macros.h"
#include "core/common/out_of_memory.h"
#include "core/common/torch_compat.h"
#include "core/diffusion/loss.h"
#include "core/networks/network_config.h"
#include "core/networks/targets.h"
#include "core/train/autocast.h"
#include "core/train/cuda_tuning.h"

namespace lorad::bench {

const char* StepModeName(StepMode mode) {
  switch (mode) {
    case StepMode::kEager:
      return "eager";
    case StepMode::kFused:
      return "fused";
    case StepMode::kGraphs:
      return "graphs";
  }
  return "?";
}

absl::StatusOr<StepMode> ParseStepMode(std::string_view name) {
  for (StepMode m : {StepMode::kEager, StepMode::kFused, StepMode::kGraphs}) {
    if (name == StepModeName(m)) return m;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown step mode \"", std::string(name), "\": use eager, fused or graphs"));
}

absl::StatusOr<std::vector<StepMode>> ParseStepModes(std::string_view list) {
  std::vector<StepMode> modes;
  for (absl::string_view name : absl::StrSplit(absl::string_view(list.data(), list.size()), ',')) {
    ASSIGN_OR_RETURN(StepMode mode, ParseStepMode(std::string_view(name.data(), name.size())));
    if (std::find(modes.begin(), modes.end(), mode) == modes.end()) modes.push_back(mode);
  }
  std::sort(modes.begin(), modes.end());
  return modes;
}

// The noise schedule's tables live on the device: the step gathers from them
// there, without a host copy (which a captured graph could not hold).
SdxlLoraStep::SdxlLoraStep(const SdxlLoraOptions& options)
    : options_(options), schedule_(diffusion::ScheduleOptions{}, options.device) {}

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
  // As lorad-train: cudnn.benchmark and channels_last convolution weights on CUDA.
  train::TuneForCuda(*s->unet_, options.device);

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

  optim::SchedulerOptions sched;
  sched.total_steps = 1'000'000;
  ASSIGN_OR_RETURN(optim::LrScheduler scheduler, optim::LrScheduler::Create(sched));
  s->scheduler_.emplace(std::move(scheduler));
  s->noise_gen_ = at::detail::createCPUGenerator(options.seed + 1);
  s->uniform_ = diffusion::TorchUniformSource(s->noise_gen_);
  RETURN_IF_ERROR(s->SetMode(options.mode));
  return s;
}

absl::Status SdxlLoraStep::SetMode(StepMode mode) {
  graphs_.reset();  // before the optimizer whose step they recorded
  optimizer_.reset();
  std::vector<optim::ParamGroup> groups;
  groups.push_back(optim::ParamGroup{"unet", network_->UnetParameters(), options_.learning_rate});
  ASSIGN_OR_RETURN(optimizer_, optim::CreateOptimizer("AdamW", {}, std::move(groups)));
  optimizer_->set_fused_kernels(mode != StepMode::kEager);
  if (mode == StepMode::kGraphs) RETURN_IF_ERROR(optimizer_->EnableGraphSafeStep(options_.device));
  options_.mode = mode;
  ResetGraphs();
  return absl::OkStatus();
}

void SdxlLoraStep::ResetGraphs() {
  graphs_.reset();
  inputs_ = {};
  loss_ = torch::Tensor();
  last_run_ = train::StepGraphs::Ran::kEager;
  if (options_.mode == StepMode::kGraphs && optimizer_ != nullptr) {
    graphs_ = std::make_unique<train::StepGraphs>(options_.device);
  }
}

bool SdxlLoraStep::captures_graphs() const {
  return options_.mode == StepMode::kGraphs && train::StepGraphs::CaptureSupported(options_.device);
}

void SdxlLoraStep::SetBatch(int64_t batch, int64_t latent_size) {
  ResetGraphs();
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

void SdxlLoraStep::SetGradientCheckpointing(bool on) {
  ResetGraphs();
  unet_->set_gradient_checkpointing(on);
}

absl::Status SdxlLoraStep::Body() {
  const bool eager = options_.mode == StepMode::kEager;
  torch::Tensor pred;
  {
    // The fused modes cast the LoRA weights for the forward in one multi-tensor
    // copy (and their gradients back in one), as lorad-train does.
    networks::ComputeCopies::Scope copies;
    if (!eager) copies = network_->MakeComputeCopies(options_.autocast_dtype.value_or(options_.weight_dtype));
    train::AutocastScope autocast(options_.autocast_dtype.has_value(), options_.device,
                                 options_.autocast_dtype.value_or(torch::kBFloat16));
    torch::Tensor y = models::SdxlAddedConditioning(pooled_, original_hw_, crop_top_left_, target_hw_,
                                                    unet_->config().addition_time_embed_dim);
    pred = unet_->forward(train::ChannelsLastOnCuda(inputs_.noisy_latents.to(options_.weight_dtype)),
                          inputs_.timesteps, context_, y);
  }
  torch::Tensor target = diffusion::TrainingTarget(schedule_, diffusion::PredictionType::kEpsilon, latents_,
                                                   inputs_.noise, inputs_.timesteps);
  torch::Tensor loss = diffusion::ConditionalLoss(pred.to(torch::kFloat32), target.to(torch::kFloat32),
                                                  diffusion::LossType::kL2, diffusion::Reduction::kNone);
  loss = diffusion::PostProcessLoss(loss.mean({1, 2, 3}), inputs_.timesteps, schedule_, {}).mean();
  // The eager step's read-backs: the host waits for the forward before it
  // queues the backward, and for the backward before the optimizer.
  if (eager) (void)loss.item<double>();
  loss.backward();
  if (eager) {
    RETURN_IF_ERROR(optim::ClipGradNorm(optimizer_->AllParams(), 1.0).status());
  } else {
    RETURN_IF_ERROR(optim::ClipGradNormOnDevice(optimizer_->AllParams(), 1.0).status());
  }
  RETURN_IF_ERROR(optimizer_->Step());
  loss_.copy_(loss.detach());
  return absl::OkStatus();
}

absl::Status SdxlLoraStep::StepUnguarded() {
  // Drawn outside the body (a graph replays no draws), by the CPU generator as lorad-train draws them.
  diffusion::NoisyBatch noisy = diffusion::SampleNoisyLatents(latents_, schedule_, {}, noise_gen_, uniform_);
  if (options_.mode != StepMode::kGraphs || !inputs_.noise.defined()) {
    inputs_ = std::move(noisy);  // in kGraphs the first step's tensors become the static buffers
  } else {
    inputs_.noise.copy_(noisy.noise);
    inputs_.noisy_latents.copy_(noisy.noisy_latents);
    inputs_.timesteps.copy_(noisy.timesteps);
  }
  if (!loss_.defined()) loss_ = torch::zeros({}, latents_.options().dtype(torch::kFloat32));
  RETURN_IF_ERROR(scheduler_->Apply(step_, *optimizer_));
  if (graphs_ == nullptr) {
    RETURN_IF_ERROR(Body());
    last_run_ = train::StepGraphs::Ran::kEager;
  } else {
    absl::Status body_status;
    ASSIGN_OR_RETURN(last_run_, graphs_->Run(absl::StrCat(batch_, "x", latent_size_),
                                             [&] { body_status = Body(); }));
    RETURN_IF_ERROR(body_status);
    if (last_run_ == train::StepGraphs::Ran::kReplayed) optimizer_->RecordReplayedStep();
  }
  optimizer_->ZeroGrad();
  ++step_;
  return absl::OkStatus();
}

absl::StatusOr<torch::Tensor> SdxlLoraStep::Step() {
  if (!latents_.defined()) return absl::FailedPreconditionError("SdxlLoraStep::Step before SetBatch");
  const std::string what = absl::StrFormat(
      "an SDXL LoRA step (%s) on %s with batch %d at %dx%d px, gradient checkpointing %s", StepModeName(options_.mode),
      options_.device.str(), batch_, latent_size_ * 8, latent_size_ * 8,
      unet_->gradient_checkpointing() ? "on" : "off");
  torch::Tensor loss;
  absl::Status status =
      CatchOutOfMemory(what, "lower the batch or enable gradient checkpointing", [&]() -> absl::Status {
        RETURN_IF_ERROR(StepUnguarded());
        loss = loss_.clone();
        return absl::OkStatus();
      });
  if (!status.ok()) {
    optimizer_->ZeroGrad();  // a failed step leaves no gradients behind for the next one
    return status;
  }
  return loss;
}

}  // namespace lorad::bench
