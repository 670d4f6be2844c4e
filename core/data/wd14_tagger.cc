#include "core/data/wd14_tagger.h"

#include <algorithm>
#include <fstream>
#include <set>
#include <sstream>

#include <opencv2/core/utils/logger.hpp>
#include <opencv2/imgproc.hpp>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "core/data/caption.h"
#include "core/data/image_io.h"
#include "core/data/onnx_compat.h"

namespace lorad::data {
namespace fs = std::filesystem;
namespace {

// One CSV record (RFC 4180 quoting: "a,b" and "" for a quote).
std::vector<std::string> SplitCsvRow(const std::string& line) {
  std::vector<std::string> fields(1);
  bool quoted = false;
  for (size_t i = 0; i < line.size(); ++i) {
    const char c = line[i];
    if (quoted) {
      if (c == '"' && i + 1 < line.size() && line[i + 1] == '"') {
        fields.back().push_back('"');
        ++i;
      } else if (c == '"') {
        quoted = false;
      } else {
        fields.back().push_back(c);
      }
    } else if (c == '"') {
      quoted = true;
    } else if (c == ',') {
      fields.emplace_back();
    } else {
      fields.back().push_back(c);
    }
  }
  return fields;
}

// kohya's remove_underscore: only tags longer than 3 characters, so
// kaomoji such as ^_^ keep theirs.
std::string Displayed(const std::string& tag, bool remove_underscore) {
  if (!remove_underscore || tag.size() <= 3) return tag;
  std::string out = tag;
  std::replace(out.begin(), out.end(), '_', ' ');
  return out;
}

}  // namespace

absl::StatusOr<TagVocabulary> ParseTagCsv(const std::string& text, const std::string& name) {
  std::istringstream in(text);
  std::string line;
  int line_no = 0;
  TagVocabulary vocabulary;
  bool header = false;
  while (std::getline(in, line)) {
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line_no == 1 && line.rfind("\xEF\xBB\xBF", 0) == 0) line.erase(0, 3);  // UTF-8 BOM
    if (line.empty()) continue;
    const std::vector<std::string> fields = SplitCsvRow(line);
    if (!header) {
      if (fields.size() < 3 || fields[0] != "tag_id" || fields[1] != "name" || fields[2] != "category") {
        return absl::InvalidArgumentError(absl::StrCat(
            name, ": the first line must be the header tag_id,name,category[,count] of the tagger's "
                  "selected_tags.csv, got \"", line.substr(0, 80), "\""));
      }
      header = true;
      continue;
    }
    int category = 0;
    if (fields.size() < 3 || fields[1].empty() || !absl::SimpleAtoi(fields[2], &category)) {
      return absl::InvalidArgumentError(absl::StrCat(name, " line ", line_no,
                                                     ": expected tag_id,name,category with a tag name and a "
                                                     "numeric category, got \"", line.substr(0, 80), "\""));
    }
    TagEntry entry;
    entry.name = fields[1];
    entry.category = category == 0   ? TagCategory::kGeneral
                     : category == 4 ? TagCategory::kCharacter
                     : category == 9 ? TagCategory::kRating
                                     : TagCategory::kOther;
    vocabulary.tags.push_back(std::move(entry));
  }
  if (!header || vocabulary.tags.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(name, " has no tags (expected the tagger's selected_tags.csv)"));
  }
  return vocabulary;
}

absl::StatusOr<TagVocabulary> LoadTagCsv(const fs::path& path) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) {
    return absl::NotFoundError(absl::StrCat("tag list ", path.string(),
                                            " not found (give the selected_tags.csv that came with the model)"));
  }
  auto bytes = ReadFileBytes(path);
  if (!bytes.ok()) return bytes.status();
  return ParseTagCsv(*bytes, path.string());
}

