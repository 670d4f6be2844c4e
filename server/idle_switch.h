// The idle switch (issue 13): once no job has been queued or running for a
// while, lorad runs the user's command once (e.g. the provider's "stop this
// pod" command), records it as a server event and posts the webhook. It runs
// again only after a new job has arrived and the queue has drained again for
// a full window; a job that arrives and ends inside the window restarts it.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "core/base/clock.h"
#include "server/notify/webhook.h"
#include "storage/job_store.h"

namespace lorad::server {

// The decision alone, on times the caller supplies. Not thread-safe.
class IdleTimer {
 public:
  // Idle since `now_ms` (the daemon's start); `activity` as in Observe.
  IdleTimer(int64_t after_ms, int64_t now_ms, int64_t activity);
  // One look at the queue: `busy` = a job is queued or running; `activity` =
  // a counter bumped by every job arrival and end (Scheduler::activity()).
  // True when the command is due now (then not again until new activity and
  // another full idle window).
  bool Observe(bool busy, int64_t activity, int64_t now_ms);
  // How long the queue has been empty with nothing running (0 while busy).
  int64_t idle_for_ms(int64_t now_ms) const { return busy_ ? 0 : now_ms - idle_since_ms_; }

 private:
  const int64_t after_ms_;
  int64_t idle_since_ms_;
  int64_t activity_;
  bool busy_ = false;
  bool fired_ = false;
};

struct IdleSwitchOptions {
  std::string command;  // run as /bin/sh -c COMMAND
  absl::Duration after = absl::Minutes(20);
  absl::Duration timeout = absl::Minutes(5);  // then the command is killed
  absl::Duration poll = absl::Seconds(1);     // how often the queue is looked at
};

// Watches the queue on a thread of its own and runs the command when
// IdleTimer says so. Thread-safe.
class IdleSwitch {
 public:
  // `store`, `notifier` and `clock` are borrowed and must outlive this.
  // `busy` and `activity` are polled (see IdleTimer::Observe).
  IdleSwitch(IdleSwitchOptions options, storage::JobStore* store, notify::WebhookNotifier* notifier,
             std::function<bool()> busy, std::function<int64_t()> activity, const Clock* clock = Clock::Real());
  ~IdleSwitch();  // Stop()

  void Start();
  // Joins the thread; a command still running is killed. Idempotent.
  void Stop();
  // Seconds with an empty queue and nothing running (0 while busy).
  double idle_for_s() const;
  const IdleSwitchOptions& options() const { return options_; }

 private:
  void Run();
  // Runs the command, logs its output, records and posts what happened.
  void Fire(double idle_s);

  const IdleSwitchOptions options_;
  storage::JobStore* const store_;            // borrowed
  notify::WebhookNotifier* const notifier_;   // borrowed
  const std::function<bool()> busy_;
  const std::function<int64_t()> activity_;
  const Clock* const clock_;                  // borrowed
  mutable absl::Mutex mu_;
  IdleTimer timer_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::atomic<bool> stop_flag_{false};  // polled by the running command
  std::thread thread_;
};

}  // namespace lorad::server
