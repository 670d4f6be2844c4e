// DatasetFacts from a curation report's JSON (`lorad-curate --json`, or the
// daemon's InspectDataset.report_json), for clients that do not link core/data.
// FactsFromCurationReport (curation_facts.h) goes through this too: one reading
// of a report. The trigger word comes from the report's caption_heads.
#pragma once

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/planner/advisor.h"

namespace lorad::planner {

// InvalidArgument when the text is not a curation report (names the field).
absl::StatusOr<DatasetFacts> FactsFromCurationJson(absl::string_view report_json, ModelFamily family,
                                                   bool from_dataset_config = false);

}  // namespace lorad::planner
