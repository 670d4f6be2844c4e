// Worker events -> what the store records. The mapping is pure: the facts it
// needs about a reported file (where it really is, its size, its sha256) are
// read beforehand by InspectArtifactFile, the only part that touches the disk.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "lorad/v1/events.pb.h"
#include "storage/job_store.h"

namespace lorad::server {

// The job folder, with symlinks resolved (as InspectArtifactFile resolves).
struct JobFolder {
  std::filesystem::path dir;     // <jobs_dir>/<id>
  std::filesystem::path output;  // dir/output
};

// What the disk says about a file an event reports.
struct ArtifactFile {
  std::filesystem::path path;  // absolute, symlinks of its existing prefix and ".." resolved
  bool inside_job = false;     // `path` is the job folder or below it
  bool is_directory = false;
  int64_t bytes = 0;           // a folder: the sum of its regular files
  std::string sha256;          // hex; computed only when asked; empty for a folder
};

// The file a Checkpoint or Sample event names; nullopt for other events (and
// for an empty path).
std::optional<std::filesystem::path> ReportedArtifactPath(const lorad::v1::Event& event);

// Resolves `reported` and reads its size and kind; hashes a regular file when
// `want_sha256` (the worker sent no sha256) and it lies inside the job
// folder. Touches the disk; never fails
// (a missing file reads as 0 bytes, not a folder, no hash).
ArtifactFile InspectArtifactFile(const std::filesystem::path& reported, const JobFolder& job, bool want_sha256);

// A JobFolder for `job_dir` with symlinks resolved.
JobFolder ResolveJobFolder(const std::filesystem::path& job_dir);

struct MappedEvent {
  // The writes to commit, in order: a WARN log first when the worker
  // reported a file outside its job folder (then the event carries no
  // artifact), then the event itself. Empty for a Finished event.
  std::vector<storage::EventWrite> writes;
  // The worker's Finished event: the daemon records the job's end itself,
  // with the exit status, so it is not written here.
  std::optional<lorad::v1::Finished> finished;
  std::optional<int64_t> step;      // a Progress event's step
  std::optional<std::string> lora;  // the path of a LoRA artifact recorded
};

// Maps one worker event. `file` is InspectArtifactFile's answer for
// ReportedArtifactPath(event) (nullopt when the event names no file);
// `now_ms` stamps the WARN log it may add. Pure.
MappedEvent MapWorkerEvent(lorad::v1::Event event, const std::optional<ArtifactFile>& file, const JobFolder& job,
                           int64_t now_ms);

}  // namespace lorad::server
