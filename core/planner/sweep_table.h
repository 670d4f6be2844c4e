// The morning view of a sweep (`loractl sweep show ID`): one row per job with
// the varied hyperparameters, state, losses, steps, duration, speed and LoRA
// path, rendered as an aligned text table, CSV or JSON.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace lorad::planner {

struct SweepTableRow {
  std::string job_id;
  std::string name;
  // Varied key -> value text (SweepJobSpec::varied). Columns are the union of
  // keys over all rows, in first-seen order; a row without a key shows "".
  std::vector<std::pair<std::string, std::string>> varied;
  std::string state;  // "SUCCEEDED", "FAILED", ...
  std::optional<double> final_smoothed_loss;
  std::optional<double> min_smoothed_loss;
  int64_t steps = 0;                    // steps done
  std::optional<int64_t> total_steps;   // planned, shown as "steps/total"
  std::optional<double> duration_s;
  std::optional<double> images_per_s;
  std::string lora_path;                // empty until the job saved one
};

enum class TableFormat { kText, kCsv, kJson };

// Parses "text" | "table" | "csv" | "json".
absl::StatusOr<TableFormat> ParseTableFormat(absl::string_view text);

// Text: header + one aligned line per row, missing numbers as "-".
// CSV: RFC 4180 (quoted when needed), header row, numbers unformatted.
// JSON: an array of objects {"job_id","name","varied":{k:v},"state",
//   "final_smoothed_loss","min_smoothed_loss","steps","total_steps",
//   "duration_s","images_per_s","lora_path"} with null for missing values.
std::string FormatSweepTable(const std::vector<SweepTableRow>& rows, TableFormat format);

// "1h02m", "4m05s", "12s".
std::string FormatDuration(double seconds);

}  // namespace lorad::planner
