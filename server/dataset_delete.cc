#include "server/dataset_delete.h"

#include <algorithm>
#include <random>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/base/status_macros.h"
#include "server/disk_cleanup.h"
#include "server/paths.h"
#include "server/scheduler.h"
#include "spdlog/spdlog.h"

namespace lorad::server {
namespace fs = std::filesystem;
namespace {

std::string Quoted(const std::string& name) { return absl::StrCat("\"", absl::CHexEscape(name.substr(0, 80)), "\""); }

// The upload rule for paths (ValidateRelativePath), narrowed to one component:
// a dataset is a direct child of the root, and hidden names (.incoming-,
// .deleting-) are the daemon's own.
absl::Status CheckPlainName(const std::string& name) {
  if (ValidateRelativePath(name).ok() && name.size() <= 255 && name.find('/') == std::string::npos &&
      name.front() != '.') {
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "dataset ", Quoted(name), " is not a plain dataset name (one path component: no \"/\", \"..\", leading "
      "\".\" or absolute path); give an id or name from `loractl datasets ls`"));
}

absl::Status RefuseSymlink(const fs::path& root, const fs::path& link, const std::string& name) {
  std::error_code ec;
  const fs::path target = fs::read_symlink(link, ec);
  const bool inside = IsWithin(root, link.parent_path() / target);
  return absl::PermissionDeniedError(absl::StrCat(
      "dataset ", Quoted(name), " is a symbolic link in the datasets root (to ", target.string(),
      inside ? "" : ", outside the root",
      "); lorad deletes only folders it stores there, never what a link points at: remove the link by hand"));
}

// The folder an uploaded dataset's record names, if lorad may delete it: a
// real folder directly in `root`. Empty when it is gone, or stored outside
// the root (datasets_root changed since the upload): then only the record goes.
absl::StatusOr<fs::path> RecordFolder(const fs::path& root, const storage::DatasetRecord& record,
                                      const std::string& name) {
  const fs::path folder(record.path);
  std::error_code ec;
  const fs::file_status status = fs::symlink_status(folder, ec);
  if (ec || !fs::exists(status)) return fs::path();
  if (fs::is_symlink(status)) return RefuseSymlink(root, folder, name);
  const fs::path parent = fs::canonical(folder.parent_path(), ec);
  if (ec || parent != root || !fs::is_directory(status)) {
    spdlog::warn("dataset {}: its folder {} is not a folder in the datasets root {}; only its record is deleted",
                 record.id, record.path, root.string());
    return fs::path();
  }
  return root / folder.filename();
}

bool ReadsDataset(storage::JobStore* store, const JobRoots& roots, const fs::path& jobs_dir,
                  const DatasetToDelete& target, const storage::JobRecord& job) {
  if (target.record && job.dataset == target.record->id) return true;
  if (target.folder.empty()) return false;  // only the record goes: only its id matters
  const std::string folder_name = target.folder.filename().string();
  if (job.dataset == folder_name) return true;
  auto overlaps = [&](const fs::path& path) {
    return IsWithin(target.folder, path) || IsWithin(path, target.folder);
  };
  auto dataset_dir = Scheduler::ResolveDataset(store, roots, job.dataset);
  if (dataset_dir.ok() && !dataset_dir->empty() && overlaps(*dataset_dir)) return true;
  // What the worker reads: the same preparation the scheduler runs at dispatch.
  JobConfigInput input{job.config_toml, job.dataset_config_toml, dataset_dir.ok() ? *dataset_dir : fs::path(),
                       jobs_dir / std::to_string(job.id)};
  auto prepared = PrepareJobConfig(input, roots);
  if (prepared.ok()) {
    for (const auto& path : DataPaths(*prepared)) {
      if (overlaps(path)) return true;
    }
    return false;
  }
  return absl::StrContains(job.dataset, folder_name) || absl::StrContains(job.config_toml, folder_name) ||
         absl::StrContains(job.dataset_config_toml, folder_name);
}

std::string DescribeJobs(const std::vector<storage::JobRecord>& jobs) {
  std::string text;
  const size_t shown = std::min<size_t>(jobs.size(), 10);
  for (size_t i = 0; i < shown; ++i) {
    absl::StrAppend(&text, i == 0 ? "" : ", ", jobs[i].id, " '", jobs[i].name, "' (",
                    storage::JobStateName(jobs[i].state), ")");
  }
  if (jobs.size() > shown) absl::StrAppend(&text, " and ", jobs.size() - shown, " more");
  return text;
}

// Renames `folder` to a hidden ".deleting-<random>-<name>" beside it: one
// rename in one directory, so the dataset is whole or gone, never half.
absl::StatusOr<fs::path> HideForDeletion(const fs::path& folder) {
  std::random_device rd;
  const fs::path hidden = folder.parent_path() / absl::StrCat(kDeletingPrefix, absl::StrFormat("%08x%08x", rd(), rd()),
                                                              "-", folder.filename().string().substr(0, 200));
  std::error_code ec;
  fs::rename(folder, hidden, ec);
  if (ec) {
    return absl::InternalError(absl::StrCat("cannot move ", folder.string(), " aside to delete it: ",
                                            ec.message(), "; nothing was deleted"));
  }
  return hidden;
}

}  // namespace

