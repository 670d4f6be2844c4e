// Preview images during training (kohya's sample_prompts): each prompt is
// rendered with the adapters applied at the prompt's LoRA strength, with the
// sampler it names (kohya's sample_sampler / --ss names), written as a PNG
// under <output_dir>/sample and reported through the observers (with the
// sampler and strength). Also when previews are due.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "absl/status/statusor.h"
#include "core/config/config.h"
#include "core/diffusion/loss.h"
#include "core/diffusion/noise_schedule.h"
#include "core/networks/lora_network.h"
#include "core/train/checkpoint_files.h"
#include "core/train/model_bundle.h"
#include "core/train/observer.h"
#include "core/train/sample_prompts.h"

namespace lorad::train {

// How the run computes: the previews use the training precision and schedule.
struct PreviewSettings {
  torch::Device device = torch::kCPU;
  torch::ScalarType weight_dtype = torch::kFloat32;
  bool autocast = false;
  torch::ScalarType autocast_dtype = torch::kBFloat16;
  diffusion::PredictionType prediction = diffusion::PredictionType::kEpsilon;
  std::string default_sampler = "ddim";  // config sample_sampler, for prompts that name none
  double default_lora_strength = 1.0;     // config sample_lora_strength, for prompts without --lora_strength
  int64_t seed = 0;             // the run seed; prompt i without --d uses seed + i
};

// INVALID_ARGUMENT unless `default_sampler` (naming the config key) and every
// prompt's --ss (naming its line) is a sampler kohya offers; the message lists them.
absl::Status CheckPreviewSamplers(const std::string& default_sampler, const std::vector<SamplePrompt>& prompts);

// Renders `prompts` with `model` and the applied `network` (put in eval mode
// and at the prompt's LoRA strength for the call, back in train mode at its
// previous multiplier after). Samplers run on `schedule`'s betas without the
// zero-terminal-SNR rescale, as kohya's sampling scheduler does. Each image
// goes to names.Sample(step, i) and is reported through observers.OnSample.
// The initial and the ancestral samplers' noise come from a per-prompt
// generator, never the run's. Returns the paths.
absl::StatusOr<std::vector<std::filesystem::path>> RenderPreviews(
    const std::vector<SamplePrompt>& prompts, const PreviewSettings& settings, ModelBundle& model,
    networks::LoraNetwork& network, const diffusion::NoiseSchedule& schedule, const CheckpointNames& names,
    int64_t step, TrainObserver& observers);

// When previews are due (kohya's sample_every_n_steps / _epochs): after step
// `step` unless it was the last; after epoch `epoch` unless it was the last
// (the end of training renders its own); at the end when either is set.
bool PreviewDueAfterStep(const TrainConfig& config, int64_t step, bool last_step);
bool PreviewDueAfterEpoch(const TrainConfig& config, int64_t epoch, int64_t num_epochs);
bool PreviewDueAtEnd(const TrainConfig& config);

}  // namespace lorad::train
