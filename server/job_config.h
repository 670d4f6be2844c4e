// Turns a submitted kohya config into the files a worker runs with: overrides
// applied, every path confined to the daemon's roots, output under the job's
// folder, state saving on (so a restarted daemon resumes the job). Values are
// not judged here: the result goes through the trainer's own parsers (core/config
// for the config, core/networks for network_module/network_args, core/data for
// the dataset_config), so a bad value is refused with lorad-train's message.
#pragma once

#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/config/config.h"
#include "core/data/dataset_config.h"

namespace lorad::server {

struct JobRoots {
  std::filesystem::path models_root;    // base for model paths given relative
  std::filesystem::path datasets_root;  // base for data paths given relative
  std::vector<std::filesystem::path> extra_roots;
};

// Most structured overrides one submit may carry: kohya has about 250 options,
// and each override is a TOML parse on an RPC thread.
inline constexpr size_t kMaxOverrides = 1024;

// Applies structured overrides (kohya key -> TOML value text; a bare word is a
// string) to a config, replacing the key wherever kohya would read it. More
// than kMaxOverrides is INVALID_ARGUMENT naming the count and the limit.
absl::StatusOr<std::string> ApplyOverrides(const std::string& config_toml,
                                           const std::map<std::string, std::string>& overrides);

struct JobConfigInput {
  std::string config_toml;  // overrides already applied
  std::string dataset_config_toml;
  std::filesystem::path dataset_dir;  // resolved dataset reference; empty: none
  std::filesystem::path job_dir;      // <data>/jobs/<id>; outputs go to job_dir/output
};

struct PreparedJobConfig {
  std::string config_toml;
  std::string dataset_config_toml;  // empty when none was given
  // config_toml as lorad-train reads it, with the --dataset_config the worker gets.
  train::TrainConfig train;
  // dataset_config_toml as core/data resolves it for the worker (unset when none).
  std::optional<data::ResolvedDatasets> datasets;
  // The kohya keys the config sets, as text (train.explicitly_set, without the
  // daemon's --dataset_config).
  std::map<std::string, std::string> hyperparameters;
  // JobGpus of the submitted config (`gpus` itself is the daemon's: removed
  // from config_toml).
  int gpus = 1;
};

// Most GPUs one job may ask for.
inline constexpr int kMaxJobGpus = 4096;

// The GPUs a job asks for: lorad's own `gpus` key (top level, or one section
// deep as kohya flattens), else accelerate's `num_processes`, else 1. The
// daemon starts that many lorad-train ranks (one per GPU). INVALID_ARGUMENT
// naming the key for anything but an integer 1..kMaxJobGpus, or for `gpus` and
// `num_processes` that disagree.
absl::StatusOr<int> JobGpus(const std::string& config_toml);

// The file the worker reads the dataset config from (--dataset_config).
std::filesystem::path DatasetConfigPath(const std::filesystem::path& job_dir);

// PERMISSION_DENIED for a path outside the roots; INVALID_ARGUMENT for TOML
// errors (with line and column), bad overrides, and any value or combination
// the trainer refuses: train::ParseTrainConfig's message, the network parser's
// (network_args), and the dataset config parser's (data::ParseDatasetConfigToml,
// fed the config's keys as lorad-train feeds them).
absl::StatusOr<PreparedJobConfig> PrepareJobConfig(const JobConfigInput& input, const JobRoots& roots);

// Every data path (train_data_dir, reg_data_dir, image_dir, ...) a prepared job
// reads, in its config and its dataset config, as PrepareJobConfig confined
// them (absolute).
std::vector<std::filesystem::path> DataPaths(const PreparedJobConfig& prepared);

}  // namespace lorad::server
