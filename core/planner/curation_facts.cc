#include "core/planner/curation_facts.h"

#include <string>
#include <vector>

namespace lorad::planner {

DatasetFacts FactsFromCurationReport(const data::CurationReport& report, ModelFamily family,
                                     bool from_dataset_config) {
  DatasetFacts facts;
  facts.family = family;
  facts.image_count = report.images;
  facts.images_with_repeats = report.train_with_repeats;
  facts.below_512 = static_cast<int64_t>(report.below_512.size());
  facts.below_1024 = static_cast<int64_t>(report.below_1024.size());
  for (const auto& group : report.exact_duplicates) {
    if (!group.empty()) facts.exact_duplicates += static_cast<int64_t>(group.size()) - 1;
  }
  facts.near_duplicates = static_cast<int64_t>(report.near_duplicates.size());
  facts.booru_captions = report.booru_captions;
  facts.natural_captions = report.natural_captions;
  std::vector<std::string> captions;
  for (const auto& preview : report.keep_tokens_preview) {
    if (preview.kept.empty()) {
      captions.push_back(preview.rest);
    } else {
      captions.push_back(preview.rest.empty() ? preview.kept : preview.kept + ", " + preview.rest);
    }
  }
  facts.leading_trigger_word = DetectLeadingTriggerWord(captions);
  if (from_dataset_config) {
    std::optional<int64_t> shared;
    bool agree = true;
    for (const auto& subset : report.subsets) {
      if (subset.is_reg) continue;
      if (shared && *shared != subset.keep_tokens) agree = false;
      shared = subset.keep_tokens;
    }
    if (agree && shared && *shared > 0) facts.keep_tokens = shared;
  }
  return facts;
}

}  // namespace lorad::planner
