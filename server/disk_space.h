// Free space on the disk under the daemon's data dir: what upload quotas and
// failed jobs' reasons read.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

namespace lorad::server {

// Below this many free bytes a disk counts as full: a job's next checkpoint or
// the database's next page would not fit.
inline constexpr int64_t kFullDiskBytes = int64_t{64} << 20;

// statvfs(path): f_bavail * f_frsize, the bytes an unprivileged writer may
// still use. INT64_MAX when it cannot be read (unknown space blocks nothing;
// the write itself then reports a full disk).
int64_t AvailableBytes(const std::filesystem::path& path);

// "; the disk holding <dir> is full (<n> bytes free): free space there, then
// resubmit the job" when `available_bytes` < kFullDiskBytes, else "". Appended
// to the reason of a failed job.
std::string FullDiskNote(const std::filesystem::path& dir, int64_t available_bytes);
// The same with AvailableBytes(dir).
std::string FullDiskNote(const std::filesystem::path& dir);

}  // namespace lorad::server
