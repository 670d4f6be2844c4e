#include "core/planner/curation_facts.h"

#include "core/planner/curation_json.h"

namespace lorad::planner {

absl::StatusOr<DatasetFacts> FactsFromCurationReport(const data::CurationReport& report, ModelFamily family,
                                                     bool from_dataset_config) {
  // The report's JSON is its full form; one reader (curation_json) for both.
  return FactsFromCurationJson(report.ToJson(), family, from_dataset_config);
}

}  // namespace lorad::planner
