#include "server/advice.h"

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <fstream>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "core/planner/curation_json.h"
#include "spdlog/spdlog.h"

namespace lorad::server {
namespace fs = std::filesystem;
namespace {

bool IsImage(const fs::path& path) {
  std::string ext = path.extension().string();
  for (char& c : ext) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return ext == ".png" || ext == ".jpg" || ext == ".jpeg" || ext == ".webp" || ext == ".bmp";
}

// kohya's DreamBooth folder convention: "10_cat" repeats its images 10 times.
int64_t FolderRepeats(const fs::path& folder) {
  const std::string name = folder.filename().string();
  const size_t underscore = name.find('_');
  if (underscore == 0 || underscore == std::string::npos) return 1;
  for (size_t i = 0; i < underscore; ++i) {
    if (!std::isdigit(static_cast<unsigned char>(name[i]))) return 1;
  }
  const long repeats = std::strtol(name.substr(0, underscore).c_str(), nullptr, 10);
  return repeats > 0 ? repeats : 1;
}

// A dataset_config's training subsets decide the caption handling and the
// repeats. Subsets that differ are judged by the least protective one: the
// smallest keep_tokens, shuffling if any shuffles, the highest tag dropout.
void ApplyDatasetConfig(const data::ResolvedDatasets& resolved, planner::DatasetFacts* facts) {
  int64_t with_repeats = 0;
  for (const auto& group : resolved.datasets) {
    for (const auto& subset : group.subsets) {
      if (subset.is_reg) continue;
      facts->keep_tokens = std::min<int64_t>(facts->keep_tokens.value_or(subset.keep_tokens), subset.keep_tokens);
      facts->shuffle_caption = facts->shuffle_caption.value_or(false) || subset.shuffle_caption;
      facts->caption_tag_dropout_rate =
          std::max(facts->caption_tag_dropout_rate.value_or(0.0), subset.caption_tag_dropout_rate);
      with_repeats += CountDatasetImages(subset.image_dir).image_count * std::max(1, subset.num_repeats);
    }
  }
  if (with_repeats > 0) facts->images_with_repeats = with_repeats;
}

}  // namespace

planner::DatasetFacts CountDatasetImages(const fs::path& dataset_dir) {
  planner::DatasetFacts facts;
  if (dataset_dir.empty()) return facts;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(dataset_dir, ec); !ec && it != fs::end(it);
       it.increment(ec)) {
    if (!it->is_regular_file(ec) || !IsImage(it->path())) continue;
    ++facts.image_count;
    facts.images_with_repeats += FolderRepeats(it->path().parent_path());
  }
  return facts;
}

fs::path CurationCachePath(const fs::path& data_dir, const std::string& dataset_id) {
  return data_dir / "curation" / absl::StrCat(dataset_id, ".json");
}

std::string ReadCurationCache(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return "";
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

absl::Status WriteCurationCache(const fs::path& path, const std::string& report_json) {
  std::error_code ec;
  fs::create_directories(path.parent_path(), ec);
  const fs::path tmp = fs::path(path.string() + ".tmp");
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << report_json;
    out.flush();
    if (!out) {
      fs::remove(tmp, ec);
      return absl::UnavailableError(absl::StrCat("cannot write ", tmp.string()));
    }
  }
  fs::rename(tmp, path, ec);
  if (ec) {
    fs::remove(tmp, ec);
    return absl::UnavailableError(absl::StrCat("cannot rename ", tmp.string(), " to ", path.string()));
  }
  return absl::OkStatus();
}

planner::DatasetFacts SubmitDatasetFacts(const SubmitAdviceInput& input) {
  const planner::ModelFamily family = input.config.sdxl ? planner::ModelFamily::kSdxl : planner::ModelFamily::kUnknown;
  planner::DatasetFacts facts;
  bool from_report = false;
  if (!input.curation_json.empty()) {
    auto parsed = planner::FactsFromCurationJson(input.curation_json, family);
    if (parsed.ok()) {
      facts = *std::move(parsed);
      from_report = true;
    } else {
      spdlog::warn("curation report of {} unusable for the advisor ({}); counting its images instead",
                   input.dataset_dir.string(), std::string(parsed.status().message()));
    }
  }
  if (!from_report) {
    facts = CountDatasetImages(input.dataset_dir);
    facts.family = family;
  }
  if (input.dataset_config) ApplyDatasetConfig(*input.dataset_config, &facts);
  return facts;
}

planner::AdviceReport AdviseSubmit(const SubmitAdviceInput& input) {
  planner::AdvisorInput advisor;
  advisor.config = input.config;
  advisor.dataset = SubmitDatasetFacts(input);
  advisor.kind = input.kind;
  planner::AdviseOptions options;
  options.force = input.force;
  return planner::Advise(advisor, options);
}

std::string DescribeNeverFindings(const planner::AdviceReport& report) {
  std::string text;
  for (const auto& finding : report.never_findings()) {
    absl::StrAppend(&text, text.empty() ? "" : "; ", finding.rule_id, ": ", finding.message);
  }
  return text;
}

}  // namespace lorad::server
