// A kohya-compatible training dataset: images found in folders or a
// dataset_config TOML, captions processed per epoch, aspect-ratio buckets,
// batches drawn from one bucket in a seeded per-epoch order, optional latent
// cache, background prefetch. The training loop's entry point into core/data.
//
//   ASSIGN_OR_RETURN(auto ds, data::Dataset::Open(args));
//   ds->num_batches_per_epoch();                // as kohya's BaseDataset.make_buckets
//   RETURN_IF_ERROR(ds->CacheLatents(encoder, {.vae_identity = id, .cache_dir = dir}));
//   ASSIGN_OR_RETURN(auto it, ds->Iterate({.epoch = 1, .batch_index = 0}));
//   while (true) { ASSIGN_OR_RETURN(auto b, it->Next()); if (!b) break; ... }
//
// Thread-safety: const methods may be called concurrently; Open/CacheLatents/
// Iterate are called by one thread (the training loop).
#pragma once

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "absl/status/statusor.h"
#include "core/data/batch.h"
#include "core/data/dataset_config.h"

namespace lorad::data {

class LatentCache;

// Maps a batch of images [B,3,H,W] float32 in [-1,1] to latents [B,C,H/8,W/8]
// (the VAE encode, already scaled as the trainer wants). Keeps core/data free of
// the model code.
using LatentEncoder = std::function<absl::StatusOr<torch::Tensor>(const torch::Tensor& images)>;

struct LatentCacheOptions {
  // Identifies the encoder (e.g. VAE file hash + dtype + scaling); part of every
  // cache key, so another VAE never reuses these latents. Must not be empty.
  std::string vae_identity;
  // On disk (safetensors files, survive restarts) when set; memory otherwise.
  std::optional<std::filesystem::path> cache_dir;
  int encode_batch_size = 4;
};

// How many latents were computed vs reused (sweeps count these).
struct CacheCounters {
  int64_t computed = 0;
  int64_t reused_memory = 0;
  int64_t reused_disk = 0;
  int64_t corrupt_recomputed = 0;  // disk entries that failed validation
};

struct IterateOptions {
  int prefetch_threads = 2;  // 0: decode on the caller's thread
  int queue_batches = 4;     // bounded prefetch queue (bounded memory)
};

// One image of the dataset as found at open time (header read only).
struct ImageEntry {
  std::filesystem::path path;
  int dataset_index = 0;
  int subset_index = 0;  // index into the dataset group's subsets
  bool is_reg = false;
  int num_repeats = 1;   // after regularisation rebalancing
  int width = 0;         // after EXIF orientation
  int height = 0;
  std::string caption;   // raw caption (first line rules applied later), or class tokens
  bool caption_from_file = false;
  // Why the class tokens were used instead: "" (caption file used), "missing",
  // "empty", or "unreadable: <reason>".
  std::string caption_problem;
  // Bucket assignment (sd-scripts library/train_util.py:BucketManager.select_bucket).
  int bucket_width = 0;
  int bucket_height = 0;
  int resized_width = 0;
  int resized_height = 0;
  double ar_error = 0.0;
};

struct BucketStat {
  int width = 0;
  int height = 0;
  int64_t count = 0;  // entries, with repeats
};

class Dataset : public BatchSource {
 public:
  // Resolves the configuration, scans the folders, reads every image header and
  // caption, assigns buckets. Unreadable/corrupt images are skipped with a
  // warning naming them (see skipped()). Errors: missing folder, no images, a
  // bad TOML key/value, an impossible bucket setting (each names path/key).
  static absl::StatusOr<std::unique_ptr<Dataset>> Open(const DatasetArgs& args);
  ~Dataset() override;

  // BatchSource.
  int64_t num_batches_per_epoch() const override;
  int64_t num_train_images() const override;
  absl::StatusOr<std::unique_ptr<BatchIterator>> Iterate(DataPosition start,
                                                        int64_t global_step = 0) override;
  absl::StatusOr<std::unique_ptr<BatchIterator>> Iterate(DataPosition start, int64_t global_step,
                                                        IterateOptions options);

  int64_t num_reg_images() const;  // with repeats, after rebalancing
  const std::vector<DatasetGroupConfig>& groups() const { return groups_; }
  const std::vector<ImageEntry>& images() const { return images_; }
  // Files that could not be read (path: reason), skipped.
  const std::vector<std::string>& skipped() const { return skipped_; }
  // Images whose header parsed at open but whose pixels did not decode later
  // (path: reason): left out of every batch from then on, like skipped().
  std::vector<std::string> decode_failures() const;
  const std::vector<std::string>& warnings() const { return warnings_; }
  std::vector<BucketStat> bucket_stats() const;
  const DatasetArgs& args() const { return args_; }

  // Encodes every (image, flip) the epochs will use, reusing cached latents
  // whose key (file content hash, bucket, crop, flip, vae_identity) matches.
  // Afterwards batches carry `latents` instead of `images`. Refused with
  // random_crop or color_aug (the latent would be stale), as kohya does.
  absl::Status CacheLatents(LatentEncoder encoder, LatentCacheOptions options);
  CacheCounters latent_cache_counters() const;

  // Deterministic batch plan of an epoch: entry indices into images(), with the
  // flip decided per sample. Depends only on (seed, epoch).
  struct PlannedSample {
    int64_t image = 0;
    bool flip = false;
  };
  std::vector<std::vector<PlannedSample>> PlanEpoch(int epoch) const;
  // Loads one planned batch (decode + resize + crop, or cached latents). A
  // sample whose image does not decode is left out and named (in the log,
  // Batch::skipped_images and decode_failures()); when every sample is left out
  // the batch is empty (size 0). An error only when no training image decodes.
  absl::StatusOr<Batch> LoadBatch(const std::vector<PlannedSample>& plan, DataPosition position,
                                  int64_t global_step) const;
  // The processed caption of image `image` at sample `slot` of batch
  // `batch_index` in `epoch` (deterministic from seed and those numbers; an
  // image repeated in an epoch gets a different shuffle per occurrence).
  std::string CaptionFor(int64_t image, int epoch, int64_t global_step, int64_t batch_index, int slot) const;
  // Where the pixels of a sample come from: (left, top) of the crop taken from
  // the resized image (centre, or seeded with random_crop).
  std::pair<int, int> CropOffsets(int64_t image, int epoch, int64_t batch_index, int slot) const;

  // Tag frequency per image folder name: {dir: {tag: images}}, as kohya counts
  // it for its metadata: raw captions split on ",", lower-cased, once per image.
  std::map<std::string, std::map<std::string, int64_t>> TagFrequency() const;

 private:
  Dataset() = default;
  absl::Status Load();
  bool IsDecodeFailure(int64_t image) const;
  // Records that `image` did not decode; FAILED_PRECONDITION when no training image is left.
  absl::Status RecordDecodeFailure(int64_t image, const absl::Status& why) const;

  DatasetArgs args_;
  std::vector<DatasetGroupConfig> groups_;
  std::vector<ImageEntry> images_;
  std::vector<std::string> skipped_;
  std::vector<std::string> warnings_;
  std::unique_ptr<LatentCache> latent_cache_;
  std::vector<std::string> content_sha256_;  // per image, filled by CacheLatents
  LatentEncoder encoder_;
  // The encoder may be a GPU model: prefetch workers never call it concurrently.
  mutable std::mutex encoder_mu_;
  bool serve_latents_ = false;
  // Images that did not decode during training: index -> "path: reason".
  mutable std::mutex failed_mu_;
  mutable std::map<int64_t, std::string> failed_;  // guarded by failed_mu_
};

}  // namespace lorad::data
