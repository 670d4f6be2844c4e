#include "server/disk_space.h"

#include <sys/statvfs.h>

#include <limits>

#include "absl/strings/str_cat.h"

namespace lorad::server {

int64_t AvailableBytes(const std::filesystem::path& path) {
  struct statvfs st {};
  if (statvfs(path.c_str(), &st) != 0) return std::numeric_limits<int64_t>::max();
  return static_cast<int64_t>(st.f_bavail) * static_cast<int64_t>(st.f_frsize);
}

std::string FullDiskNote(const std::filesystem::path& dir, int64_t available_bytes) {
  if (available_bytes >= kFullDiskBytes) return "";
  return absl::StrCat("; the disk holding ", dir.string(), " is full (", available_bytes,
                      " bytes free): free space there, then resubmit the job");
}

std::string FullDiskNote(const std::filesystem::path& dir) { return FullDiskNote(dir, AvailableBytes(dir)); }

}  // namespace lorad::server
