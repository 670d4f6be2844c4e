// Scheduler: runs queued jobs on N slots, priority then FIFO. Each job runs
// `lorad-train` in a child process (WorkerProcess) supervised by one thread per
// slot: events from its pipe are committed to the JobStore, then published to
// the EventHub. Cancel = SIGTERM, grace, SIGKILL. A crash ends the job FAILED
// with its exit status/signal and stderr tail. Thread-safe.
#pragma once

#include <atomic>
#include <filesystem>
#include <memory>
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
};

class Scheduler {
 public:
  Scheduler(storage::JobStore* store, EventHub* hub, SchedulerOptions options);
  ~Scheduler();

  // Re-queues jobs a previous daemon left RUNNING (they resume from their last
  // saved state), then starts dispatching.
  absl::Status Start();
  // A job was queued: dispatch if a slot is free.
  void NotifyQueued();
  // Stops the job's worker if it runs here (the store already flagged the cancel).
  void Cancel(int64_t job_id);
  // Stops dispatching; asks every worker to save and stop (SIGTERM, grace,
  // SIGKILL); re-queues their jobs; joins all threads. Idempotent.
  void Shutdown();
  int running();
  int slots() const { return options_.slots; }
  const SchedulerOptions& options() const { return options_; }

  // Resolves SubmitJob's dataset reference: an uploaded dataset id, else a
  // folder under the datasets root (confined). Empty stays empty.
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
  void RunJob(Slot* slot, int slot_index, storage::JobRecord job);
  void Record(int64_t job_id, storage::EventWrite write, bool terminal);
  // Links job_dir/output/latent_cache to the shared cache of this (dataset,
  // model); a no-op without latent_cache_root or disk caching.
  absl::Status LinkSharedLatentCache(const std::filesystem::path& job_dir, const std::filesystem::path& dataset_dir,
                                     const PreparedJobConfig& prepared);

  storage::JobStore* store_;  // not owned
  EventHub* hub_;             // not owned
  const SchedulerOptions options_;
  absl::Mutex mu_;
  absl::CondVar cv_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool work_hint_ ABSL_GUARDED_BY(mu_) = true;
  std::vector<std::unique_ptr<Slot>> slots_ ABSL_GUARDED_BY(mu_);
  std::thread dispatcher_;
};

}  // namespace lorad::server
