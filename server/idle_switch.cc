#include "server/idle_switch.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/base/subprocess.h"
#include "spdlog/spdlog.h"

namespace lorad::server {

IdleTimer::IdleTimer(int64_t after_ms, int64_t now_ms, int64_t activity)
    : after_ms_(after_ms), idle_since_ms_(now_ms), activity_(activity) {}

bool IdleTimer::Observe(bool busy, int64_t activity, int64_t now_ms) {
  if (activity != activity_) {
    // A job arrived or ended since the last look, even if it came and went
    // in between: the window starts over and the switch is armed again.
    activity_ = activity;
    idle_since_ms_ = now_ms;
    fired_ = false;
  }
  if (busy) {
    busy_ = true;
    return false;
  }
  if (busy_) {
    // The first look that finds the queue empty starts the window: never
    // earlier than the queue was seen drained.
    busy_ = false;
    idle_since_ms_ = now_ms;
  }
  if (fired_ || now_ms - idle_since_ms_ < after_ms_) return false;
  fired_ = true;
  return true;
}

IdleSwitch::IdleSwitch(IdleSwitchOptions options, storage::JobStore* store, notify::WebhookNotifier* notifier,
                       std::function<bool()> busy, std::function<int64_t()> activity, const Clock* clock)
    : options_(std::move(options)),
      store_(store),
      notifier_(notifier),
      busy_(std::move(busy)),
      activity_(std::move(activity)),
      clock_(clock),
      timer_(absl::ToInt64Milliseconds(options_.after), clock->NowUnixMs(), activity_()) {}

IdleSwitch::~IdleSwitch() { Stop(); }

void IdleSwitch::Start() { thread_ = std::thread([this] { Run(); }); }

void IdleSwitch::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  stop_flag_ = true;
  if (thread_.joinable()) thread_.join();
}

double IdleSwitch::idle_for_s() const {
  absl::MutexLock lock(&mu_);
  return static_cast<double>(timer_.idle_for_ms(clock_->NowUnixMs())) / 1000.0;
}

void IdleSwitch::Run() {
  while (true) {
    // Read the queue before taking the lock: the probes take the store's and
    // the scheduler's locks, never while ours is held.
    const int64_t activity = activity_();
    const bool busy = busy_();
    double idle_s = 0;
    bool fire = false;
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) return;
      const int64_t now = clock_->NowUnixMs();
      fire = timer_.Observe(busy, activity, now);
      idle_s = static_cast<double>(timer_.idle_for_ms(now)) / 1000.0;
    }
    if (fire) Fire(idle_s);
    absl::MutexLock lock(&mu_);
    if (mu_.AwaitWithTimeout(absl::Condition(&stopping_), options_.poll)) return;
  }
}

void IdleSwitch::Fire(double idle_s) {
  spdlog::info("idle for {:.0f}s (on_idle after {}): running `{}`", idle_s, absl::FormatDuration(options_.after),
               options_.command);
  SubprocessOptions run;
  run.argv = {"/bin/sh", "-c", options_.command};
  run.timeout = options_.timeout;
  run.max_stdout_bytes = size_t{1} << 20;
  run.should_stop = [this] { return stop_flag_.load(); };
  auto result = RunSubprocess(run);
  std::string outcome;
  bool succeeded = false;
  if (result.ok()) {
    if (!result->stdout_text.empty()) spdlog::info("on_idle stdout: {}", result->stdout_text);
    if (!result->stderr_tail.empty()) spdlog::info("on_idle stderr: {}", result->stderr_tail);
    succeeded = result->succeeded();
    outcome = result->Describe();
  } else {
    outcome = std::string(result.status().message());
  }
  const std::string message =
      absl::StrFormat("idle for %s with no job queued or running: ran on_idle command `%s`: %s",
                      absl::FormatDuration(absl::Seconds(static_cast<int64_t>(idle_s))), options_.command, outcome);
  if (succeeded) {
    spdlog::info("{}", message);
  } else {
    spdlog::warn("{}", message);
  }
  if (auto recorded = store_->AddServerEvent("idle_command", message); !recorded.ok()) {
    spdlog::error("cannot record the idle event: {}", recorded.status().ToString());
  }
  if (notifier_ != nullptr) {
    notify::NotifyEvent event;
    event.kind = notify::EventKind::kServer;
    event.name = "idle_command";
    event.state = succeeded ? "SUCCEEDED" : "FAILED";
    event.reason = message;
    notifier_->Notify(event);
  }
}

}  // namespace lorad::server
