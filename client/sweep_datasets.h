// `loractl sweep FILE` from a laptop (issue 13): the sweep file's dataset
// entries that name folders on this machine are uploaded (content-addressed:
// a folder the daemon already holds is not sent again) and rewritten to their
// dataset ids before the sweep is submitted.
#pragma once

#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "client/client.h"

namespace lorad::client {

// A dataset entry of a sweep file that names a local folder.
struct LocalDatasetEntry {
  std::string value;                // as written in the file
  std::filesystem::path folder;     // where it is here
  int line = 0;                     // 1-based position of its string literal
  int column = 0;
};

// The top-level `dataset` and the [sweep] `dataset` list entries that name an
// existing folder here: relative ones from `base_dir` (the sweep file's
// folder), "~/..." from $HOME. Other entries (dataset ids, folders on the
// daemon) are not listed. InvalidArgument for a file that does not parse.
absl::StatusOr<std::vector<LocalDatasetEntry>> FindLocalDatasetEntries(const std::string& sweep_toml,
                                                                       const std::filesystem::path& base_dir);

// `sweep_toml` with each entry's string literal replaced by "<its id>"
// (`ids[i]` for `entries[i]`); nothing else in the text changes (comments,
// key order: the sweep's job order depends on it). InvalidArgument when an
// entry is not a plain one-line string literal where the parser saw it.
absl::StatusOr<std::string> RewriteDatasetEntries(const std::string& sweep_toml,
                                                  const std::vector<LocalDatasetEntry>& entries,
                                                  const std::vector<std::string>& ids);

struct PreparedSweep {
  std::string sweep_toml;                             // local folders -> dataset ids
  std::map<std::string, std::string> dataset_labels;  // dataset id -> folder name (job names)
  int uploaded = 0;                                   // folders sent now
  int already_there = 0;                              // folders the daemon had
};

// FindLocalDatasetEntries, Client::EnsureDataset for each folder (once per
// folder), RewriteDatasetEntries. `note` hears one line per folder.
absl::StatusOr<PreparedSweep> UploadSweepDatasets(Client& client, const std::string& sweep_toml,
                                                  const std::filesystem::path& base_dir,
                                                  const std::function<void(const std::string&)>& note);

}  // namespace lorad::client
