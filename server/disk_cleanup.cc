#include "server/disk_cleanup.h"

#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"

namespace lorad::server {
namespace fs = std::filesystem;
namespace {

// "<anything>.tmp.<digits>", as core/io's atomic writers name their temp files.
bool IsTempFileName(const std::string& name) {
  const size_t at = name.rfind(".tmp.");
  if (at == std::string::npos || at == 0) return false;
  const std::string pid = name.substr(at + 5);
  if (pid.empty()) return false;
  for (char c : pid) {
    if (!absl::ascii_isdigit(static_cast<unsigned char>(c))) return false;
  }
  return true;
}

// Removes the entries of `root` (not below it) whose names start with
// `prefix`; remove_all deletes a symlink, never what it points at.
std::vector<fs::path> RemoveEntriesNamed(const fs::path& root, const std::string& prefix) {
  std::vector<fs::path> found;
  std::error_code ec;
  for (fs::directory_iterator it(root, ec), end; !ec && it != end; it.increment(ec)) {
    if (absl::StartsWith(it->path().filename().string(), prefix)) found.push_back(it->path());
  }
  std::vector<fs::path> removed;
  for (const auto& path : found) {  // after the walk: removing while iterating is unspecified
    std::error_code remove_ec;
    fs::remove_all(path, remove_ec);
    if (!remove_ec) removed.push_back(path);
  }
  return removed;
}

}  // namespace

std::vector<fs::path> RemoveIncompleteUploads(const fs::path& datasets_root) {
  return RemoveEntriesNamed(datasets_root, ".incoming-");
}

std::vector<fs::path> RemoveInterruptedDeletions(const fs::path& datasets_root) {
  return RemoveEntriesNamed(datasets_root, kDeletingPrefix);
}

std::vector<fs::path> RemoveTempFiles(const fs::path& output_dir) {
  std::vector<fs::path> found;
  std::error_code ec;
  for (fs::recursive_directory_iterator it(output_dir, ec), end; !ec && it != end; it.increment(ec)) {
    if (it->is_regular_file(ec) && !it->is_symlink(ec) && IsTempFileName(it->path().filename().string())) {
      found.push_back(it->path());
    }
  }
  std::vector<fs::path> removed;
  for (const auto& path : found) {  // after the walk: removing while iterating is unspecified
    if (fs::remove(path, ec)) removed.push_back(path);
  }
  return removed;
}

}  // namespace lorad::server
