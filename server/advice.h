// The advisor on submit (issue 7): every job's config and dataset folder are
// checked against core/advisor's rules before it is queued. Cheap facts only
// (the submit path must stay fast): image counts and kohya "N_name" repeats from
// the folder listing; the full curation report stays with `loractl advise`.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/advisor/advisor.h"

namespace lorad::server {

// Image files under `dataset_dir` (recursive) and the count after kohya's
// "<repeats>_<name>" folder repeats. Both 0 for an empty path.
advisor::DatasetFacts CountDatasetImages(const std::filesystem::path& dataset_dir);

// Advises on one job. `config_toml` has overrides applied. A config the
// advisor cannot read is InvalidArgument (the same config would fail to train).
absl::StatusOr<advisor::AdviceReport> AdviseSubmit(const std::string& config_toml,
                                                   const std::filesystem::path& dataset_dir, bool force);

// "never-came-high-lr: <message>; ..." for a refused submit.
std::string DescribeNeverFindings(const advisor::AdviceReport& report);

}  // namespace lorad::server
