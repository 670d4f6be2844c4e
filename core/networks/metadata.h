// LoRA file metadata as kohya writes it: the ss_* training record (sd-scripts
// train_network.py), modelspec.* (library/sai_model_spec.py), and the two hashes A1111
// reads (library/train_util.py:precalculate_safetensors_hashes).
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/base/sha256.h"
#include "core/config/config.h"
#include "core/io/safetensors.h"
#include "core/networks/network_config.h"

namespace lorad::networks {

enum class BaseModel { kSd15, kSdxl };

// Python's str() of a float ("0.0001", "1e-05", "1.0"), as kohya's metadata holds them.
std::string PythonFloat(double value);
// "True" / "False".
std::string PythonBool(bool value);

// Builds the ss_* map. Keys must be in kohya's table and set once; values must
// be UTF-8 (the safetensors header is JSON). The first failure (a key not in
// the table, a key set twice, a bad value) is kept and the later calls do
// nothing, so a caller sets every key and checks once. Not thread-safe.
class LoraMetadataBuilder {
 public:
  void Set(const std::string& key, const std::string& value);
  void SetFloat(const std::string& key, std::optional<double> value);  // nullopt -> "None"
  void SetInt(const std::string& key, std::optional<int64_t> value);   // nullopt -> "None"
  void SetBool(const std::string& key, bool value);
  void SetJson(const std::string& key, const nlohmann::json& value);

  // ss_network_module / dim / alpha / dropout / args from the config.
  void SetNetwork(const NetworkConfig& config);
  // ss_base_model_version ("sd_v1" / "sdxl_base_v1-0"), ss_v2 "False", ss_v_parameterization.
  void SetBaseModel(BaseModel base, bool v_parameterization);

  // OK, or the first failure.
  const absl::Status& status() const { return status_; }
  // Every key set, or the first failure.
  absl::StatusOr<io::Metadata> Build() const;
  // With --no_metadata kohya keeps only the network keys.
  absl::StatusOr<io::Metadata> BuildMinimal() const;

 private:
  io::Metadata metadata_;
  absl::Status status_;
};

// Whether `key` is one of the ss_* keys kohya writes.
bool IsKnownSsKey(const std::string& key);

// The current local time as ISO-8601 ("2024-01-31T12:00:00"), modelspec.date's form.
std::string NowIso8601();

struct ModelSpecInput {
  BaseModel base = BaseModel::kSdxl;
  bool v_prediction = false;
  std::string title;  // empty -> "LoRA@<date>"
  std::string date;   // ISO-8601 local time; empty -> now
  std::string resolution;  // "WxH"; empty -> 512x512 / 1024x1024
  std::string description, author, license, tags, trigger_phrase;
  std::optional<int64_t> min_timestep, max_timestep;  // timestep_range only if set
  std::optional<int64_t> clip_skip;                    // encoder_layer
  std::string implementation_version;                  // e.g. "lorad/<version>"
};

// modelspec.* keys for a LoRA (sai_model_spec 1.0.1).
io::Metadata BuildModelSpec(const ModelSpecInput& input);

// Facts about the training images that kohya records (ss_num_reg_images,
// ss_tag_frequency, ss_dataset_dirs, ss_reg_dataset_dirs, ss_bucket_info,
// ss_datasets). Plain values: the dataset computes them, this module names them.
struct BucketCount {
  int width = 0;
  int height = 0;
  int64_t count = 0;  // entries, with repeats
};
struct SubsetFacts {
  std::string image_dir;  // the folder's name, e.g. "10_sks dog"
  bool is_reg = false;
  int64_t img_count = 0;  // images found (without repeats)
  int num_repeats = 1;
  bool color_aug = false;
  bool flip_aug = false;
  bool random_crop = false;
  bool shuffle_caption = false;
  int keep_tokens = 0;
  std::string keep_tokens_separator;
  std::string class_tokens;
};
struct DatasetGroupFacts {
  int batch_size = 1;
  int64_t num_train_images = 0;  // with repeats
  int64_t num_reg_images = 0;    // with repeats
  int resolution_width = 512;
  int resolution_height = 512;
  bool enable_bucket = false;
  int min_bucket_reso = 256;
  int max_bucket_reso = 1024;
  std::vector<SubsetFacts> subsets;
  std::vector<BucketCount> buckets;  // this group's, by resolution
  double mean_img_ar_error = 0;
};
struct DatasetFacts {
  int64_t num_reg_images = 0;  // with repeats, after rebalancing
  // {image folder name: {tag: images}}: captions split on ",", lower-cased.
  std::map<std::string, std::map<std::string, int64_t>> tag_frequency;
  std::vector<DatasetGroupFacts> groups;
  std::vector<BucketCount> buckets;  // all groups, by resolution
  double mean_img_ar_error = 0;
};

// What a run knows when it saves a LoRA, beyond its config.
struct TrainingFacts {
  BaseModel base = BaseModel::kSdxl;
  NetworkConfig network;
  std::string optimizer;  // ss_optimizer: the optimizer's own description
  int64_t seed = 0;       // ss_seed and ss_session_id
  int64_t started_at = 0;   // unix seconds
  int64_t finished_at = 0;  // unix seconds (the time of this save)
  std::string date;         // modelspec.date; empty -> now
  std::pair<int64_t, int64_t> resolution{512, 512};  // width, height
  int64_t num_train_images = 0;  // with repeats
  int64_t num_batches_per_epoch = 0;
  int64_t num_epochs = 0;
  int64_t epoch = 0;  // epochs completed
  int64_t steps = 0;  // optimizer steps completed
  int64_t max_train_steps = 0;
  int64_t lr_warmup_steps = 0;
  std::string implementation_version;  // modelspec.implementation_version, e.g. "lorad/<version>"
  // Unset for a batch source that is not a folder dataset: its keys are left out.
  std::optional<DatasetFacts> dataset;
};

// The metadata of a saved LoRA: the ss_* training record and modelspec.*, or
// with config.no_metadata only the four network keys. Pure: the same inputs give
// the same map. Errors: the builder's first failure (INVALID_ARGUMENT).
absl::StatusOr<io::Metadata> BuildLoraMetadata(const train::TrainConfig& config, const TrainingFacts& facts);

struct SafetensorsHashes {
  std::string model_hash;   // sshs_model_hash: sha256 of the data buffer
  std::string legacy_hash;  // sshs_legacy_hash: first 8 hex of sha256(bytes[0x100000, +0x10000))
};

// kohya's precalculate_safetensors_hashes: serializes `tensors` with only the
// ss_* entries of `metadata`, then hashes (addnet_hash_safetensors, addnet_hash_legacy).
absl::StatusOr<SafetensorsHashes> ComputeSafetensorsHashes(const io::NamedTensors& tensors,
                                                           const io::Metadata& metadata);

// Adds sshs_model_hash and sshs_legacy_hash of `tensors` saved with `metadata`.
absl::Status AddSafetensorsHashes(const io::NamedTensors& tensors, io::Metadata& metadata);

// SHA-256 hex digest (the one implementation, core/base/sha256.h).
using ::lorad::Sha256Hex;

}  // namespace lorad::networks