absl::StatusOr<cv::Mat> PreprocessForWd14(const cv::Mat& decoded) {
  if (decoded.empty() || decoded.depth() != CV_8U) {
    return absl::InvalidArgumentError("the tagger needs a decoded 8-bit image");
  }
  cv::Mat bgr;
  if (decoded.channels() == 1) {
    cv::cvtColor(decoded, bgr, cv::COLOR_GRAY2BGR);
  } else if (decoded.channels() == 3) {
    bgr = decoded;
  } else if (decoded.channels() == 4) {
    // PIL's paste(mask=alpha) on white: (c*a + 255*(255-a)) / 255, rounded.
    bgr.create(decoded.rows, decoded.cols, CV_8UC3);
    for (int y = 0; y < decoded.rows; ++y) {
      const uint8_t* s = decoded.ptr<uint8_t>(y);
      uint8_t* d = bgr.ptr<uint8_t>(y);
      for (int x = 0; x < decoded.cols; ++x, s += 4, d += 3) {
        for (int c = 0; c < 3; ++c) d[c] = static_cast<uint8_t>((s[c] * s[3] + 255 * (255 - s[3]) + 127) / 255);
      }
    }
  } else {
    return absl::InvalidArgumentError(absl::StrCat("unsupported channel count ", decoded.channels()));
  }
  // Centred on a white square; numpy's pad puts the odd pixel after.
  const int size = std::max(bgr.rows, bgr.cols);
  const int pad_x = size - bgr.cols, pad_y = size - bgr.rows;
  cv::Mat square;
  cv::copyMakeBorder(bgr, square, pad_y / 2, pad_y - pad_y / 2, pad_x / 2, pad_x - pad_x / 2, cv::BORDER_CONSTANT,
                     cv::Scalar(255, 255, 255));
  cv::Mat out;
  cv::resize(square, out, cv::Size(kWd14ImageSize, kWd14ImageSize), 0, 0,
             size >= kWd14ImageSize ? cv::INTER_AREA : cv::INTER_LANCZOS4);
  return out;
}

absl::StatusOr<cv::Mat> LoadImageForWd14(const fs::path& path) {
  auto rgb = LoadImageRgb(path);  // orientation applied, alpha on white with PIL's rounding
  if (!rgb.ok()) return rgb.status();
  cv::Mat bgr;
  cv::cvtColor(*rgb, bgr, cv::COLOR_RGB2BGR);
  return bgr;
}

absl::StatusOr<Wd14Tagger> Wd14Tagger::Load(const fs::path& model_path, size_t vocabulary_size) {
  std::error_code ec;
  if (!fs::is_regular_file(model_path, ec)) {
    return absl::NotFoundError(absl::StrCat("tagger model ", model_path.string(),
                                            " not found (give the model.onnx of a WD14 tagger)"));
  }
  auto bytes = ReadFileBytes(model_path);
  if (!bytes.ok()) return bytes.status();
  auto rewritten = RewriteForOpenCv(*bytes, model_path.string());
  if (!rewritten.ok()) return rewritten.status();
  RegisterOnnxCompatLayers();
  Wd14Tagger tagger;
  tagger.name_ = model_path.string();
  tagger.outputs_ = vocabulary_size;
  tagger.broadcast_muls_ = rewritten->broadcast_muls;
  cv::utils::logging::setLogLevel(cv::utils::logging::LOG_LEVEL_ERROR);
  try {
    tagger.net_ = cv::dnn::readNetFromONNX(rewritten->model.data(), rewritten->model.size());
  } catch (const cv::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(
        "OpenCV ", CV_VERSION, " cannot import the tagger model ", model_path.string(), ": ", e.what(),
        " (see `lorad-tag --help` for the operators it supports)"));
  }
  if (tagger.net_.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("tagger model ", model_path.string(), " has no layers"));
  }
  tagger.net_.setPreferableBackend(cv::dnn::DNN_BACKEND_OPENCV);
  tagger.net_.setPreferableTarget(cv::dnn::DNN_TARGET_CPU);
  // One blank image proves the graph runs and has the vocabulary's width.
  auto probe = tagger.Predict(cv::Mat(kWd14ImageSize, kWd14ImageSize, CV_8UC3, cv::Scalar(255, 255, 255)));
  if (!probe.ok()) return probe.status();
  return tagger;
}

