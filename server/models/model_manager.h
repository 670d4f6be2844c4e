// ModelManager: base models as records (issue 13). A model is stored once,
// content-addressed, at <models_root>/sha256/<hex>.safetensors; its name is a
// record, never a file name the user controls. Pulls download in the
// background on a small pool (HTTP Range resume after a network failure or a
// daemon restart, sha256 verified before the model becomes usable); uploads
// arrive through the UploadModel reactor (model_rpc.h) and resume at the
// bytes already received. A job that names a model still arriving stays
// queued (JobStore::ClaimNext) until it is READY; a failed model fails the
// jobs that waited on it with the reason. Thread-safe.
#pragma once

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "server/event_hub.h"
#include "server/models/model_sources.h"
#include "server/net/http_client.h"
#include "server/task_pool.h"
#include "storage/job_store.h"

namespace lorad::server {

struct ModelManagerOptions {
  std::filesystem::path models_root;
  // Free space the models' disk keeps: an upload or pull that would leave
  // less is refused (models_free_reserve_gb).
  int64_t free_reserve_bytes = int64_t{5} << 30;
  PullSourceOptions sources;
  net::HttpClientOptions http;
  int parallel_pulls = 2;
};

// What a header says about a checkpoint: family from the tensor names,
// prediction and lineage from core/models/base_model.h.
struct ModelFacts {
  std::string family;      // "sdxl" | "sd2" | "sd15" | "unknown"
  std::string prediction;  // "epsilon" | "v" | "edm"
  std::string lineage;
};
// INVALID_ARGUMENT when `path` is not a safetensors file.
absl::StatusOr<ModelFacts> ReadModelFacts(const std::filesystem::path& path);

// A TOML basic string holding `text` (for ApplyOverrides).
std::string TomlQuoted(const std::string& text);

class ModelManager {
 public:
  // `store` and `hub` are borrowed and outlive the manager; `model_ready`
  // (e.g. the scheduler's NotifyQueued) runs when a model becomes READY.
  ModelManager(storage::JobStore* store, EventHub* hub, std::function<void()> model_ready,
               ModelManagerOptions options);
  ~ModelManager();
  ModelManager(const ModelManager&) = delete;
  ModelManager& operator=(const ModelManager&) = delete;

  // Creates the folders and resumes every pull a previous daemon left
  // unfinished (uploads wait for their client to come back).
  absl::Status Start();
  // Stops the pulls (their partial files stay for the next start). Idempotent.
  void Shutdown();

  // Records the model and queues its download; returns at once. The same URL
  // or sha256 already pulled or on its way returns that record (no second
  // download); a FAILED record of the same name starts over.
  absl::StatusOr<storage::ModelRecord> Pull(const std::string& url, const std::string& sha256,
                                            const std::string& name);
  // By name, "sha256:<hex>", a unique sha256 prefix (8+ hex digits) or "#<id>".
  absl::StatusOr<storage::ModelRecord> Find(const std::string& reference);
  absl::StatusOr<std::vector<storage::ModelRecord>> List();
  // Refused while a queued or running job uses it; stops its download; removes its files.
  absl::StatusOr<storage::ModelRecord> Delete(const std::string& reference);

  // SubmitJob: when pretrained_model_name_or_path names a model record rather
  // than an existing file, rewrites it to the record's file and returns the
  // record's id (the job then waits until the model is READY). A plain path
  // stays as it is (its id is set when it is a record's file).
  struct JobModel {
    std::string config_toml;
    int64_t model_id = 0;
  };
  absl::StatusOr<JobModel> ResolveJobModel(const std::string& config_toml);

  // Uploads (model_rpc.cc). BeginUpload checks the hash, the size, the name,
  // the offset (= the bytes already received, else FAILED_PRECONDITION naming
  // them) and the free-space reserve; the record is then held by this upload
  // until EndUpload. A model already READY comes back with `ready` set.
  struct UploadTicket {
    storage::ModelRecord record;
    std::filesystem::path partial;
    bool ready = false;
  };
  absl::StatusOr<UploadTicket> BeginUpload(const std::string& sha256, int64_t size, const std::string& name,
                                           int64_t offset);
  void UploadProgress(int64_t model_id, int64_t bytes_done);
  // Verifies and stores a fully received upload on the check pool; `done`
  // runs once, there.
  void CompleteUploadAsync(int64_t model_id, std::function<void(absl::StatusOr<storage::ModelRecord>)> done);
  void EndUpload(int64_t model_id);

  // Calls `watcher` with the record after each change of model `model_id`
  // (progress at most every 250 ms). Returns a token for Unwatch.
  using Watcher = std::function<void(const storage::ModelRecord&)>;
  int64_t Watch(int64_t model_id, Watcher watcher);
  void Unwatch(int64_t token);

  std::filesystem::path StoredPath(const std::string& sha256) const;
  std::filesystem::path PartialPath(int64_t model_id) const;

 private:
  void RunPull(int64_t model_id, const std::atomic<bool>& stopping);
  // Hashes, checks and moves a complete file into place; READY or FAILED.
  absl::StatusOr<storage::ModelRecord> Finalize(storage::ModelRecord record);
  void Fail(int64_t model_id, const std::string& reason);
  void Notify(int64_t model_id);
  // RESOURCE_EXHAUSTED when writing `more_bytes` would leave less than the reserve.
  absl::Status CheckReserve(int64_t more_bytes) const;
  absl::Status QueuePull(int64_t model_id);

  storage::JobStore* store_;
  EventHub* hub_;
  const std::function<void()> model_ready_;
  const ModelManagerOptions options_;
  const net::HttpClient http_;
  absl::Mutex mu_;
  std::set<int64_t> busy_ ABSL_GUARDED_BY(mu_);       // pulls and uploads in flight
  std::set<int64_t> abandon_ ABSL_GUARDED_BY(mu_);    // deleted while in flight
  int64_t next_token_ ABSL_GUARDED_BY(mu_) = 1;
  std::map<int64_t, std::pair<int64_t, Watcher>> watchers_ ABSL_GUARDED_BY(mu_);
  // Declared last: destroyed (and joined) first.
  TaskPool check_pool_{"model checks", 1, 16};
  TaskPool pull_pool_;
};

}  // namespace lorad::server
