#include "core/data/prefetch.h"

#include <algorithm>

namespace lorad::data {

PrefetchIterator::PrefetchIterator(const Dataset* dataset, std::vector<std::vector<Dataset::PlannedSample>> plan,
                                   DataPosition start, int64_t global_step, IterateOptions options)
    : dataset_(dataset),
      plan_(std::move(plan)),
      epoch_(start.epoch),
      first_index_(start.batch_index),
      first_step_(global_step),
      window_(std::max(1, options.queue_batches)),
      next_(start.batch_index),
      next_to_schedule_(start.batch_index) {
  for (int i = 0; i < options.prefetch_threads; ++i) workers_.emplace_back([this] { Work(); });
}

PrefetchIterator::~PrefetchIterator() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  for (auto& t : workers_) t.join();
}

absl::StatusOr<Batch> PrefetchIterator::Load(int64_t index) const {
  // One step per batch from the step the iteration started at (token warmup).
  return dataset_->LoadBatch(plan_[index], {epoch_, index}, first_step_ + (index - first_index_));
}

void PrefetchIterator::Work() {
  const int64_t total = static_cast<int64_t>(plan_.size());
  while (true) {
    int64_t index;
    {
      std::unique_lock<std::mutex> lock(mu_);
      // Bounded window: never more than window_ batches ahead of the consumer.
      cv_.wait(lock, [&] { return stop_ || next_to_schedule_ >= total || next_to_schedule_ < next_ + window_; });
      if (stop_ || next_to_schedule_ >= total) return;
      index = next_to_schedule_++;
    }
    absl::StatusOr<Batch> batch = Load(index);
    {
      std::lock_guard<std::mutex> lock(mu_);
      ready_.emplace(index, std::move(batch));
    }
    cv_.notify_all();
  }
}

absl::StatusOr<std::optional<Batch>> PrefetchIterator::Next() {
  while (next_ < static_cast<int64_t>(plan_.size())) {
    const int64_t index = next_;
    absl::StatusOr<Batch> result = absl::UnknownError("unset");
    if (workers_.empty()) {
      result = Load(index);
    } else {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return ready_.contains(index); });
      auto node = ready_.extract(index);
      result = std::move(node.mapped());
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++next_;
    }
    cv_.notify_all();
    if (!result.ok()) return result.status();
    // Every image of the batch failed to decode (named by the dataset): the
    // next batch instead. A data-parallel rank yields it (every rank must join
    // every step's all-reduce, even with nothing to add).
    if (result->size() == 0 && dataset_->args().world_size <= 1) continue;
    return std::optional<Batch>(std::move(*result));
  }
  return std::optional<Batch>();
}

}  // namespace lorad::data
