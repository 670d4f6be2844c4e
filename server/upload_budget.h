// The disk budget shared by every UploadDataset in flight: the bytes of all
// concurrent uploads together stay under max_upload_bytes, and the data dir
// keeps min_free_bytes free. A per-upload limit alone let four parallel
// uploads, each under it, all land.
#pragma once

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <functional>

#include "absl/status/status.h"

namespace lorad::server {

class UploadBudget {
 public:
  // `free_bytes` reports the data dir's available bytes; the default is
  // AvailableBytes(data_dir).
  UploadBudget(int64_t max_total_bytes, int64_t min_free_bytes, std::filesystem::path data_dir,
               std::function<int64_t()> free_bytes = nullptr);

  // Takes `bytes` more for one upload. RESOURCE_EXHAUSTED, naming the limit
  // and its lorad.toml key, when the uploads in flight would pass
  // max_upload_bytes together or the data dir would keep less than
  // min_free_bytes free; nothing is taken then.
  absl::Status Reserve(int64_t bytes);
  // Gives back what an upload reserved (when it ends, stored or not).
  void Release(int64_t bytes);
  int64_t in_flight() const { return in_flight_.load(); }

 private:
  const int64_t max_total_bytes_;
  const int64_t min_free_bytes_;
  const std::filesystem::path data_dir_;
  std::function<int64_t()> free_bytes_;
  std::atomic<int64_t> in_flight_{0};
};

}  // namespace lorad::server
