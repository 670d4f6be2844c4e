// JobStore: the daemon's durable records in one SQLite file — jobs,
// hyperparameters (one row per key), metrics, events, artifacts, datasets, sweeps.
// Every write is one BEGIN IMMEDIATE transaction committed before the call
// returns, so a caller may acknowledge or stream what it wrote.
// Thread-safe (one connection behind a mutex). Knows nothing of gRPC or LibTorch.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "core/base/clock.h"
#include "lorad/v1/events.pb.h"
#include "storage/sqlite.h"

namespace lorad::storage {

// Same numbers as lorad.v1.JobState.
enum class JobState : int { kQueued = 1, kRunning = 2, kSucceeded = 3, kFailed = 4, kCancelled = 5 };
bool IsTerminal(JobState state);
const char* JobStateName(JobState state);

// GPU time and what it cost (issue 13). gpu_seconds: the running time of
// each attempt times the GPUs (CPU slots: 1) it held; cost: the same at the
// price per GPU-hour in force when the attempt started.
struct Usage {
  double gpu_seconds = 0;
  double cost = 0;
  Usage& operator+=(const Usage& other) {
    gpu_seconds += other.gpu_seconds;
    cost += other.cost;
    return *this;
  }
};

// What a slot's attempt is charged: its GPUs (1 for a CPU slot) and the
// box's price_per_hour divided among the box's GPUs.
struct SlotCharge {
  int gpus = 1;
  double price_per_gpu_hour = 0;
};

// One start of a job on a slot; ended_ms is 0 while it runs.
struct AttemptRecord {
  int64_t job_id = 0;
  int attempt = 0;
  int slot = -1;
  int gpus = 1;
  double price_per_gpu_hour = 0;
  int64_t started_ms = 0;
  int64_t ended_ms = 0;
};

// Sums `attempts`, each counted from max(started, since_ms) to its end (an
// open attempt: to now_ms). Pure arithmetic.
Usage SumUsage(const std::vector<AttemptRecord>& attempts, int64_t now_ms, int64_t since_ms = 0);

// A daemon-wide event (not a job's): the idle switch ran its command, ...
struct ServerEventRecord {
  int64_t id = 0;
  int64_t time_ms = 0;
  std::string kind;  // "idle_command", ...
  std::string message;
};

struct JobSpec {
  std::string name;
  int priority = 0;
  std::string request_id;  // empty: no idempotency
  std::string sweep;       // sweep name, created on first use; empty: none
  std::string dataset;
  std::string config_toml;
  std::string dataset_config_toml;
  std::map<std::string, std::string> hyperparameters;  // submitted kohya keys
  // The model record the job's base model is (0: a plain path). ClaimNext
  // leaves the job queued until that record is READY.
  int64_t model_id = 0;
};

struct JobRecord {
  int64_t id = 0;
  std::string name;
  JobState state = JobState::kQueued;
  int priority = 0;
  std::string request_id;
  std::string sweep;
  std::string dataset;
  std::string config_toml;
  std::string dataset_config_toml;
  int64_t created_ms = 0;
  int64_t started_ms = 0;
  int64_t finished_ms = 0;
  int64_t step = 0;
  int64_t total_steps = 0;
  double loss = 0;
  std::string reason;
  int exit_code = 0;
  int term_signal = 0;
  int slot = -1;
  int attempts = 0;
  int64_t last_seq = 0;
  std::string final_lora_path;
  int64_t resumed_from_step = 0;
  bool cancel_requested = false;
  Usage usage;  // filled by GetJob and ListJobs; a running attempt counts up to now
};

struct StoredEvent {
  int64_t job_id = 0;
  int64_t seq = 0;
  lorad::v1::Event event;
};

struct ArtifactRecord {
  int64_t id = 0;
  int64_t job_id = 0;
  lorad::v1::ArtifactKind kind = lorad::v1::ARTIFACT_KIND_UNSPECIFIED;
  std::string path;  // absolute, on this machine
  std::string name;  // relative to the job's output folder
  int64_t bytes = 0;
  std::string sha256;
  int64_t step = 0;
  int64_t created_ms = 0;
  bool is_directory = false;
  bool is_final = false;
};

struct DatasetRecord {
  std::string id;
  std::string name;
  std::string path;
  int64_t bytes = 0;
  int files = 0;
  int images = 0;
  int64_t created_ms = 0;
};

// Same numbers as lorad.v1.ModelState.
enum class ModelState : int { kDownloading = 1, kUploading = 2, kReady = 3, kFailed = 4 };
const char* ModelStateName(ModelState state);

// A base model (issue 13): content-addressed by sha256 under the models root.
struct ModelRecord {
  int64_t id = 0;
  std::string sha256;        // empty while a pull without a given hash runs
  std::string name;
  std::string path;          // the stored file once READY
  std::string partial_path;  // where a download or upload in progress writes
  int64_t bytes = 0;         // total (0: unknown yet)
  int64_t bytes_done = 0;
  std::string family;
  std::string prediction;
  std::string lineage;
  std::string source_url;    // as given (may carry a token: never shown unredacted)
  ModelState state = ModelState::kDownloading;
  std::string reason;
  int64_t created_ms = 0;
};

struct SweepRecord {
  int64_t id = 0;
  std::string name;
  int64_t created_ms = 0;
  std::string mode = "grid";             // "grid" | "zip"
  std::vector<std::string> varied_keys;  // [sweep] table order
};

struct JobFilter {
  std::vector<JobState> states;  // empty: any
  std::string name_contains;
  std::string sweep;
  int page_size = 50;
  int64_t before_id = 0;  // paging: only ids < before_id (0: from the newest)
};

struct JobPage {
  std::vector<JobRecord> jobs;
  int64_t next_before_id = 0;  // 0 on the last page
};

// How a job ends, written atomically with its final event.
struct JobEnd {
  JobState state = JobState::kFailed;
  std::string reason;
  int exit_code = 0;
  int term_signal = 0;
};

// One event to record, plus what it implies, all in one transaction.
struct EventWrite {
  lorad::v1::Event event;
  std::optional<ArtifactRecord> artifact;  // recorded with the event
  std::optional<JobEnd> end;               // the job's terminal transition
};

struct SubmitResult {
  JobRecord job;
  bool created = false;  // false: an earlier submit with the same request_id
  std::vector<StoredEvent> events;  // recorded by this call (the "queued" event)
};

struct CancelResult {
  JobRecord job;
  std::vector<StoredEvent> events;  // recorded by this call
  bool needs_signal = false;  // the job is running: the supervisor must stop it
};

class JobStore {
 public:
  // Opens or creates the database at `path` and migrates it. `clock` (borrowed,
  // outlives the store) stamps every record; tests pass a fake one.
  static absl::StatusOr<std::unique_ptr<JobStore>> Open(const std::string& path,
                                                        const Clock* clock = Clock::Real());

