// The LoRA training loop (kohya sd-scripts train_network.py:NetworkTrainer.train):
// loads an SD1.5 / SDXL checkpoint, attaches a LoRA / LoCon / DoRA / LoHa / LoKr network, and trains
// it on batches from a data::BatchSource with kohya's noise, loss weighting,
// optimizers and schedules; saves LoRA files and resumable states, renders
// previews, reports through a TrainObserver and stops on a CancellationToken.
//
//   ASSIGN_OR_RETURN(TrainConfig config, LoadTrainConfig(path, overrides));
//   ASSIGN_OR_RETURN(auto dataset, data::Dataset::Open(DatasetArgsFor(config)));   // or any BatchSource
//   TrainInputs inputs{.source = dataset.get()};
//   ASSIGN_OR_RETURN(TrainResult r, Train(config, inputs, observer, cancel));
//
// Errors (absl::Status, message names the cause and what to do): INVALID_ARGUMENT
// for config values, NOT_FOUND for a missing checkpoint / state / prompt file,
// DATA_LOSS when the loss or gradients become NaN/inf (the last good LoRA is
// kept), RESOURCE_EXHAUSTED for out of memory (names batch size and resolution),
// CANCELLED when the token was set (after saving state if it asked for it).
// One run per call; not thread-safe (one training thread).
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/data/batch.h"
#include "core/config/config.h"
#include "core/networks/metadata.h"
#include "core/train/observer.h"

namespace lorad::train {

class DistributedContext;  // core/train/distributed.h

// Maps images [B,3,H,W] in [-1,1] to scaled latents (the VAE encode).
using LatentEncodeFn = std::function<absl::StatusOr<torch::Tensor>(const torch::Tensor& images)>;
// Maps captions to text-encoder outputs, batch first, on the CPU: {"context", "pooled" (SDXL)}.
using TextEncodeFn =
    std::function<absl::StatusOr<std::map<std::string, torch::Tensor>>(const std::vector<std::string>& captions)>;

struct TrainInputs {
  // Where batches come from (not owned; must outlive the run).
  data::BatchSource* source = nullptr;
  // Asks the source to serve cached latents (data::Dataset::CacheLatents); called
  // once before training when config.cache_latents. `vae_identity` names the
  // encoder for the cache key. Unset: latents are encoded per batch.
  std::function<absl::Status(LatentEncodeFn encoder, const std::string& vae_identity)> cache_latents;
  // Facts about the images for the saved LoRA's ss_* metadata (DatasetFactsOf
  // in dataset_glue.h). Unset: those keys are left out.
  std::optional<networks::DatasetFacts> dataset_facts;
  // Opens a disk cache of text-encoder outputs (cache_text_encoder_outputs_to_disk):
  // given the encoders' identity and `encode`, returns a TextEncodeFn that serves
  // captions from the cache and encodes only the missing ones. Called once before
  // training. InputsFor sets it (core/data's TextEncoderCache); unset: the outputs
  // stay in memory and the run warns.
  std::function<absl::StatusOr<TextEncodeFn>(const std::string& encoder_identity, TextEncodeFn encode)>
      cache_text_encoder_outputs;
  // Data-parallel training (not owned; null: one process). `source` must then
  // serve this rank's shares of the global batches (Batch::planned_size/slots).
  // Only rank 0 saves, renders previews and reports to `observer`'s files; see
  // distributed.h for the contract.
  DistributedContext* distributed = nullptr;
};

// Knobs that are not kohya options (tests, the benchmark, the daemon).
struct TrainOptions {
  // fp16 dynamic loss scaler: initial scale, growth every N clean steps.
  double loss_scale_init = 65536.0;
  int64_t loss_scale_growth_interval = 2000;
  // Stop after this many optimizer steps in this process (a simulated interrupt
  // for resume tests): saves a state like a cancel with save_state, returns CANCELLED.
  std::optional<int64_t> stop_after_steps;
  // Called after every optimizer step with the global step (tests measure the loss here).
  std::function<void(int64_t step)> on_step;
  // Runs the step that CUDA graphs capture (static input buffers, the
  // optimizer's graph-safe step, clipping on the device) where no graph can
  // be captured, e.g. on the CPU, eagerly: tests compare it with the eager step.
  bool graph_step_without_capture = false;
};

struct TrainResult {
  int64_t steps = 0;                  // optimizer steps completed (global)
  int64_t epochs = 0;                 // epochs completed
  std::filesystem::path final_lora;   // the LoRA written at the end
  std::vector<std::filesystem::path> checkpoints;  // every LoRA and state written, in order
  std::vector<std::filesystem::path> samples;
  double final_loss_avg = 0;
  int64_t skipped_steps = 0;          // fp16 steps the loss scaler skipped
  // Steps run by the graph-capturable step (cuda_graphs), and the CUDA graphs
  // captured for them (one per bucket shape; 0 where graphs cannot be captured).
  int64_t graph_steps = 0;
  int64_t cuda_graphs_captured = 0;
};

// Runs a whole training job. `observer` and `cancel` may be null.
absl::StatusOr<TrainResult> Train(const TrainConfig& config, const TrainInputs& inputs,
                                  TrainObserver* observer = nullptr, const CancellationToken* cancel = nullptr,
                                  const TrainOptions& options = {});

}  // namespace lorad::train
