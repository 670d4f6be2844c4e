#include "core/planner/curation_json.h"

#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"

namespace lorad::planner {

absl::StatusOr<DatasetFacts> FactsFromCurationJson(absl::string_view report_json, ModelFamily family,
                                                   bool from_dataset_config) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(report_json.begin(), report_json.end());
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("curation report is not JSON: ", e.what()));
  }
  if (!j.is_object() || !j.contains("images")) {
    return absl::InvalidArgumentError("curation report JSON lacks 'images' (expected lorad-curate --json output)");
  }
  try {
    DatasetFacts facts;
    facts.family = family;
    facts.image_count = j.at("images").get<int64_t>();
    facts.images_with_repeats = j.value("train_images_with_repeats", int64_t{0});
    facts.below_512 = static_cast<int64_t>(j.value("below_512", nlohmann::json::array()).size());
    facts.below_1024 = static_cast<int64_t>(j.value("below_1024", nlohmann::json::array()).size());
    for (const auto& group : j.value("exact_duplicates", nlohmann::json::array())) {
      if (!group.empty()) facts.exact_duplicates += static_cast<int64_t>(group.size()) - 1;
    }
    facts.near_duplicates = static_cast<int64_t>(j.value("near_duplicates", nlohmann::json::array()).size());
    facts.booru_captions = j.value("booru_captions", int64_t{0});
    facts.natural_captions = j.value("natural_captions", int64_t{0});
    std::vector<CaptionHead> heads;
    for (const auto& head : j.value("caption_heads", nlohmann::json::array())) {
      heads.push_back(CaptionHead{head.at("tag").get<std::string>(), head.at("position").get<int>(),
                                  head.at("count").get<int64_t>()});
    }
    const TriggerWord trigger = DetectTriggerWord(heads, j.value("captions_from_files", int64_t{0}));
    facts.trigger_word = trigger.word;
    facts.trigger_position = trigger.position;
    if (from_dataset_config) {
      std::optional<int64_t> shared;
      bool agree = true;
      for (const auto& subset : j.value("subsets", nlohmann::json::array())) {
        if (subset.value("is_reg", false)) continue;
        const int64_t keep = subset.value("keep_tokens", int64_t{0});
        if (shared && *shared != keep) agree = false;
        shared = keep;
      }
      if (agree && shared && *shared > 0) facts.keep_tokens = shared;
    }
    return facts;
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("curation report JSON has a field of the wrong type: ", e.what()));
  }
}

}  // namespace lorad::planner
