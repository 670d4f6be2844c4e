// Scheduler: runs queued jobs on N slots, priority then FIFO. Each job runs
// `lorad-train` in a child process (WorkerProcess) supervised by one thread per
// slot. RunJob's steps each live in their own place: the job folder is prepared
// here, the command line is planned by PlanWorkerLaunch (launch_plan.h), the
// worker is supervised by SuperviseWorker (worker_session.h), whose events are
// mapped to artifacts by MapWorkerEvent (artifact_events.h), committed to the
// JobStore, then published to the EventHub; the end is decided by
// ClassifyJobEnd (job_outcome.h). Cancel = SIGTERM, grace, SIGKILL. A crash
// ends the job FAILED with its exit status/signal and stderr tail. Thread-safe.
#pragma once

#include <atomic>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "server/event_hub.h"
#include "server/job_config.h"
#include "storage/job_store.h"

namespace lorad::server {

struct SchedulerOptions {
  int slots = 1;
  // CUDA_VISIBLE_DEVICES per slot (size == slots); an empty vector leaves the
  // environment alone (CPU-only machines).
  std::vector<std::string> slot_gpus;
  std::string worker_binary;
  std::vector<std::string> worker_args;
  std::filesystem::path jobs_dir;
  JobRoots roots;
  double grace_s = 30;
  // When set, jobs with cache_latents_to_disk share one latent cache folder per
  // (dataset, base model) under it: <root>/<hash>, linked as the job's
  // output/latent_cache (where lorad-train keeps its disk cache), so a sweep
  // encodes each dataset once.
  std::filesystem::path latent_cache_root;
  // What the box costs per hour: each attempt is charged its slot's GPUs'
  // share of it (SlotCharge), recorded with the attempt.
  double price_per_hour = 0;
};

// The charge of an attempt on `slot`: the GPUs in its CUDA_VISIBLE_DEVICES
// value (1 without GPUs) and price_per_hour divided by all slots' GPUs.
storage::SlotCharge ChargeForSlot(const SchedulerOptions& options, int slot);

struct WorkerReport;

class Scheduler {
 public:
  // `store` and `hub` are borrowed and must outlive the Scheduler.
  Scheduler(storage::JobStore* store, EventHub* hub, SchedulerOptions options);
  ~Scheduler();

  // Re-queues jobs a previous daemon left RUNNING (they resume from their last
  // saved state), then starts dispatching.
  absl::Status Start();
  // A job was queued: dispatch if a slot is free.
  void NotifyQueued();
  // Stops the job's worker if it runs here (the store already flagged the
  // cancel); a no-op for an unknown id or a job that does not run here.
  void Cancel(int64_t job_id);
  // Stops dispatching; asks every worker to save and stop (SIGTERM, grace,
  // SIGKILL); re-queues their jobs; joins all threads. Idempotent.
  void Shutdown();
  // How many slots run a job now.
  int running();
  // Bumped whenever a job is queued or a slot's job ends: a job that came and
  // went between two looks at running() still shows here (the idle switch).
  int64_t activity() const { return activity_.load(); }
  int slots() const { return options_.slots; }
  const SchedulerOptions& options() const { return options_; }

  // Resolves SubmitJob's dataset reference: an uploaded dataset id, else a
  // folder under the datasets root (confined). Empty stays empty. NOT_FOUND
  // when it is neither; `store` is only used during the call.
  static absl::StatusOr<std::filesystem::path> ResolveDataset(storage::JobStore* store,
                                                              const JobRoots& roots,
                                                              const std::string& reference);

 private:
  struct Slot {
    int64_t job_id = 0;
    std::atomic<bool> cancel{false};
    std::atomic<bool> stop{false};
    std::atomic<bool> done{false};
    std::thread thread;
  };
  void DispatchLoop();
  // One attempt of `job` on a slot, from preparing its folder to recording its
  // end. `slot` is owned by slots_ and outlives the call (its thread is joined
  // before the Slot is dropped).
  void RunJob(Slot* slot, int slot_index, storage::JobRecord job);
  // Creates the job folder, resolves the dataset, writes the prepared
  // config.toml (and dataset_config.toml) and links a shared latent cache.
  absl::StatusOr<PreparedJobConfig> PrepareJobFolder(const storage::JobRecord& job,
                                                     const std::filesystem::path& job_dir);
  // The job's latest saved state, when its folder still exists; else nullopt.
  std::optional<storage::ArtifactRecord> ResumePoint(int64_t job_id);
  // Records the job's end from what its worker did (or re-queues it when the
  // daemon stops). `slot` as in RunJob.
  void FinishJob(Slot* slot, int64_t job_id, const WorkerReport& report);
  // Ends the job FAILED before a worker ran.
  void Fail(const storage::JobRecord& job, const std::string& reason);
  // Calls `attempt` until it is not UNAVAILABLE (database locked by another
  // process) or RESOURCE_EXHAUSTED (disk full), backing off from 250 ms to 30 s,
  // or until the daemon stops; returns the last status. `what` names it in logs.
  absl::Status RetryWhileTransient(int64_t job_id, const std::string& what,
                                   const std::function<absl::Status()>& attempt);
  // Records one event, retried while transient (RetryWhileTransient), then publishes it.
  void Record(int64_t job_id, storage::EventWrite write, bool terminal);
  // Commits a burst of worker events in one transaction, then publishes them.
  void RecordBurst(int64_t job_id, const std::vector<storage::EventWrite>& writes);
  // Links job_dir/output/latent_cache to the shared cache of this (dataset,
  // model); a no-op without latent_cache_root or disk caching.
  absl::Status LinkSharedLatentCache(const std::filesystem::path& job_dir, const std::filesystem::path& dataset_dir,
                                     const PreparedJobConfig& prepared);

  storage::JobStore* store_;  // borrowed; outlives this
  EventHub* hub_;             // borrowed; outlives this
  const SchedulerOptions options_;
  absl::Mutex mu_;
  absl::CondVar cv_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool work_hint_ ABSL_GUARDED_BY(mu_) = true;
  std::vector<std::unique_ptr<Slot>> slots_ ABSL_GUARDED_BY(mu_);
  std::thread dispatcher_;
  std::atomic<int64_t> activity_{0};
};

}  // namespace lorad::server
