// Scheduler: runs queued jobs on N slots, priority then FIFO. Each attempt
// runs through an Executor (executor.h): `lorad-train` ranks as child
// processes (LocalExecutor) or an sbatch job (SlurmExecutor), supervised by
// one thread per running job. RunJob's steps each live in their own place: the
// job folder is prepared here, the command line is planned by PlanWorkerLaunch
// (launch_plan.h), the ranks are started and supervised by the executor
// (SuperviseWorkers in worker_session.h locally), whose events are mapped to
// artifacts by MapWorkerEvent (artifact_events.h), committed to the JobStore,
// then published to the EventHub; the end is decided by ClassifyJobEnd
// (job_outcome.h). Cancel = SIGTERM, grace, SIGKILL (Slurm: scancel). A crash
// ends the job FAILED with its exit status/signal and stderr tail. Thread-safe.
//
// GPU policy (jobs of 1 and N GPUs share one queue). A job asks for `gpus = N`
// in its TOML (JobGpus) and holds executor.SlotsFor(N) slots while it runs:
// locally one slot per GPU, so CUDA_VISIBLE_DEVICES lists its N slots' GPUs
// and N ranks start; on Slurm one slot (Slurm places the GPUs). Queued jobs
// are taken in order, highest priority first, then oldest (PlanDispatch):
//   - a job that fits the free slots starts;
//   - the first job that does not fit is the blocked head. Jobs behind it may
//     start on the free slots (backfill) only while it has been blocked for
//     less than backfill_s; past that, nothing behind it starts and the slots
//     that free up are held for it until it fits. backfill_s = 0 (the
//     default): never passed, strict queue order;
//   - a job asking for more slots than exist fails at once, naming both
//     numbers (it could never start, and would hold the queue forever).
// No deadlock: a job never holds slots while it waits (all or nothing), and
// the blocked head starts once the running jobs end. No starvation within a
// priority: the head waits at most backfill_s plus the running jobs' time. A
// higher priority still goes first, as for single-GPU jobs.
#pragma once

#include <atomic>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "server/event_hub.h"
#include "server/executor.h"
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
  // How long smaller jobs may pass a blocked head (see the policy above).
  double backfill_s = 0;
  // Where attempts run; null: LocalExecutor (lorad-train children).
  std::shared_ptr<Executor> executor;
};

// One queued job as the dispatch policy sees it.
struct QueuedJob {
  int64_t id = 0;
  int slots = 1;  // executor.SlotsFor(its gpus)
};

struct DispatchPlan {
  std::vector<int64_t> start;    // in order; together they fit the free slots
  std::vector<int64_t> too_big;  // need more slots than exist
  int64_t blocked = 0;           // the blocked head (0: none)
};

// The GPU policy above, pure. `queue` in dispatch order (priority, then age);
// `reserve(blocked_id)`: the blocked head has waited past backfill_s, so
// nothing behind it starts.
DispatchPlan PlanDispatch(const std::vector<QueuedJob>& queue, int free_slots, int total_slots,
                          const std::function<bool(int64_t blocked)>& reserve);

// The charge of an attempt on `slot`: the GPUs in its CUDA_VISIBLE_DEVICES
// value (1 without GPUs) and price_per_hour divided by all slots' GPUs.
storage::SlotCharge ChargeForSlot(const SchedulerOptions& options, int slot);
// The same for an attempt holding several slots: their GPUs together.
storage::SlotCharge ChargeForSlots(const SchedulerOptions& options, const std::vector<int>& slots);

struct WorkerReport;

class Scheduler {
 public:
  // `store` and `hub` are borrowed and must outlive the Scheduler.
  Scheduler(storage::JobStore* store, EventHub* hub, SchedulerOptions options);
  ~Scheduler();

  // Jobs a previous daemon left RUNNING: re-attached when the executor still
  // runs them (Slurm), else re-queued (they resume from their last saved
  // state). Then starts dispatching.
  absl::Status Start();
  // A job was queued: dispatch if a slot is free.
  void NotifyQueued();
  // Stops the job's worker if it runs here (the store already flagged the
  // cancel); a no-op for an unknown id or a job that does not run here.
  void Cancel(int64_t job_id);
  // Stops dispatching; asks every local worker to save and stop (SIGTERM,
  // grace, SIGKILL) and re-queues their jobs; leaves Slurm jobs running
  // (re-attached on the next start); joins all threads. Idempotent.
  void Shutdown();
  // How many jobs run now.
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
  // One running job: the slots it holds and its supervising thread.
  struct Slot {
    int64_t job_id = 0;
    std::vector<int> slots;
    std::atomic<bool> cancel{false};
    std::atomic<bool> stop{false};
    std::atomic<bool> done{false};
    std::thread thread;
  };
  void DispatchLoop();
  // One dispatch pass (PlanDispatch over the queue); starts what it allows
  // and returns the jobs that can never start, with why (the caller fails them
  // without holding mu_).
  std::vector<std::pair<storage::JobRecord, std::string>> DispatchOnce() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The highest Event.source_offset among the job's events after `after_seq`
  // (where a re-attached Slurm follower resumes its events file).
  int64_t CommittedOffset(int64_t job_id, int64_t after_seq);
  // Takes `count` free slots (lowest first) for a job; empty when too few.
  std::vector<int> TakeFreeSlots(int count) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Starts the thread of a claimed job (or a re-attached run) on `slots`.
  void Spawn(std::vector<int> slots, int64_t job_id, std::function<void(Slot*)> body)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // One attempt of `job` on `slots`, from preparing its folder to recording
  // its end. `slot` is owned by runs_ and outlives the call (its thread is
  // joined before the Slot is dropped).
  void RunJob(Slot* slot, storage::JobRecord job, int gpus);
  // Supervises `run` (launched or re-attached on this thread) to its end and
  // records it.
  void SuperviseRun(Slot* slot, const storage::JobRecord& job, AttemptRun* run);
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
  std::vector<std::unique_ptr<Slot>> runs_ ABSL_GUARDED_BY(mu_);
  std::vector<bool> slot_busy_ ABSL_GUARDED_BY(mu_);
  // The blocked head and since when (steady clock), for backfill_s.
  int64_t blocked_id_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Time blocked_since_ ABSL_GUARDED_BY(mu_);
  // Each queued job's GPUs, parsed once.
  std::map<int64_t, int> gpus_of_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<Executor> executor_;
  std::thread dispatcher_;
  std::atomic<int64_t> activity_{0};
};

}  // namespace lorad::server
