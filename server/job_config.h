// Turns a submitted kohya config into the files a worker runs with: overrides
// applied, every path confined to the daemon's roots, output under the job's
// folder, state saving on (so a restarted daemon resumes the job).
#pragma once

#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace lorad::server {

struct JobRoots {
  std::filesystem::path models_root;    // base for model paths given relative
  std::filesystem::path datasets_root;  // base for data paths given relative
  std::vector<std::filesystem::path> extra_roots;
};

// Applies structured overrides (kohya key -> TOML value text; a bare word is a
// string) to a config, replacing the key wherever kohya would read it.
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
  std::map<std::string, std::string> hyperparameters;  // flattened kohya keys
};

// INVALID_ARGUMENT for TOML errors (with line:column) and bad overrides,
// PERMISSION_DENIED for a path outside the roots.
absl::StatusOr<PreparedJobConfig> PrepareJobConfig(const JobConfigInput& input, const JobRoots& roots);

}  // namespace lorad::server