absl::StatusOr<std::vector<float>> Wd14Tagger::Predict(const cv::Mat& preprocessed) {
  if (preprocessed.type() != CV_8UC3 || preprocessed.rows != kWd14ImageSize || preprocessed.cols != kWd14ImageSize) {
    return absl::InvalidArgumentError("the tagger's input must be a preprocessed 448x448 BGR image");
  }
  cv::Mat as_float;
  preprocessed.convertTo(as_float, CV_32F);  // 0..255, as the models were trained
  const int shape[] = {1, kWd14ImageSize, kWd14ImageSize, 3};
  const cv::Mat blob(4, shape, CV_32F, as_float.ptr<float>());
  cv::Mat out;
  try {
    net_.setInput(blob);
    out = net_.forward();
  } catch (const cv::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("tagger model ", name_, " failed to run in OpenCV ", CV_VERSION,
                                                   ": ", e.what(), " (its input must be [N,448,448,3] float32)"));
  }
  if (out.depth() != CV_32F || out.total() != outputs_) {
    return absl::InvalidArgumentError(absl::StrCat("tagger model ", name_, " gives ", out.total(),
                                                   " outputs but the tag list has ", outputs_,
                                                   " tags: use the selected_tags.csv that came with this model"));
  }
  const float* p = out.ptr<float>();
  return std::vector<float>(p, p + out.total());
}

std::vector<std::string> SelectTags(const std::vector<float>& probabilities, const TagVocabulary& vocabulary,
                                    const TagSelection& selection) {
  const std::set<std::string> undesired(selection.undesired_tags.begin(), selection.undesired_tags.end());
  std::vector<std::string> general, character;
  int rating = -1;
  const size_t n = std::min(probabilities.size(), vocabulary.tags.size());
  for (size_t i = 0; i < n; ++i) {
    const TagEntry& entry = vocabulary.tags[i];
    const float p = probabilities[i];
    const std::string tag = Displayed(entry.name, selection.remove_underscore);
    if (entry.category == TagCategory::kRating) {
      if (rating < 0 || p > probabilities[static_cast<size_t>(rating)]) rating = static_cast<int>(i);
      continue;
    }
    if (undesired.count(tag)) continue;
    if (entry.category == TagCategory::kGeneral && p >= selection.general_threshold) general.push_back(tag);
    if (entry.category == TagCategory::kCharacter && p >= selection.character_threshold) character.push_back(tag);
  }
  std::vector<std::string> tags = selection.character_tags_first ? character : general;
  const auto& second = selection.character_tags_first ? general : character;
  tags.insert(tags.end(), second.begin(), second.end());
  if (selection.use_rating_tags && rating >= 0) {
    const std::string tag = Displayed(vocabulary.tags[static_cast<size_t>(rating)].name, selection.remove_underscore);
    if (!undesired.count(tag)) tags.insert(tags.begin(), tag);
  }
  // kohya moves each listed tag to the front in turn: the last listed ends first.
  for (const std::string& first : selection.always_first_tags) {
    auto it = std::find(tags.begin(), tags.end(), first);
    if (it == tags.end()) continue;
    tags.erase(it);
    tags.insert(tags.begin(), first);
  }
  return tags;
}

absl::StatusOr<CaptionMode> ParseCaptionMode(const std::string& text) {
  if (text == "merge") return CaptionMode::kMerge;
  if (text == "overwrite") return CaptionMode::kOverwrite;
  if (text == "skip-existing") return CaptionMode::kSkipExisting;
  return absl::InvalidArgumentError(absl::StrCat("caption mode \"", text,
                                                 "\" is not one of merge, overwrite, skip-existing"));
}

CaptionResult ComposeCaption(const std::optional<std::string>& existing, const std::vector<std::string>& tags,
                             const CaptionPolicy& policy) {
  CaptionResult result;
  if (existing && policy.mode == CaptionMode::kSkipExisting) return result;
  const std::vector<std::string> old = existing ? CaptionTags(*existing, ",") : std::vector<std::string>{};
  const size_t kept = std::min(old.size(), static_cast<size_t>(std::max(policy.keep_tokens, 0)));
  std::vector<std::string> out(old.begin(), old.begin() + static_cast<long>(kept));
  auto present = [&out](const std::string& t) { return std::find(out.begin(), out.end(), t) != out.end(); };
  const std::string trigger = PyStrip(policy.trigger);
  if (!trigger.empty() && !present(trigger)) {
    result.trigger_after_kept = kept > 0;
    out.push_back(trigger);
  }
  if (policy.mode == CaptionMode::kMerge) {
    for (size_t i = kept; i < old.size(); ++i) {
      if (!present(old[i])) out.push_back(old[i]);
    }
  }
  for (const std::string& t : tags) {
    if (!present(t)) out.push_back(t);
  }
  std::string caption;
  for (size_t i = 0; i < out.size(); ++i) absl::StrAppend(&caption, i ? policy.separator : "", out[i]);
  result.caption = std::move(caption);
  return result;
}

}  // namespace lorad::data
