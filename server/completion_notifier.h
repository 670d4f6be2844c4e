// Turns job terminal transitions into webhook notifications (issue 7): one post
// per finished job, and one per sweep when its last job ends. Looks the job up
// in the store; the WebhookNotifier delivers in the background, so a slow or
// failing webhook never delays the scheduler. Thread-safe.
#pragma once

#include <cstdint>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "server/notify/webhook.h"
#include "storage/job_store.h"

namespace lorad::server {

class CompletionNotifier {
 public:
  // `priced`: the daemon has a price_per_hour, so posts carry the cost too
  // (GPU time they always carry).
  CompletionNotifier(storage::JobStore* store, notify::WebhookNotifier* notifier, bool priced = false)
      : store_(store), notifier_(notifier), priced_(priced) {}

  // A job reached a terminal state (EventHub's terminal listener).
  void OnJobFinished(int64_t job_id);

 private:
  void MaybeNotifySweep(const std::string& sweep_name);

  storage::JobStore* store_;           // not owned
  notify::WebhookNotifier* notifier_;  // not owned
  const bool priced_;
  absl::Mutex mu_;
  // Sweep name -> job count when its "all done" post went out: one post per
  // sweep, unless jobs were added to it afterwards.
  absl::flat_hash_map<std::string, int64_t> sweeps_notified_ ABSL_GUARDED_BY(mu_);
};

}  // namespace lorad::server
