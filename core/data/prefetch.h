// Background prefetch of one epoch's batches: worker threads decode and resize
// ahead of the consumer through a bounded window (at most `queue_batches`
// batches in memory), and batches come out in plan order whatever the thread
// timing, since each batch depends only on its position. The destructor stops
// and joins the workers (RAII). Internal to core/data.
#pragma once

#include <condition_variable>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

#include "core/data/dataset.h"

namespace lorad::data {

class PrefetchIterator : public BatchIterator {
 public:
  // `dataset` must outlive the iterator.
  PrefetchIterator(const Dataset* dataset, std::vector<std::vector<Dataset::PlannedSample>> plan,
                   DataPosition start, int64_t global_step, IterateOptions options);
  ~PrefetchIterator() override;
  PrefetchIterator(const PrefetchIterator&) = delete;
  PrefetchIterator& operator=(const PrefetchIterator&) = delete;

  absl::StatusOr<std::optional<Batch>> Next() override;
  DataPosition position() const override { return {epoch_, next_}; }

 private:
  void Work();
  absl::StatusOr<Batch> Load(int64_t index) const;

  const Dataset* dataset_;
  const std::vector<std::vector<Dataset::PlannedSample>> plan_;
  const int epoch_;
  const int64_t first_index_;
  const int64_t first_step_;
  const int64_t window_;
  int64_t next_;  // next index the consumer takes

  std::mutex mu_;
  std::condition_variable cv_;
  int64_t next_to_schedule_;                        // guarded by mu_
  std::map<int64_t, absl::StatusOr<Batch>> ready_;  // guarded by mu_
  bool stop_ = false;                               // guarded by mu_
  std::vector<std::thread> workers_;
};

}  // namespace lorad::data