  // Queues a job (or returns the one with the same request_id) and records its
  // "queued" event.
  absl::StatusOr<SubmitResult> Submit(const JobSpec& spec);
  absl::StatusOr<JobRecord> GetJob(int64_t job_id);
  absl::StatusOr<std::map<std::string, std::string>> GetHyperparameters(int64_t job_id);
  absl::StatusOr<JobPage> ListJobs(const JobFilter& filter);
  // Highest priority, then oldest, queued job -> RUNNING on `slot` (attempts+1),
  // and opens its attempt, charged `charge`. nullopt when nothing is queued.
  // The attempt ends with the job's terminal event or a Requeue.
  absl::StatusOr<std::optional<JobRecord>> ClaimNext(int slot, SlotCharge charge = {});
  // ClaimNext for one job the caller picked (the scheduler's GPU policy):
  // nullopt when it is no longer queued or its model is not ready.
  absl::StatusOr<std::optional<JobRecord>> ClaimJob(int64_t job_id, int slot, SlotCharge charge = {});
  // Queued: CANCELLED now (with a Finished event). Running: flags
  // cancel_requested (needs_signal). Terminal: unchanged.
  absl::StatusOr<CancelResult> RequestCancel(int64_t job_id, const std::string& reason);
  // Records one event with the next seq; returns it as stored.
  absl::StatusOr<StoredEvent> AppendEvent(int64_t job_id, const EventWrite& write);
  // Records several events in one transaction (one fsync: a worker's burst of
  // events costs one commit), with consecutive seqs.
  absl::StatusOr<std::vector<StoredEvent>> AppendEvents(int64_t job_id,
                                                        const std::vector<EventWrite>& writes);
  // RUNNING -> QUEUED (slot -1) with a Log event explaining why; used at daemon
  // start for jobs a crashed daemon left RUNNING, and at shutdown.
  absl::StatusOr<StoredEvent> Requeue(int64_t job_id, const std::string& why);
  // Ids of jobs in state RUNNING (at start: interrupted by a daemon crash).
  absl::StatusOr<std::vector<int64_t>> RunningJobIds();
  // At start, before re-queueing: attempts a crashed daemon left open end at
  // their job's last recorded event (the downtime is not charged).
  absl::Status EndInterruptedAttempts();
  absl::StatusOr<std::vector<AttemptRecord>> ListAttempts(int64_t job_id);
  // Every job's usage from `since_ms` on (attempts clipped to it).
  absl::StatusOr<Usage> UsageSince(int64_t since_ms);
  absl::StatusOr<ServerEventRecord> AddServerEvent(const std::string& kind, const std::string& message);
  // Newest first, at most `limit`.
  absl::StatusOr<std::vector<ServerEventRecord>> ListServerEvents(int limit);
  absl::StatusOr<std::vector<StoredEvent>> ReadEvents(int64_t job_id, int64_t after_seq,
                                                      int limit);
  absl::StatusOr<std::vector<ArtifactRecord>> ListArtifacts(
      int64_t job_id, lorad::v1::ArtifactKind kind = lorad::v1::ARTIFACT_KIND_UNSPECIFIED);
  absl::StatusOr<ArtifactRecord> GetArtifact(int64_t artifact_id);
  // The newest STATE artifact of a job (what a restarted worker resumes from).
  absl::StatusOr<std::optional<ArtifactRecord>> LatestState(int64_t job_id);
  // Inserts the dataset unless its id exists; returns the stored record.
  absl::StatusOr<DatasetRecord> PutDataset(const DatasetRecord& dataset);
  absl::StatusOr<DatasetRecord> GetDataset(const std::string& dataset_id);
  absl::StatusOr<std::vector<DatasetRecord>> ListDatasets();
  // Removes the dataset's record (not its folder). NOT_FOUND naming the id when
  // there is none.
  absl::Status DeleteDataset(const std::string& dataset_id);
  absl::StatusOr<int64_t> CountJobs(JobState state);
  // Records a sweep. A taken name is AlreadyExists unless `reuse_existing`
  // (an idempotent retry), which returns the stored record unchanged.
  absl::StatusOr<SweepRecord> CreateSweep(const SweepRecord& sweep, bool reuse_existing);
  absl::StatusOr<SweepRecord> GetSweep(int64_t sweep_id);
  absl::StatusOr<SweepRecord> GetSweepByName(const std::string& name);
  // Newest first.
  absl::StatusOr<std::vector<SweepRecord>> ListSweeps();
  absl::Status IntegrityCheck();

