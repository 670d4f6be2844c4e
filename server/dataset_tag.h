// TagDataset's steps, free of gRPC: resolving the tagger's files under the
// models root, staging a copy of the dataset (hard links), running lorad-tag
// on the copy, and storing the result as a new content-addressed dataset.
// Datasets are immutable once stored (their id is their content's hash; jobs
// record it), so tagging never edits the source folder.
#pragma once

#include <filesystem>
#include <functional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "lorad/v1/lorad.pb.h"
#include "storage/job_store.h"

namespace lorad::server {

// A regular file at `relative` below `models_root` (canonical): one of
// ValidateRelativePath's paths, no component a symlink. INVALID_ARGUMENT /
// PERMISSION_DENIED / NOT_FOUND naming `what` and the path.
absl::StatusOr<std::filesystem::path> ResolveModelsFile(const std::filesystem::path& models_root,
                                                        const std::string& relative, const std::string& what);

// The lorad-tag arguments (after the dataset folder) for `request`, with the
// model and tag list already resolved. INVALID_ARGUMENT for a bad mode,
// threshold, keep_tokens or extension.
absl::StatusOr<std::vector<std::string>> TagArguments(const lorad::v1::TagDatasetRequest& request,
                                                      const std::filesystem::path& model,
                                                      const std::filesystem::path& tags_csv);

struct TagJob {
  std::string binary;                  // lorad-tag
  std::filesystem::path datasets_root;  // canonical
  std::filesystem::path models_root;    // canonical
  std::filesystem::path stderr_log;     // lorad-tag's stderr goes here too
};

// The whole TagDataset: resolves the dataset (as DeleteDataset does) and the
// tagger files, stages hard links of the source's files in a hidden
// ".incoming-" folder (holding `datasets_mu` shared, so no delete hides the
// source meanwhile; a symlink inside the source is refused), runs lorad-tag
// there (CANCELLED once `should_stop`), and stores the folder under its new
// content hash with a record named request.name or "<source>-tagged". The
// staging folder never outlives the call.
absl::StatusOr<lorad::v1::TagDatasetResponse> TagStoredDataset(storage::JobStore* store, absl::Mutex* datasets_mu,
                                                               const TagJob& job,
                                                               const lorad::v1::TagDatasetRequest& request,
                                                               std::function<bool()> should_stop);

}  // namespace lorad::server
