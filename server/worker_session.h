// The worker session loop: supervises one running lorad-train until it exits.
// Reads its events pipe (each burst mapped by MapWorkerEvent and handed to
// `commit` at once), appends its stderr to worker.log and keeps the tail, and
// turns a stop request into SIGTERM, then SIGKILL after the grace period.
// A corrupt events stream kills the worker (it cannot be trusted).
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <vector>

#include "server/artifact_events.h"
#include "server/job_outcome.h"
#include "server/worker_process.h"
#include "storage/job_store.h"

namespace lorad::server {

struct WorkerSessionOptions {
  JobFolder job;                      // artifacts must lie inside it
  std::filesystem::path log_path;     // the worker's stderr is appended here
  int64_t first_step = 0;             // the job's step before this attempt
  double grace_s = 30;                // SIGTERM -> SIGKILL
  // Polled about every 100 ms; once true the worker is asked to stop.
  std::function<bool()> stop_requested;
  // Records one burst of events (one transaction); called on this thread.
  std::function<void(const std::vector<storage::EventWrite>&)> commit;
};

// Runs until `worker` has exited and returns what was observed (its exit
// reaped). `worker` is borrowed for the call; the calling thread must be the
// one that started it (its death signal follows that thread).
WorkerReport SuperviseWorker(WorkerProcess* worker, const WorkerSessionOptions& options);

}  // namespace lorad::server
