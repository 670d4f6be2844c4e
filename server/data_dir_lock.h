// One lorad per data dir: an exclusive flock on <data_dir>/lorad.lock, held for
// the process lifetime. Two daemons on one data dir would run two jobs on one
// slot and re-queue each other's running jobs on restart.
#pragma once

#include <filesystem>
#include <memory>

#include "absl/status/statusor.h"

namespace lorad::server {

class DataDirLock {
 public:
  // Takes the lock without waiting and writes this process's pid into the
  // file. FAILED_PRECONDITION names the data dir and the holder's pid when
  // another process holds it; INTERNAL when the file cannot be opened.
  static absl::StatusOr<std::unique_ptr<DataDirLock>> Acquire(const std::filesystem::path& data_dir);

  ~DataDirLock();  // releases the lock (the file stays; its pid is stale then)
  DataDirLock(const DataDirLock&) = delete;
  DataDirLock& operator=(const DataDirLock&) = delete;

  const std::filesystem::path& path() const { return path_; }

 private:
  DataDirLock(std::filesystem::path path, int fd) : path_(std::move(path)), fd_(fd) {}
  std::filesystem::path path_;
  int fd_;
};

}  // namespace lorad::server
