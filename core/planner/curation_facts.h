// Bridges core/data's curation report to the advisor's DatasetFacts. A separate
// library (lorad_planner_data) because core/data brings LibTorch and OpenCV,
// which lorad_planner itself stays free of.
#pragma once

#include "absl/status/statusor.h"

#include "core/planner/advisor.h"
#include "core/data/curation.h"

namespace lorad::planner {

// images, images_with_repeats (training subsets), below_512/below_1024,
// duplicates (each identical group of n files counts n-1), near-duplicate
// pairs, caption style counts, the trigger word (from the report's
// caption_heads), and keep_tokens when every training subset of a
// dataset_config agrees on a non-zero value (`from_dataset_config`). The same
// reading as FactsFromCurationJson (it goes through the report's JSON).
absl::StatusOr<DatasetFacts> FactsFromCurationReport(const data::CurationReport& report, ModelFamily family,
                                                     bool from_dataset_config = false);

}  // namespace lorad::planner
