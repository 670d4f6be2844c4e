// The advisor on submit (issue 7): every job's config and dataset folder are
// checked against core/planner's advisor rules before it is queued. Cheap facts only
// (the submit path must stay fast): image counts and kohya "N_name" repeats from
// the folder listing; the full curation report stays with `loractl advise`.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "core/config/config.h"
#include "core/planner/advisor.h"

namespace lorad::server {

// Image files under `dataset_dir` (recursive) and the count after kohya's
// "<repeats>_<name>" folder repeats. Both 0 for an empty path.
planner::DatasetFacts CountDatasetImages(const std::filesystem::path& dataset_dir);

// Advises on one job: `config` as the trainer parsed it (PrepareJobConfig),
// the images counted under `dataset_dir`.
planner::AdviceReport AdviseSubmit(const train::TrainConfig& config, const std::filesystem::path& dataset_dir,
                                   bool force);

// "never-came-high-lr: <message>; ..." for a refused submit.
std::string DescribeNeverFindings(const planner::AdviceReport& report);

}  // namespace lorad::server