absl::StatusOr<DatasetToDelete> FindDatasetToDelete(storage::JobStore* store, const fs::path& datasets_root,
                                                    const std::string& name) {
  RETURN_IF_ERROR(CheckPlainName(name));
  DatasetToDelete target;
  target.name = name;
  auto record = store->GetDataset(name);
  if (!record.ok() && record.status().code() != absl::StatusCode::kNotFound) return record.status();
  if (!record.ok()) {
    // A folder in the root, as SubmitJob's `dataset` may name one.
    const fs::path folder = datasets_root / name;
    std::error_code ec;
    const fs::file_status status = fs::symlink_status(folder, ec);
    if (fs::is_symlink(status)) return RefuseSymlink(datasets_root, folder, name);
    if (fs::is_directory(status)) {
      target.folder = folder;
      return target;
    }
    if (fs::exists(status)) {
      return absl::InvalidArgumentError(absl::StrCat("dataset ", Quoted(name),
                                                     " is a file in the datasets root, not a dataset folder"));
    }
    // A name (label) given at upload, when only one dataset has it.
    ASSIGN_OR_RETURN(std::vector<storage::DatasetRecord> all, store->ListDatasets());
    std::vector<storage::DatasetRecord> named;
    for (auto& d : all) {
      if (d.name == name) named.push_back(std::move(d));
    }
    if (named.empty()) {
      return absl::NotFoundError(absl::StrCat(
          "dataset ", Quoted(name), " not found: no uploaded dataset has that id or name, and the datasets root ",
          datasets_root.string(), " has no folder of that name (see `loractl datasets ls`)"));
    }
    if (named.size() > 1) {
      std::string ids;
      for (const auto& d : named) absl::StrAppend(&ids, ids.empty() ? "" : ", ", d.id);
      return absl::InvalidArgumentError(absl::StrCat("several datasets are named ", Quoted(name), " (ids ", ids,
                                                     "); delete one by its id"));
    }
    record = std::move(named[0]);
  }
  ASSIGN_OR_RETURN(target.folder, RecordFolder(datasets_root, *record, name));
  target.record = std::move(*record);
  return target;
}

absl::StatusOr<std::vector<storage::JobRecord>> JobsReadingDataset(storage::JobStore* store,
                                                                   const JobRoots& roots,
                                                                   const fs::path& jobs_dir,
                                                                   const DatasetToDelete& target) {
  storage::JobFilter filter;
  filter.states = {storage::JobState::kQueued, storage::JobState::kRunning};
  filter.page_size = 1000;
  std::vector<storage::JobRecord> readers;
  while (true) {
    ASSIGN_OR_RETURN(storage::JobPage page, store->ListJobs(filter));
    for (auto& job : page.jobs) {
      if (ReadsDataset(store, roots, jobs_dir, target, job)) readers.push_back(std::move(job));
    }
    if (page.next_before_id == 0) break;
    filter.before_id = page.next_before_id;
  }
  std::reverse(readers.begin(), readers.end());  // oldest first, as they run
  return readers;
}

absl::StatusOr<DeletedDataset> DeleteStoredDataset(storage::JobStore* store, const JobRoots& roots,
                                                   const fs::path& jobs_dir, const std::string& name) {
  ASSIGN_OR_RETURN(DatasetToDelete target, FindDatasetToDelete(store, roots.datasets_root, name));
  ASSIGN_OR_RETURN(std::vector<storage::JobRecord> readers, JobsReadingDataset(store, roots, jobs_dir, target));
  if (!readers.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "dataset ", Quoted(name), " is used by ", readers.size() == 1 ? "job " : "jobs ", DescribeJobs(readers),
        "; cancel them (`loractl cancel JOB`, `loractl sweep cancel SWEEP`) or wait until they end, then "
        "delete it again"));
  }
  DeletedDataset deleted;
  if (target.record) {
    deleted.dataset = *target.record;
    RETURN_IF_ERROR(store->DeleteDataset(target.record->id));
  } else {
    deleted.dataset.name = target.folder.filename().string();
    deleted.dataset.path = target.folder.string();
  }
  if (target.folder.empty()) return deleted;
  auto hidden = HideForDeletion(target.folder);
  if (!hidden.ok()) {
    // The folder is still whole: give it its record back (a new created time).
    if (target.record) {
      if (auto restored = store->PutDataset(*target.record); !restored.ok()) {
        spdlog::error("dataset {}: cannot restore its record: {}", target.record->id, restored.status().ToString());
      }
    }
    return hidden.status();
  }
  deleted.hidden = *std::move(hidden);
  return deleted;
}

absl::StatusOr<int64_t> RemoveHiddenDataset(const fs::path& hidden) {
  int64_t bytes = 0;
  std::error_code ec;
  // The default options never descend into a symlinked folder.
  for (fs::recursive_directory_iterator it(hidden, ec), end; !ec && it != end; it.increment(ec)) {
    std::error_code entry_ec;
    const fs::file_status status = it->symlink_status(entry_ec);
    if (entry_ec || !fs::is_regular_file(status)) continue;
    const uintmax_t size = it->file_size(entry_ec);
    if (!entry_ec) bytes += static_cast<int64_t>(size);
  }
  fs::remove_all(hidden, ec);
  if (ec) {
    return absl::InternalError(absl::StrCat("cannot remove ", hidden.string(), ": ", ec.message(),
                                            " (lorad removes it at its next start)"));
  }
  return bytes;
}

}  // namespace lorad::server
