// Webhook notifications on job and sweep completion or failure (issue 7) and
// on the idle switch (issue 13). POSTs a Discord/Slack-compatible JSON body to
// http:// and https:// URLs (the daemon's libcurl client, server/net: TLS
// verification always on, proxies from the environment) from a background
// thread with a bounded queue, per-attempt timeouts and retries with
// exponential backoff. Notify() never blocks on the network and a failing
// webhook never affects the caller.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace lorad::notify {

// kServer: a daemon-wide event (the idle switch ran its command); `name`
// says which ("idle_command") and `reason` what happened.
enum class EventKind { kJob, kSweep, kServer };

// What happened. `state` is the final state ("SUCCEEDED", "FAILED",
// "CANCELLED"); `reason` is set for failures.
struct NotifyEvent {
  EventKind kind = EventKind::kJob;
  std::string id;
  std::string name;
  std::string state;
  std::string reason;
  std::optional<double> final_loss;
  std::string lora_path;
  std::string sweep_id;       // for a job that belongs to a sweep
  int64_t jobs_total = 0;     // sweep events: job counts
  int64_t jobs_succeeded = 0;
  int64_t jobs_failed = 0;
  // Jobs and sweeps: GPU time, and its cost when the daemon has a price.
  std::optional<double> gpu_seconds;
  std::optional<double> cost;
};

// The POST body: {"content": "<one line for Discord/Slack>", "text": same
// (Slack incoming webhooks read `text`), "event": "job"|"sweep", "id", "name",
// "state", "reason", "final_loss" (number or null), "lora_path", "sweep_id",
// "gpu_seconds" and "cost" (numbers or null), and for sweeps "jobs_total",
// "jobs_succeeded", "jobs_failed"}. "event" is "server" for the idle switch.
std::string WebhookBody(const NotifyEvent& event);

// A parsed http:// or https:// URL.
struct HttpUrl {
  bool https = false;
  std::string host;
  uint16_t port = 80;      // 443 for https unless given
  std::string path = "/";  // includes the query string
};
// InvalidArgument for anything but http(s)://host[:port][/path].
absl::StatusOr<HttpUrl> ParseHttpUrl(const std::string& url);

struct WebhookOptions {
  std::vector<std::string> urls;
  size_t queue_capacity = 256;     // pending deliveries (event x URL); more are dropped
  int max_attempts = 6;            // per delivery, first try included
  absl::Duration initial_backoff = absl::Seconds(1);
  absl::Duration max_backoff = absl::Minutes(2);
  absl::Duration attempt_timeout = absl::Seconds(10);  // connect + send + response
  // PEM CA certificates trusted for https instead of the system store
  // (webhook_ca_file); empty: the system store.
  std::string ca_file;
};

struct WebhookStats {
  int64_t delivered = 0;  // 2xx received
  int64_t failed = 0;     // gave up: attempts exhausted, 4xx, or shutdown
  int64_t dropped = 0;    // queue full at Notify()
  int64_t attempts = 0;   // HTTP attempts made
  int64_t pending = 0;    // queued or waiting for a retry
};

// Thread-safe. Owns one worker thread; the destructor calls Shutdown().
class WebhookNotifier {
 public:
  // Validates every URL (InvalidArgument / Unimplemented naming it) and starts
  // the worker. With no URLs the notifier accepts and discards events.
  static absl::StatusOr<std::unique_ptr<WebhookNotifier>> Create(WebhookOptions options);
  virtual ~WebhookNotifier() = default;

  // Queues `event` for every URL and returns at once. False when the queue was
  // full for at least one URL (those deliveries are dropped and logged).
  virtual bool Notify(const NotifyEvent& event) = 0;

  // Stops accepting events, keeps delivering what is queued until `drain`
  // has passed (retry waits included), then drops the rest and joins the
  // worker. Idempotent.
  virtual void Shutdown(absl::Duration drain = absl::Seconds(5)) = 0;

  virtual WebhookStats stats() const = 0;
};

}  // namespace lorad::notify
