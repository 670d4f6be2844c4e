// Latent and text-encoder output caches, in memory or on disk as safetensors
// files (one per entry, named by the hash of its key) that survive restarts.
// A disk cache holds nothing in memory (bounded memory for large datasets):
// every lookup reads its file, which the OS page cache keeps warm.
// A disk entry is trusted only if it parses, its stored key text equals the
// expected one and its tensors are finite; otherwise it is recomputed with a
// warning. Thread-safe.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "core/data/dataset.h"

namespace lorad::data {

// A small keyed store of named tensors (memory, plus disk when `dir` is set).
class TensorCache {
 public:
  using Entry = std::map<std::string, torch::Tensor>;
  // `kind` ("latent", "text") appears in warnings; `dir` is created if missing.
  static absl::StatusOr<std::unique_ptr<TensorCache>> Create(std::string kind,
                                                            std::optional<std::filesystem::path> dir);

  // The entry for `key_text`, from memory or disk; nullopt when absent or corrupt.
  std::optional<Entry> Lookup(const std::string& key_text);
  // Stores in memory, or (atomically) on disk when the cache has a folder.
  absl::Status Store(const std::string& key_text, const Entry& entry);
  void CountComputed(int64_t n);
  CacheCounters counters() const;
  // The file a key is stored in (for tests and tooling).
  std::filesystem::path PathFor(const std::string& key_text) const;

 private:
  TensorCache() = default;
  std::string kind_;
  std::optional<std::filesystem::path> dir_;
  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, Entry> memory_ ABSL_GUARDED_BY(mu_);
  CacheCounters counters_ ABSL_GUARDED_BY(mu_);
};

// Latents of (image content, bucket, crop, flip) for one VAE identity.
class LatentCache {
 public:
  static absl::StatusOr<std::unique_ptr<LatentCache>> Create(const LatentCacheOptions& options);
  // The key text: everything that changes the latent.
  std::string KeyText(const std::string& content_sha256, int bucket_w, int bucket_h, int crop_left, int crop_top,
                      bool flip) const;
  std::optional<torch::Tensor> Lookup(const std::string& key_text);
  absl::Status Store(const std::string& key_text, const torch::Tensor& latent);
  void CountComputed(int64_t n) { store_->CountComputed(n); }
  CacheCounters counters() const { return store_->counters(); }
  std::filesystem::path PathFor(const std::string& key_text) const { return store_->PathFor(key_text); }
  const LatentCacheOptions& options() const { return options_; }

 private:
  LatentCacheOptions options_;
  std::unique_ptr<TensorCache> store_;
};

// Text-encoder outputs per caption: `encode` maps captions to named tensors with
// the batch first (e.g. {"hidden": [B,77,768], "pooled": [B,1280]}).
using TextEncoderFn =
    std::function<absl::StatusOr<std::map<std::string, torch::Tensor>>(const std::vector<std::string>& captions)>;

class TextEncoderCache {
 public:
  // `encoder_identity` names the encoders (weights hash, clip_skip, dtype...).
  static absl::StatusOr<std::unique_ptr<TextEncoderCache>> Create(std::string encoder_identity,
                                                                  std::optional<std::filesystem::path> dir);
  // Outputs for `captions` (stacked in order), encoding only the captions not cached.
  absl::StatusOr<std::map<std::string, torch::Tensor>> Get(const std::vector<std::string>& captions,
                                                           const TextEncoderFn& encode);
  CacheCounters counters() const { return store_->counters(); }

 private:
  std::string identity_;
  std::unique_ptr<TensorCache> store_;
};

}  // namespace lorad::data