  // Models (storage/model_records.cc). CreateModel: ALREADY_EXISTS naming the
  // taken name or sha256.
  absl::StatusOr<ModelRecord> CreateModel(const ModelRecord& model);
  absl::StatusOr<ModelRecord> GetModel(int64_t model_id);
  // Oldest first.
  absl::StatusOr<std::vector<ModelRecord>> ListModels();
  absl::Status SetModelProgress(int64_t model_id, int64_t bytes_done, int64_t bytes);
  // -> READY with its sha256, file and header facts. ALREADY_EXISTS when
  // another record holds that sha256 (the caller keeps that one).
  absl::StatusOr<ModelRecord> MarkModelReady(const ModelRecord& model);
  // -> FAILED with `reason`; returns the queued jobs that waited on it.
  absl::StatusOr<std::vector<int64_t>> MarkModelFailed(int64_t model_id, const std::string& reason);
  // A failed or in-progress record starts over (a new pull of the same name).
  absl::Status RestartModel(const ModelRecord& model);
  // FAILED_PRECONDITION naming the jobs while a queued or running job uses it.
  absl::Status DeleteModel(int64_t model_id);
  // Queued or running jobs whose model_id is `model_id`.
  absl::StatusOr<std::vector<int64_t>> ActiveJobsOnModel(int64_t model_id);
  // The model record a job names (nullopt: a plain path).
  absl::StatusOr<std::optional<ModelRecord>> ModelOfJob(int64_t job_id);

 private:
  JobStore(Database db, const Clock* clock) : clock_(clock), db_(std::move(db)) {}
  absl::StatusOr<JobRecord> GetJobLocked(int64_t job_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Sets each job's usage from its attempts.
  absl::Status FillUsageLocked(std::vector<JobRecord>& jobs) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Ends the job's open attempt at ended_ms (no-op when none is open).
  absl::Status EndAttemptLocked(int64_t job_id, int64_t ended_ms) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<StoredEvent> AppendEventLocked(int64_t job_id, const EventWrite& write)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const Clock* const clock_;  // borrowed
  absl::Mutex mu_;
  Database db_ ABSL_GUARDED_BY(mu_);
};

// Name of the Event oneof case ("progress", "checkpoint", ...), stored as events.type.
std::string EventTypeName(const lorad::v1::Event& event);

}  // namespace lorad::storage
