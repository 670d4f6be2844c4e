#include "server/task_pool.h"

#include "absl/strings/str_cat.h"

namespace lorad::server {

TaskPool::TaskPool(std::string what, int threads, int max_queued)
    : what_(std::move(what)), threads_(std::max(1, threads)), max_queued_(std::max(0, max_queued)) {
  workers_.reserve(threads_);
  for (int i = 0; i < threads_; ++i) workers_.emplace_back([this] { Loop(); });
}

TaskPool::~TaskPool() { Shutdown(); }

absl::Status TaskPool::Submit(Task task) {
  absl::MutexLock lock(&mu_);
  if (closed_) return absl::UnavailableError(absl::StrCat("lorad is stopping; no new ", what_));
  if (busy_ + static_cast<int>(queue_.size()) >= threads_ + max_queued_) {
    return absl::ResourceExhaustedError(absl::StrCat(busy_, " ", what_, " are running and ", queue_.size(),
                                                     " are waiting (the most lorad takes at once); "
                                                     "try again when one has finished"));
  }
  queue_.push_back(std::move(task));
  return absl::OkStatus();
}

bool TaskPool::HasWorkOrClosed() const { return closed_ || !queue_.empty(); }

void TaskPool::Loop() {
  while (true) {
    Task task;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(this, &TaskPool::HasWorkOrClosed));
      if (queue_.empty()) return;  // closed and drained
      task = std::move(queue_.front());
      queue_.pop_front();
      ++busy_;
    }
    task(stopping_);
    absl::MutexLock lock(&mu_);
    --busy_;
  }
}

void TaskPool::Shutdown() {
  stopping_ = true;
  {
    absl::MutexLock lock(&mu_);
    if (closed_) return;  // another caller joins
    closed_ = true;
  }
  for (auto& worker : workers_) worker.join();
}

}  // namespace lorad::server
