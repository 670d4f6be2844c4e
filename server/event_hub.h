// EventHub: fan-out of committed job events to every open StreamEvents call.
// Keeps the recent events of active jobs in memory so live tails never touch
// SQLite; older history is read from the JobStore. Thread-safe.
#pragma once

#include <deque>
#include <functional>
#include <memory>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "storage/job_store.h"

namespace lorad::server {

// A subscriber's wake-up callback. Wake() never runs after Kill() returns, so a
// stream reactor may delete itself right after killing its waker.
class Waker {
 public:
  explicit Waker(std::function<void()> fn) : fn_(std::move(fn)) {}
  void Wake();
  void Kill();

 private:
  absl::Mutex mu_;
  bool alive_ ABSL_GUARDED_BY(mu_) = true;
  std::function<void()> fn_;
};

class EventHub {
 public:
  explicit EventHub(storage::JobStore* store) : store_(store) {}

  // Call after `event` is committed. `terminal`: the job reached a final state
  // with this event (nothing follows).
  void Publish(const storage::StoredEvent& event, bool terminal);
  // Called (on the publishing thread, outside the hub's lock) once per job
  // with the terminal event's job id; used for completion webhooks. Must not block.
  void SetTerminalListener(std::function<void(int64_t job_id)> listener);
  std::shared_ptr<Waker> Subscribe(int64_t job_id, std::function<void()> wake);
  void Unsubscribe(int64_t job_id, const std::shared_ptr<Waker>& waker);

  struct Batch {
    std::vector<storage::StoredEvent> events;
    bool done = false;  // the job has ended and no event follows these
  };
  // Up to `max` events with seq > after_seq. UNAVAILABLE once shut down.
  absl::StatusOr<Batch> Fetch(int64_t job_id, int64_t after_seq, int max);

  // Wakes every subscriber; later Fetch calls fail with UNAVAILABLE.
  void Shutdown();

  // Open subscriptions over all jobs (StreamEvents calls and dashboard
  // streams), for /metrics.
  int64_t SubscriberCount();

 private:
  struct JobEntry {
    std::deque<storage::StoredEvent> recent;  // strictly increasing seq
    int64_t last_seq = 0;
    bool terminal = false;
    std::vector<std::shared_ptr<Waker>> subscribers;
  };
  static constexpr size_t kRecentEvents = 4096;
  void WakeSubscribers(const storage::StoredEvent& event, bool terminal);
  absl::StatusOr<JobEntry*> EntryLocked(int64_t job_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  storage::JobStore* store_;  // not owned; outlives the hub
  absl::Mutex mu_;
  absl::flat_hash_map<int64_t, JobEntry> jobs_ ABSL_GUARDED_BY(mu_);
  bool shut_down_ ABSL_GUARDED_BY(mu_) = false;
  std::function<void(int64_t)> terminal_listener_ ABSL_GUARDED_BY(mu_);
};

}  // namespace lorad::server
