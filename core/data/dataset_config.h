// Dataset configuration with kohya's names and defaults: the flat command-line
// keys (train_data_dir / reg_data_dir + resolution, enable_bucket, ...) and the
// dataset_config TOML ([general], [[datasets]], [[datasets.subsets]]), resolved
// the way kohya's config_util does: subset > dataset > general > flat keys.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace lorad::data {

// One image folder and how its captions/augmentations are treated (kohya BaseSubset).
struct SubsetConfig {
  std::filesystem::path image_dir;
  int num_repeats = 1;
  std::string class_tokens;  // caption for images without a caption file
  bool is_reg = false;
  // Captions (sd-scripts library/train_util.py:BaseDataset.process_caption).
  std::string caption_extension = ".caption";
  bool shuffle_caption = false;
  std::string caption_separator = ",";
  int keep_tokens = 0;
  std::string keep_tokens_separator;
  std::string secondary_separator;
  bool enable_wildcard = false;
  std::string caption_prefix;
  std::string caption_suffix;
  double caption_dropout_rate = 0.0;
  int caption_dropout_every_n_epochs = 0;
  double caption_tag_dropout_rate = 0.0;
  double token_warmup_step = 0.0;  // < 1: a fraction of max_train_steps
  int token_warmup_min = 1;
  // Augmentation.
  bool flip_aug = false;
  bool random_crop = false;
  bool color_aug = false;
};

// One [[datasets]] entry: its own resolution, buckets and batch size.
struct DatasetGroupConfig {
  int resolution_width = 512;
  int resolution_height = 512;
  int batch_size = 1;
  bool enable_bucket = false;
  int min_bucket_reso = 256;
  int max_bucket_reso = 1024;
  int bucket_reso_steps = 64;
  bool bucket_no_upscale = false;
  std::vector<SubsetConfig> subsets;
};

// Everything needed to open a dataset. Either `dataset_config` (a kohya TOML) or
// `train_data_dir` (+ optional `reg_data_dir`) of `N_name` folders. The flat
// fields below are kohya's command-line keys; with a TOML they are the lowest
// fallback, exactly as in kohya.
struct DatasetArgs {
  std::optional<std::filesystem::path> dataset_config;
  std::optional<std::filesystem::path> train_data_dir;
  std::optional<std::filesystem::path> reg_data_dir;

  // Dataset-level flat keys.
  int resolution_width = 512;
  int resolution_height = 512;
  int train_batch_size = 1;
  bool enable_bucket = false;
  int min_bucket_reso = 256;
  int max_bucket_reso = 1024;
  int bucket_reso_steps = 64;
  bool bucket_no_upscale = false;
  // Subset-level flat keys (defaults for every subset).
  SubsetConfig subset_defaults;

  double prior_loss_weight = 1.0;
  uint64_t seed = 42;
  int64_t max_train_steps = 0;  // for a fractional token_warmup_step
  // Textual-inversion style replacements, in order ("" replaces the whole caption).
  std::vector<std::pair<std::string, std::string>> caption_replacements;
  // Data-parallel training (core/train/distributed.h): an epoch is planned in
  // global batches of batch_size x world_size, the same on every rank, and this
  // rank loads its contiguous share of each (a balanced split: rank r takes
  // samples [r*n/W, (r+1)*n/W) of a planned batch of n). A share can be empty
  // (a bucket's short last batch): such a batch is still yielded, with size 0.
  int world_size = 1;
  int rank = 0;
};

// The resolved configuration: one or more dataset groups.
struct ResolvedDatasets {
  std::vector<DatasetGroupConfig> datasets;
  std::vector<std::string> warnings;  // unknown keys, ignored folders, ...
};

// Parses "512", "512,768" or "512x768" (kohya's --resolution) into (w, h).
absl::StatusOr<std::pair<int, int>> ParseResolution(const std::string& text);

// Scans a kohya DreamBooth folder: every `N_tokens` subfolder is a subset with
// num_repeats N and class_tokens "tokens"; other entries are ignored with a warning.
absl::StatusOr<std::vector<SubsetConfig>> ScanRepeatFolders(const std::filesystem::path& dir,
                                                            const SubsetConfig& defaults, bool is_reg,
                                                            std::vector<std::string>* warnings);

// Resolves `args` into dataset groups: reads the TOML (unknown key -> warning
// naming it; wrong type or value -> error naming the key and what is allowed)
// or scans the folders. Relative image_dir paths resolve against the TOML's folder.
absl::StatusOr<ResolvedDatasets> ResolveDatasets(const DatasetArgs& args);

// Parses TOML text (for tests and for the daemon, which receives it inline).
// `base_dir` anchors relative image_dir values.
absl::StatusOr<ResolvedDatasets> ParseDatasetConfigToml(const std::string& toml_text,
                                                        const std::filesystem::path& base_dir,
                                                        const DatasetArgs& fallbacks);

}  // namespace lorad::data
