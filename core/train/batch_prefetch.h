// The next batch ready before the step that needs it: PrefetchingIterator
// reads one batch ahead of the training loop and, on CUDA, copies its tensors
// to the device from pinned memory on a copy stream while the current step
// runs. The loop's stream waits for that copy with an event, never the host.
// Errors of the batch read ahead surface when the loop asks for that batch, so
// every earlier step completes (and is saved) first.
#pragma once

#include <memory>
#include <optional>

#include <torch/torch.h>

#include "absl/status/statusor.h"
#include "core/data/batch.h"

namespace lorad::train {

class PrefetchingIterator final : public data::BatchIterator {
 public:
  // `device`: where the batches' tensors go (images, latents, size
  // conditioning, loss weights); on the CPU they stay as the inner iterator made them.
  PrefetchingIterator(std::unique_ptr<data::BatchIterator> inner, const torch::Device& device);
  ~PrefetchingIterator() override;

  absl::StatusOr<std::optional<data::Batch>> Next() override;
  // The position after the last batch Next() returned (the inner iterator is
  // one batch further).
  data::DataPosition position() const override { return position_; }

 private:
  struct Staged;
  std::unique_ptr<Staged> Fetch();

  std::unique_ptr<data::BatchIterator> inner_;
  torch::Device device_;
  data::DataPosition position_;
  std::unique_ptr<Staged> ahead_;
};

}  // namespace lorad::train
