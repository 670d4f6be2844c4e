// The advisor on submit (issue 7, issue 12): every job's config and dataset are
// checked against core/planner's advisor rules before it is queued. An uploaded
// dataset is judged on its curation report (lorad-curate --json, computed once
// per dataset and kept under <data>/curation/, as datasets are content-
// addressed); a folder dataset on the cheap facts of its listing (image counts
// and kohya "N_name" repeats). A dataset_config's caption settings, as core/data
// resolves them, win over the training config's.
#pragma once

#include <filesystem>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "core/config/config.h"
#include "core/data/dataset_config.h"
#include "core/planner/advisor.h"

namespace lorad::server {

// Image files under `dataset_dir` (recursive) and the count after kohya's
// "<repeats>_<name>" folder repeats. Both 0 for an empty path.
planner::DatasetFacts CountDatasetImages(const std::filesystem::path& dataset_dir);

// Where the curation report of uploaded dataset `dataset_id` is kept.
std::filesystem::path CurationCachePath(const std::filesystem::path& data_dir, const std::string& dataset_id);
// The kept report's text, or "" when there is none (or it cannot be read).
std::string ReadCurationCache(const std::filesystem::path& path);
// Writes the report atomically (temporary file, then rename); creates the folder.
absl::Status WriteCurationCache(const std::filesystem::path& path, const std::string& report_json);

struct SubmitAdviceInput {
  train::TrainConfig config;  // as PrepareJobConfig parsed it
  std::filesystem::path dataset_dir;
  // lorad-curate --json of the dataset; empty: the folder's counts are used.
  std::string curation_json;
  // The job's dataset_config as core/data resolved it (PrepareJobConfig), if any.
  std::optional<data::ResolvedDatasets> dataset_config;
  planner::TrainingKind kind = planner::TrainingKind::kUnspecified;
  bool force = false;
};

// The facts the rules see for this job's dataset (see the file comment). A
// curation report that does not parse is logged and the folder is counted.
planner::DatasetFacts SubmitDatasetFacts(const SubmitAdviceInput& input);

// Advises on one job.
planner::AdviceReport AdviseSubmit(const SubmitAdviceInput& input);

// "never-came-high-lr: <message>; ..." for a refused submit.
std::string DescribeNeverFindings(const planner::AdviceReport& report);

}  // namespace lorad::server
