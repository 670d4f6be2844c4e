// WD14 tagging (SmilingWolf's wd-v1-4-*-tagger-v2 and wd-*-tagger-v3:
// ConvNeXt, SwinV2, ViT, MOAT) as kohya's finetune/tag_images_by_wd14_tagger.py
// does it, on OpenCV's dnn module: the vocabulary (selected_tags.csv), the
// image preprocessing, inference, tag selection by category threshold, and
// the caption a dataset file gets (written, merged or left alone).
//
// OpenCV 4.6 (Debian 12) and these models: its ONNX importer has no
// LayerNormalization, Gelu or Einsum and mishandles Mul by a constant vector;
// Wd14Tagger::Load fixes the model up first (core/data/onnx_compat.h).
// Torch-free; links OpenCV core/imgproc/imgcodecs/dnn only.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <opencv2/core.hpp>
#include <opencv2/dnn.hpp>

#include "absl/status/statusor.h"

namespace lorad::data {

inline constexpr int kWd14ImageSize = 448;

// selected_tags.csv categories.
enum class TagCategory { kGeneral = 0, kCharacter = 4, kRating = 9, kOther = -1 };

struct TagEntry {
  std::string name;  // as in the CSV (underscores)
  TagCategory category = TagCategory::kOther;
};

// The model's outputs, in CSV row order (row i = output i).
struct TagVocabulary {
  std::vector<TagEntry> tags;
};

// Parses selected_tags.csv (header tag_id,name,category,count; names may be
// quoted with commas inside). INVALID_ARGUMENT naming `name` and the line for
// a wrong header, a short row or a non-numeric category.
absl::StatusOr<TagVocabulary> ParseTagCsv(const std::string& text, const std::string& name);
absl::StatusOr<TagVocabulary> LoadTagCsv(const std::filesystem::path& path);

// kohya's preprocess_image on a decoded image (8-bit, 1/3/4 channels, BGR
// order as OpenCV decodes; 4: BGRA): alpha composited on white (PIL's paste
// rounding), padded to a centred square with white (the odd pixel right and
// bottom), resized to 448 with INTER_AREA when shrinking or LANCZOS4 when
// enlarging. Returns CV_8UC3 BGR 448x448.
absl::StatusOr<cv::Mat> PreprocessForWd14(const cv::Mat& decoded);

// Reads an image file as the tagger needs it (EXIF orientation applied, as
// lorad's trainer sees the image; 16-bit scaled to 8). DATA_LOSS naming the
// file when it does not decode.
absl::StatusOr<cv::Mat> LoadImageForWd14(const std::filesystem::path& path);

class Wd14Tagger {
 public:
  // Loads `model_path` (ONNX). NOT_FOUND / INVALID_ARGUMENT naming the file
  // when it is missing, not ONNX, or has operators OpenCV cannot run, or does
  // not take [N,448,448,3] and give `vocabulary` outputs.
  static absl::StatusOr<Wd14Tagger> Load(const std::filesystem::path& model_path, size_t vocabulary_size);

  // Probabilities for one preprocessed image (CV_8UC3 BGR 448x448).
  absl::StatusOr<std::vector<float>> Predict(const cv::Mat& preprocessed);

  int broadcast_muls_rewritten() const { return broadcast_muls_; }

 private:
  Wd14Tagger() = default;
  cv::dnn::Net net_;
  std::string name_;
  size_t outputs_ = 0;
  int broadcast_muls_ = 0;
};

struct TagSelection {
  float general_threshold = 0.35f;    // kohya --general_threshold / --thresh
  float character_threshold = 0.85f;  // kohya --character_threshold
  bool remove_underscore = true;      // kohya --remove_underscore (tags longer than 3 chars)
  bool character_tags_first = false;  // kohya --character_tags_first
  bool use_rating_tags = false;       // kohya --use_rating_tags: the likeliest rating first
  std::vector<std::string> undesired_tags;     // kohya --undesired_tags (after underscore removal)
  std::vector<std::string> always_first_tags;  // kohya --always_first_tags
};

// The tags for one image in kohya's order: general tags at or above their
// threshold in CSV order, then character tags (or before them), the rating
// first when asked, then always_first_tags moved to the front.
std::vector<std::string> SelectTags(const std::vector<float>& probabilities, const TagVocabulary& vocabulary,
                                    const TagSelection& selection);

enum class CaptionMode { kMerge, kOverwrite, kSkipExisting };
absl::StatusOr<CaptionMode> ParseCaptionMode(const std::string& text);

struct CaptionPolicy {
  CaptionMode mode = CaptionMode::kMerge;
  std::string trigger;  // first token (after the kept prefix)
  int keep_tokens = 0;  // kohya keep_tokens: the existing caption's first N tokens stay first, unchanged
  std::string separator = ", ";
};

struct CaptionResult {
  std::optional<std::string> caption;  // nullopt: leave the file alone (skip-existing)
  bool trigger_after_kept = false;     // the trigger had to follow a kept prefix that lacks it
};

// The caption to write given the existing one (nullopt when the image has no
// caption file): kept prefix (first keep_tokens tokens of the existing
// caption), the trigger, then (merge) the rest of the existing tokens, then
// the new tags not already present. Overwrite drops the existing tokens after
// the kept prefix; skip-existing leaves a captioned image alone.
CaptionResult ComposeCaption(const std::optional<std::string>& existing, const std::vector<std::string>& tags,
                             const CaptionPolicy& policy);

}  // namespace lorad::data
