#include "server/upload_budget.h"

#include "absl/strings/str_cat.h"
#include "server/disk_space.h"

namespace lorad::server {

UploadBudget::UploadBudget(int64_t max_total_bytes, int64_t min_free_bytes, std::filesystem::path data_dir,
                           std::function<int64_t()> free_bytes)
    : max_total_bytes_(max_total_bytes),
      min_free_bytes_(min_free_bytes),
      data_dir_(std::move(data_dir)),
      free_bytes_(std::move(free_bytes)) {
  if (!free_bytes_) {
    free_bytes_ = [dir = data_dir_] { return AvailableBytes(dir); };
  }
}

absl::Status UploadBudget::Reserve(int64_t bytes) {
  const int64_t before = in_flight_.fetch_add(bytes);
  if (before + bytes > max_total_bytes_) {
    in_flight_.fetch_sub(bytes);
    return absl::ResourceExhaustedError(absl::StrCat(
        "uploads in progress would hold ", before + bytes, " bytes together, over the daemon's limit of ",
        max_total_bytes_, " bytes (max_upload_bytes in lorad.toml, counted across concurrent uploads); "
        "retry when the others finish"));
  }
  const int64_t free = free_bytes_();
  if (free - bytes < min_free_bytes_) {
    in_flight_.fetch_sub(bytes);
    return absl::ResourceExhaustedError(absl::StrCat(
        "the data dir ", data_dir_.string(), " has ", free, " bytes free; storing ", bytes,
        " more would leave less than the reserve of ", min_free_bytes_,
        " bytes (min_free_bytes in lorad.toml)"));
  }
  return absl::OkStatus();
}

void UploadBudget::Release(int64_t bytes) { in_flight_.fetch_sub(bytes); }

}  // namespace lorad::server
