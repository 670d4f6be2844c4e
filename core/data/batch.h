// What the training loop consumes: one batch of images (or cached latents) with
// captions and SDXL size conditioning, and the abstract source that yields them.
// Header-only and free of OpenCV so core/train can code against it alone.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "absl/status/statusor.h"

namespace lorad::data {

// Where a run stands in its data: epoch (1-based, as kohya counts them; caption
// dropout every N epochs uses it) and the index of the next batch in that epoch.
// Resuming from a saved position yields exactly the batches an uninterrupted run
// would have seen, because each epoch's order depends only on (seed, epoch).
struct DataPosition {
  int epoch = 1;
  int64_t batch_index = 0;
  bool operator==(const DataPosition&) const = default;
};

// One training batch; every sample comes from the same bucket (same H, W).
struct Batch {
  // [B,3,H,W] float32 in [-1,1], RGB. Undefined when `latents` is served instead.
  torch::Tensor images;
  // [B,C,H/8,W/8] from the latent cache; undefined when images are served.
  torch::Tensor latents;
  // Captions after kohya's process_caption for this epoch/step.
  std::vector<std::string> captions;
  // int64 [B,2] each: original image (h, w), SDXL crop (top, left), bucket (h, w).
  torch::Tensor original_hw;
  torch::Tensor crop_top_left;
  torch::Tensor target_hw;
  // float32 [B]: 1 for training images, prior_loss_weight for regularisation images.
  torch::Tensor loss_weights;
  std::vector<std::filesystem::path> image_paths;
  std::vector<bool> flipped;
  std::vector<bool> is_reg;
  // Images of this batch's plan left out because their pixels did not decode
  // (see Dataset::decode_failures()); the batch is smaller by as many.
  std::vector<std::string> skipped_images;
  // Where this batch sits: (epoch, index in epoch) and the bucket (width, height).
  DataPosition position;
  int bucket_width = 0;
  int bucket_height = 0;
  // The planned (global) batch this one is a share of: its sample count, and
  // each served sample's index in it. Equal to size() and 0..size()-1 unless
  // the source is sharded for data-parallel training or images failed to decode.
  int64_t planned_size = 0;
  std::vector<int64_t> slots;
  int64_t size() const { return static_cast<int64_t>(captions.size()); }
};

// A forward-only stream of one epoch's batches, from a start index.
// Not thread-safe: one consumer.
class BatchIterator {
 public:
  virtual ~BatchIterator() = default;
  // The next batch, or nullopt at the end of the epoch; an error only when the
  // data became unusable (e.g. an image that vanished mid-run AND no fallback).
  virtual absl::StatusOr<std::optional<Batch>> Next() = 0;
  // The position of the batch the next call to Next() returns.
  virtual DataPosition position() const = 0;
};

// Anything that yields epochs of batches (the real Dataset, or a test source).
class BatchSource {
 public:
  virtual ~BatchSource() = default;
  virtual int64_t num_batches_per_epoch() const = 0;
  // Images counted with repeats (kohya's "num_train_images"), regularisation excluded.
  virtual int64_t num_train_images() const = 0;
  // The batches of `start.epoch` from `start.batch_index` on. `global_step` is the
  // optimizer step of the first batch (token warmup uses it).
  virtual absl::StatusOr<std::unique_ptr<BatchIterator>> Iterate(DataPosition start,
                                                                int64_t global_step = 0) = 0;
};

}  // namespace lorad::data
