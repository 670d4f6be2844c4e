// A resumable training state (save_state / resume): a folder holding the
// adapter weights at full precision, the optimizer state, the RNG states, the
// fp16 loss scaler, and where the run stands (global step, data position, the
// epoch's loss sums). Written to a temp folder and renamed into place.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>

#include <torch/torch.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/data/batch.h"
#include "core/io/safetensors.h"
#include "core/optim/optimizer.h"

namespace lorad::train {

struct RunPosition {
  int64_t global_step = 0;         // optimizer steps completed
  data::DataPosition data;         // the next batch to train on
  double epoch_loss_sum = 0;       // for the reported moving average
  int64_t epoch_loss_count = 0;
  int64_t seed = 0;
  int64_t skipped_steps = 0;
};

struct TrainingState {
  RunPosition position;
  io::NamedTensors adapter;                       // kohya keys, float32
  optim::OptimizerState optimizer;
  std::map<std::string, torch::Tensor> rng;       // generator name -> state bytes
  std::map<std::string, std::string> values;      // loss scaler and other scalars
  std::map<std::string, std::string> fingerprint; // options that must match on resume
};

// Writes `state` into `dir` (replaced atomically if it exists).
absl::Status SaveTrainingState(const std::filesystem::path& dir, const TrainingState& state);

// Reads a folder written by SaveTrainingState. NOT_FOUND names a missing folder
// or file; DATA_LOSS a corrupt one.
absl::StatusOr<TrainingState> LoadTrainingState(const std::filesystem::path& dir);

}  // namespace lorad::train
