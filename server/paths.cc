#include "server/paths.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace lorad::server {

namespace fs = std::filesystem;

bool IsWithin(const fs::path& root, const fs::path& path) {
  std::error_code ec;
  const fs::path r = fs::weakly_canonical(root, ec);
  if (ec) return false;
  const fs::path p = fs::weakly_canonical(path, ec);
  if (ec) return false;
  auto ri = r.begin();
  auto pi = p.begin();
  for (; ri != r.end(); ++ri, ++pi) {
    if (ri->empty()) continue;  // trailing separator
    if (pi == p.end() || *ri != *pi) return false;
  }
  return true;
}

absl::StatusOr<fs::path> ConfinePath(const std::string& key, const std::string& value,
                                     const fs::path& base, const std::vector<fs::path>& roots) {
  if (value.empty()) return absl::InvalidArgumentError(absl::StrCat(key, " is empty"));
  fs::path candidate(value);
  if (candidate.is_relative()) candidate = base / candidate;
  std::error_code ec;
  const fs::path resolved = fs::weakly_canonical(candidate, ec);
  if (ec) {
    return absl::InvalidArgumentError(absl::StrCat(key, " = \"", value, "\": ", ec.message()));
  }
  for (const auto& root : roots) {
    if (IsWithin(root, resolved)) return resolved;
  }
  std::vector<std::string> names;
  for (const auto& root : roots) names.push_back(root.string());
  return absl::PermissionDeniedError(absl::StrCat(
      key, " = \"", value, "\" resolves to ", resolved.string(),
      ", outside the daemon's allowed roots (", absl::StrJoin(names, ", "),
      "); put the file under one of them or add a root in lorad.toml (allowed_roots)"));
}

absl::Status ValidateRelativePath(const std::string& relative) {
  if (relative.empty()) return absl::InvalidArgumentError("empty file path in upload");
  if (relative.size() > 512) {
    return absl::InvalidArgumentError(absl::StrCat("upload path longer than 512 bytes: ",
                                                   relative.substr(0, 64), "..."));
  }
  if (relative.find('\0') != std::string::npos || relative.find('\\') != std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat("upload path \"", relative,
                                                   "\" contains NUL or backslash"));
  }
  if (relative.front() == '/') {
    return absl::InvalidArgumentError(absl::StrCat("upload path \"", relative,
                                                   "\" is absolute; send paths relative to the dataset folder"));
  }
  for (absl::string_view part : absl::StrSplit(relative, '/')) {
    if (part.empty() || part == "." || part == "..") {
      return absl::InvalidArgumentError(absl::StrCat(
          "upload path \"", relative, "\" has an empty, \".\" or \"..\" component (path traversal refused)"));
    }
  }
  return absl::OkStatus();
}

}  // namespace lorad::server
