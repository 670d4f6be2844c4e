#include "server/advice.h"

#include <cctype>
#include <cstdlib>
#include <system_error>

#include "absl/strings/str_cat.h"

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

planner::AdviceReport AdviseSubmit(const train::TrainConfig& config, const fs::path& dataset_dir, bool force) {
  planner::AdvisorInput input;
  input.config = config;
  input.dataset = CountDatasetImages(dataset_dir);
  planner::AdviseOptions options;
  options.force = force;
  return planner::Advise(input, options);
}

std::string DescribeNeverFindings(const planner::AdviceReport& report) {
  std::string text;
  for (const auto& finding : report.never_findings()) {
    absl::StrAppend(&text, text.empty() ? "" : "; ", finding.rule_id, ": ", finding.message);
  }
  return text;
}

}  // namespace lorad::server
