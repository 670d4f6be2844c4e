// TaskPool: a fixed set of threads for the blocking work gRPC reactions must
// not do themselves (running lorad-curate). Bounded: with every thread busy and
// `max_queued` tasks waiting, Submit refuses (RESOURCE_EXHAUSTED) instead of
// piling up children. Shutdown (also run by the destructor) raises the stop
// flag every task can poll, runs what is still queued (each task must answer
// its caller), and joins the threads. Thread-safe.
#pragma once

#include <atomic>
#include <deque>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"

namespace lorad::server {

class TaskPool {
 public:
  // A task gets the pool's stop flag (true once Shutdown began): a long task
  // polls it and ends early.
  using Task = std::function<void(const std::atomic<bool>& stopping)>;

  // `what` names the work in refusals ("curation reports").
  TaskPool(std::string what, int threads, int max_queued);
  ~TaskPool();
  TaskPool(const TaskPool&) = delete;
  TaskPool& operator=(const TaskPool&) = delete;

  // Queues `task`. RESOURCE_EXHAUSTED when all threads are busy and
  // max_queued tasks wait; UNAVAILABLE after Shutdown began. A refused task is
  // not run (the caller answers its client).
  absl::Status Submit(Task task);
  // Raises the stop flag, lets queued tasks run (they see the flag), joins the
  // threads. Idempotent.
  void Shutdown();

 private:
  void Loop();
  bool HasWorkOrClosed() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::string what_;
  const int threads_;
  const int max_queued_;
  std::atomic<bool> stopping_{false};
  mutable absl::Mutex mu_;
  std::deque<Task> queue_ ABSL_GUARDED_BY(mu_);
  int busy_ ABSL_GUARDED_BY(mu_) = 0;
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> workers_;  // joined by Shutdown
};

}  // namespace lorad::server
