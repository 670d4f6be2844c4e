// DeleteDataset's steps, free of gRPC: which record and folder a name means,
// which active jobs read them, and the hide-then-remove that never leaves a
// half-deleted dataset visible. Only the datasets root is ever touched: a name
// is one plain path component, and a symlink in the root is refused, never
// followed.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "server/job_config.h"
#include "storage/job_store.h"

namespace lorad::server {

struct DatasetToDelete {
  std::string name;                              // as the client gave it
  std::optional<storage::DatasetRecord> record;  // nullopt: a folder never uploaded
  // The folder to remove, a direct child of the datasets root; empty when the
  // record's folder is already gone or lies outside the root (left in place).
  std::filesystem::path folder;
};

// Resolves a DeleteDataset name against, in order: uploaded dataset ids,
// folder names in `datasets_root` (as SubmitJob's `dataset` does), dataset
// names (labels). INVALID_ARGUMENT for anything but one plain path component
// (empty, "/", "..", a leading ".", NUL, backslash, absolute) or a label
// several datasets share; PERMISSION_DENIED for a symlink; NOT_FOUND naming
// `name` when nothing matches. `datasets_root` must be canonical.
absl::StatusOr<DatasetToDelete> FindDatasetToDelete(storage::JobStore* store,
                                                    const std::filesystem::path& datasets_root,
                                                    const std::string& name);

// QUEUED and RUNNING jobs (a sweep's pending jobs included) that read the
// dataset: their `dataset` reference is its id or folder, or resolves into its
// folder, or a data path of their prepared config (train_data_dir, image_dir,
// ...) overlaps the folder. A job whose config no longer prepares counts when
// its reference or config text names the folder (refusing beats guessing).
absl::StatusOr<std::vector<storage::JobRecord>> JobsReadingDataset(storage::JobStore* store,
                                                                   const JobRoots& roots,
                                                                   const std::filesystem::path& jobs_dir,
                                                                   const DatasetToDelete& target);

struct DeletedDataset {
  storage::DatasetRecord dataset;  // as it was (id empty for a folder never uploaded)
  // Where the folder now is, hidden (".deleting-..."), still to be removed by
  // RemoveHiddenDataset; empty when no folder went.
  std::filesystem::path hidden;
};

// The whole delete but the removal of the files: finds the dataset, refuses
// while jobs read it (FAILED_PRECONDITION naming them and what to do), drops
// the record, then renames the folder to a hidden ".deleting-" name in the
// root (one atomic rename). A crash between the two leaves a whole folder
// without a record, never a record without its folder; a failed rename puts
// the record back. Callers serialize it against submits and uploads.
absl::StatusOr<DeletedDataset> DeleteStoredDataset(storage::JobStore* store, const JobRoots& roots,
                                                   const std::filesystem::path& jobs_dir,
                                                   const std::string& name);

// Removes a folder DeleteStoredDataset hid (symlinks inside are removed, never
// followed). Returns the bytes of the regular files it held.
absl::StatusOr<int64_t> RemoveHiddenDataset(const std::filesystem::path& hidden);

}  // namespace lorad::server
