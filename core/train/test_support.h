// Test helpers for the training loop: an in-memory BatchSource with kohya's
// per-epoch seeded order, a generated captioned dataset, and the training-set
// loss at fixed timesteps and noise.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "absl/status/statusor.h"
#include "core/data/batch.h"
#include "core/config/config.h"
#include "core/train/model_bundle.h"

namespace lorad::train::testing {

struct CaptionedImages {
  torch::Tensor images;  // [N,3,H,W] in [-1,1]
  std::vector<std::string> captions;
};

// N distinct images (coloured shapes on coloured backgrounds) with captions
// that name the shape and colours. Deterministic.
CaptionedImages MakeShapesDataset(int64_t count, int64_t size);

// Writes them as <dir>/<repeats>_shapes/img_XX.png + .caption (kohya layout).
absl::Status WriteDatasetFolder(const CaptionedImages& data, const std::filesystem::path& dir, int repeats);

// Batches of one epoch in an order drawn from (seed, epoch); the last batch may be short.
class MemoryBatchSource : public data::BatchSource {
 public:
  MemoryBatchSource(CaptionedImages data, int64_t batch_size, uint64_t seed);
  int64_t num_batches_per_epoch() const override;
  int64_t num_train_images() const override { return data_.images.size(0); }
  absl::StatusOr<std::unique_ptr<data::BatchIterator>> Iterate(data::DataPosition start,
                                                              int64_t global_step) override;
  std::vector<int64_t> EpochOrder(int epoch) const;
  const CaptionedImages& data() const { return data_; }
  int64_t batch_size() const { return batch_size_; }
  // Data-parallel: batches of batch_size are planned as global batches and this
  // rank is served its balanced share of each (Batch::planned_size / slots).
  void SetShard(int64_t rank, int64_t world_size) {
    rank_ = rank;
    world_size_ = world_size;
  }
  int64_t rank() const { return rank_; }
  int64_t world_size() const { return world_size_; }

 private:
  CaptionedImages data_;
  int64_t batch_size_;
  uint64_t seed_;
  int64_t rank_ = 0;
  int64_t world_size_ = 1;
};

// Mean training-set loss at fixed timesteps and noise (seeded), with the base
// model as it is (adapters attached or not, at their current values).
double FixedLoss(ModelBundle& model, const CaptionedImages& data, uint64_t seed);

// A TrainConfig for the tiny SDXL fixture writing into `output_dir`.
TrainConfig TinySdxlConfig(const std::filesystem::path& output_dir);

}  // namespace lorad::train::testing
