// Sweeps: one base kohya config plus a `[sweep]` table of values to vary,
// expanded into one job spec per combination. Pure C++ (toml++), no LibTorch.
//
// Sweep file:
//   dataset = "datasets/cats"          # optional base dataset reference (not a kohya key)
//   optimizer_type = "AdamW"           # any kohya config, flat or in sections
//   learning_rate = 1e-4
//   [sweep]
//   mode = "grid"                      # "grid" (cartesian, default) or "zip"
//   dataset = ["datasets/cats", "datasets/dogs"]
//   learning_rate = [1e-4, 5e-4]
//   network_args = [["algo=lora"], ["algo=lora", "dora_wd=True"]]  # list-valued keys: a list of lists
//
// A sweep key replaces the base value wherever kohya would read it (top level or
// one section deep, as sd-scripts flattens sections); a dotted key
// ("optimizer_arguments.learning_rate") names the place explicitly; a key the base
// does not have is added at the top level. When the base sets `output_name`, each
// job gets `<output_name>_<job name>` so the LoRA files of a sweep never collide.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace lorad::planner {

enum class SweepMode { kGrid, kZip };

// One job of an expanded sweep.
struct SweepJobSpec {
  // Derived from the varied values, e.g. "ds-cats_lr-1e-4": short (<= 64
  // chars), filesystem-safe ([A-Za-z0-9._+-]), unique within the sweep.
  std::string name;
  // The full kohya config TOML for this job (no [sweep] table, no `dataset`).
  std::string config_toml;
  // Dataset reference for this job: the swept `dataset` value, else the base's
  // top-level `dataset`, else empty (the config's own train_data_dir /
  // dataset_config then applies).
  std::string dataset;
  // Varied key -> value as text (TOML-ish: strings unquoted, arrays as
  // "[a, b]"), in [sweep] table order. Includes "dataset" when swept.
  std::vector<std::pair<std::string, std::string>> varied;
};

struct SweepPlan {
  SweepMode mode = SweepMode::kGrid;
  std::vector<std::string> varied_keys;  // [sweep] table order
  std::vector<SweepJobSpec> jobs;
};

// Upper bound on jobs in one sweep: a typo in a grid should not queue 10^6 jobs.
inline constexpr int64_t kMaxSweepJobs = 1000;

// Parses and expands a sweep file. Errors (InvalidArgument) name the key:
// missing/empty [sweep], a non-list or empty value list, zip lists of unequal
// length, an unknown mode, a list-valued kohya key given a flat list, more than
// kMaxSweepJobs jobs, TOML syntax errors (with line and column).
// `dataset_labels` maps a dataset reference to the text job names use for it
// (an uploaded id -> the folder name it came from); others name themselves.
absl::StatusOr<SweepPlan> ParseSweep(absl::string_view toml_text,
                                     const std::map<std::string, std::string>& dataset_labels = {});

// Reads `path` and calls ParseSweep; NotFound names the path.
absl::StatusOr<SweepPlan> ParseSweepFile(const std::string& path);

// Short, filesystem-safe rendering of one varied value, as used in job names
// ("1e-4", "AdamW", "cats" for a dataset path).
std::string ShortValueForName(absl::string_view key, absl::string_view value_text);

}  // namespace lorad::planner
