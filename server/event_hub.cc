#include "server/event_hub.h"

namespace lorad::server {

void Waker::Wake() {
  absl::MutexLock lock(&mu_);
  if (alive_) fn_();
}

void Waker::Kill() {
  absl::MutexLock lock(&mu_);
  alive_ = false;
}

absl::StatusOr<EventHub::JobEntry*> EventHub::EntryLocked(int64_t job_id) {
  auto it = jobs_.find(job_id);
  if (it != jobs_.end()) return &it->second;
  // First interest in this job: learn where its history ends. Publish waits on
  // mu_, so no event can slip between this read and the entry's creation.
  auto job = store_->GetJob(job_id);
  if (!job.ok()) return job.status();
  JobEntry& entry = jobs_[job_id];
  entry.last_seq = job->last_seq;
  entry.terminal = storage::IsTerminal(job->state);
  return &entry;
}

void EventHub::Publish(const storage::StoredEvent& event, bool terminal) {
  WakeSubscribers(event, terminal);
  if (!terminal) return;
  std::function<void(int64_t)> listener;
  {
    absl::MutexLock lock(&mu_);
    listener = terminal_listener_;
  }
  if (listener) listener(event.job_id);
}

void EventHub::SetTerminalListener(std::function<void(int64_t job_id)> listener) {
  absl::MutexLock lock(&mu_);
  terminal_listener_ = std::move(listener);
}

void EventHub::WakeSubscribers(const storage::StoredEvent& event, bool terminal) {
  std::vector<std::shared_ptr<Waker>> to_wake;
  {
    absl::MutexLock lock(&mu_);
    auto entry_or = EntryLocked(event.job_id);
    if (!entry_or.ok()) return;
    JobEntry& entry = **entry_or;
    if (entry.recent.empty() || entry.recent.back().seq < event.seq) {
      entry.recent.push_back(event);
      if (entry.recent.size() > kRecentEvents) entry.recent.pop_front();
    }
    entry.last_seq = std::max(entry.last_seq, event.seq);
    entry.terminal = entry.terminal || terminal;
    to_wake = entry.subscribers;
    if (entry.terminal && entry.subscribers.empty()) jobs_.erase(event.job_id);
  }
  for (const auto& waker : to_wake) waker->Wake();
}

std::shared_ptr<Waker> EventHub::Subscribe(int64_t job_id, std::function<void()> wake) {
  auto waker = std::make_shared<Waker>(std::move(wake));
  absl::MutexLock lock(&mu_);
  auto entry = EntryLocked(job_id);
  if (entry.ok()) (*entry)->subscribers.push_back(waker);
  return waker;
}

void EventHub::Unsubscribe(int64_t job_id, const std::shared_ptr<Waker>& waker) {
  absl::MutexLock lock(&mu_);
  auto it = jobs_.find(job_id);
  if (it == jobs_.end()) return;
  auto& subs = it->second.subscribers;
  subs.erase(std::remove(subs.begin(), subs.end(), waker), subs.end());
  if (subs.empty() && it->second.terminal) jobs_.erase(it);
}

absl::StatusOr<EventHub::Batch> EventHub::Fetch(int64_t job_id, int64_t after_seq, int max) {
  Batch batch;
  int64_t last_seq = 0;
  bool terminal = false;
  {
    absl::MutexLock lock(&mu_);
    if (shut_down_) {
      return absl::UnavailableError("lorad is shutting down; reconnect with after_seq to resume");
    }
    auto entry_or = EntryLocked(job_id);
    if (!entry_or.ok()) return entry_or.status();
    JobEntry& entry = **entry_or;
    last_seq = entry.last_seq;
    terminal = entry.terminal;
    if (after_seq >= last_seq) {
      batch.done = terminal;
      return batch;
    }
    if (!entry.recent.empty() && entry.recent.front().seq <= after_seq + 1) {
      for (const auto& e : entry.recent) {
        if (e.seq <= after_seq) continue;
        if (static_cast<int>(batch.events.size()) >= max) break;
        batch.events.push_back(e);
      }
      batch.done = terminal && !batch.events.empty() && batch.events.back().seq >= last_seq;
      return batch;
    }
  }
  // Older history than the cache holds: read it from SQLite (committed already).
  auto events = store_->ReadEvents(job_id, after_seq, max);
  if (!events.ok()) return events.status();
  batch.events = std::move(*events);
  batch.done = terminal && !batch.events.empty() && batch.events.back().seq >= last_seq;
  return batch;
}

int64_t EventHub::SubscriberCount() {
  absl::MutexLock lock(&mu_);
  int64_t count = 0;
  for (const auto& [id, entry] : jobs_) count += static_cast<int64_t>(entry.subscribers.size());
  return count;
}

void EventHub::Shutdown() {
  std::vector<std::shared_ptr<Waker>> to_wake;
  {
    absl::MutexLock lock(&mu_);
    shut_down_ = true;
    for (auto& [id, entry] : jobs_) {
      to_wake.insert(to_wake.end(), entry.subscribers.begin(), entry.subscribers.end());
    }
  }
  for (const auto& waker : to_wake) waker->Wake();
}

}  // namespace lorad::server
