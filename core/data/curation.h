// The dataset curation report: what a LoRA trainer should check before
// training (duplicates, low resolution, caption problems, mixed tagging styles,
// keep_tokens, buckets, steps). Used by `lorad-curate` and the daemon.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "core/data/dataset.h"

namespace lorad::data {

struct CurationOptions {
  int batch_size = 0;      // 0: the dataset's own batch size(s)
  int near_threshold = 8;  // max pHash Hamming distance (of 64 bits) for a near duplicate
  int top_tags = 20;
  int keep_tokens_samples = 5;
};

struct CurationReport {
  struct Subset {
    std::string image_dir;
    bool is_reg = false;
    int64_t images = 0;
    int num_repeats = 1;
    int64_t with_repeats = 0;  // after regularisation rebalancing
    int keep_tokens = 0;
    std::string caption_extension;
  };
  struct SizedImage {
    std::string path;
    int width = 0;
    int height = 0;
  };
  struct NearPair {
    std::string a;
    std::string b;
    int distance = 0;
  };
  struct CaptionStyle {
    std::string path;
    std::string style;  // "booru", "natural", "short"
  };
  struct KeepTokensPreview {
    std::string path;
    int keep_tokens = 0;
    std::string kept;  // the fixed part kohya never shuffles
    std::string rest;  // the shuffled part
  };

  std::vector<Subset> subsets;
  int64_t images = 0;                // readable images used
  int64_t train_with_repeats = 0;
  int64_t reg_with_repeats = 0;
  int batch_size = 0;
  int64_t steps_per_epoch = 0;
  std::vector<std::vector<std::string>> exact_duplicates;  // groups of identical files
  std::vector<NearPair> near_duplicates;
  int near_threshold = 0;
  std::vector<SizedImage> below_512;   // short side < 512
  std::vector<SizedImage> below_1024;  // short side < 1024 (includes below_512)
  std::vector<BucketStat> buckets;
  std::vector<std::string> missing_captions;
  std::vector<std::string> empty_captions;
  std::vector<std::string> unreadable_captions;  // "path: reason"
  std::vector<CaptionStyle> caption_styles;
  int64_t booru_captions = 0;
  int64_t natural_captions = 0;
  bool mixed_caption_styles = false;
  std::vector<std::pair<std::string, int64_t>> top_tags;
  std::vector<KeepTokensPreview> keep_tokens_preview;
  // The first kCaptionHeadPositions tags of every caption file, counted per
  // (tag, 1-based position): the advisor finds a trigger word in them and
  // checks keep_tokens protects it, even when keep_tokens is 0.
  struct CaptionHead {
    std::string tag;  // lowercased
    int position = 1;
    int64_t count = 0;
  };
  static constexpr int kCaptionHeadPositions = 3;
  std::vector<CaptionHead> caption_heads;  // count >= 2 only; most frequent, then earliest, first
  int64_t captions_from_files = 0;         // the captions caption_heads counts over
  std::vector<std::string> unreadable_files;  // "path: reason"
  std::vector<std::string> warnings;          // the problems, one line each

  std::string ToJson() const;
  std::string ToText() const;
};

// Decodes every image once (content hash, perceptual hash) and assembles the report.
absl::StatusOr<CurationReport> BuildCurationReport(const Dataset& dataset, const CurationOptions& options);
// Opens the dataset first; a dataset that cannot be opened at all is the error.
absl::StatusOr<CurationReport> BuildCurationReport(const DatasetArgs& args, const CurationOptions& options);

// "booru" (short comma-separated tags), "natural" (sentences) or "short" (too
// little text to tell, e.g. only a trigger word).
std::string ClassifyCaptionStyle(const std::string& caption);

}  // namespace lorad::data
