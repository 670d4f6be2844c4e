// lorad-tag: WD14 auto-tagging of a dataset folder, as kohya's
// finetune/tag_images_by_wd14_tagger.py does it, on OpenCV's dnn module.
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <random>
#include <string>

#include <nlohmann/json.hpp>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "core/base/exception_boundary.h"
#include "core/data/caption.h"
#include "core/data/image_header.h"
#include "core/data/wd14_tagger.h"

namespace {
namespace fs = std::filesystem;

constexpr char kUsage[] =
    "usage: lorad-tag DATASET --model MODEL.onnx --tags selected_tags.csv [--threshold 0.35]\n"
    "                 [--character-threshold 0.85] [--trigger WORD] [--mode merge|overwrite|skip-existing]\n"
    "                 [--keep-tokens N] [--caption-extension EXT] [--undesired-tags a,b]\n"
    "                 [--always-first-tags a,b] [--character-tags-first] [--use-rating-tags]\n"
    "                 [--keep-underscores] [--json]\n"
    "Tags every image under DATASET (recursively; png jpg jpeg webp bmp) with a WD14 tagger\n"
    "(SmilingWolf wd-v1-4-{convnext,swinv2,vit,moat}-tagger-v2, wd-{vit,swinv2,convnext,eva02-large}-\n"
    "tagger-v3: their model.onnx and selected_tags.csv) and writes one caption file per image:\n"
    "booru tags, comma separated, underscores as spaces (kohya --remove_underscore, tags over 3\n"
    "characters; --keep-underscores keeps them), the trigger word first.\n"
    "  --threshold             general tags at or above it (kohya --thresh / --general_threshold)\n"
    "  --character-threshold   character tags (category 4) at or above it\n"
    "  --mode merge            (default) keep the existing caption's tokens, add new tags after them\n"
    "         overwrite        replace the existing tokens (the kept prefix below stays)\n"
    "         skip-existing    leave images that already have a caption file alone\n"
    "  --keep-tokens N         kohya keep_tokens: the first N tokens of an existing caption stay first,\n"
    "                          unchanged; the trigger follows them when they lack it\n"
    "  --caption-extension     default: .caption when the folder has .caption files and no .txt, else .txt\n"
    "  --undesired-tags, --always-first-tags, --character-tags-first, --use-rating-tags: as kohya's\n"
    "Preprocessing (kohya preprocess_image): alpha composited on white, BGR, padded to a centred white\n"
    "square, resized to 448 (INTER_AREA shrinking; LANCZOS4 enlarging, where current kohya uses PIL's\n"
    "Lanczos), float32 0..255, NHWC [1,448,448,3]. EXIF orientation is applied, as lorad trains.\n"
    "Model compatibility with OpenCV 4.6's ONNX importer (Debian 12), measured per operator: Conv,\n"
    "Transpose, Reshape, MatMul (constant or two inputs), Gemm, Softmax, Sigmoid, Erf, Tanh, Relu,\n"
    "Pow, Sqrt, Reciprocal, Div, Add, ReduceMean, ReduceL2, GlobalAveragePool, Concat, Slice, Split,\n"
    "Pad, Cast, Shape-driven Reshape run natively. Missing in 4.6: LayerNormalization (opset 17),\n"
    "Gelu (opset 20), Einsum: lorad-tag registers its own layers for them (Einsum: two operands, no\n"
    "'...'). Broken in 4.6: Mul by a constant vector on the last axis (layer scale, LayerNorm gamma):\n"
    "lorad-tag rewrites those nodes to its own broadcasting Mul before import. Not supported in 4.6\n"
    "and not patched: Where, Min/Max with a constant, Clip (opset 11+), Gather with a tensor of\n"
    "indices, ReduceSum/Squeeze with axes as an input (opset 13): export at opset 11/12 with constant\n"
    "folding (tf2onnx does by default; torch.onnx.export(do_constant_folding=True, opset_version=17)).\n"
    "Exit status: 0 all tagged, 1 some images failed (the others are written), 2 bad arguments,\n"
    "model or tag list.\n";

int Fail(const std::string& msg) {
  std::cerr << "lorad-tag: " << msg << "\n";
  return 2;
}

bool IsImage(const fs::path& p) {
  const std::string ext = absl::AsciiStrToLower(p.extension().string());
  return ext == ".png" || ext == ".jpg" || ext == ".jpeg" || ext == ".webp" || ext == ".bmp";
}

std::vector<std::string> List(const std::string& text) {
  std::vector<std::string> out;
  for (absl::string_view part : absl::StrSplit(text, ',')) {
    std::string tag = lorad::data::PyStrip(std::string(part));
    if (!tag.empty()) out.push_back(tag);
  }
  return out;
}

// Writes through a temporary name and a rename: a reader never sees half a caption.
bool WriteAtomically(const fs::path& path, const std::string& text, std::string* error) {
  std::random_device rd;
  const fs::path tmp = path.parent_path() / ("." + path.filename().string() + ".tmp" + std::to_string(rd()));
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << text;
    out.close();
    if (!out) {
      *error = "cannot write " + tmp.string();
      std::error_code ec;
      fs::remove(tmp, ec);
      return false;
    }
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) {
    *error = "cannot rename " + tmp.string() + " to " + path.string() + ": " + ec.message();
    fs::remove(tmp, ec);
    return false;
  }
  return true;
}

}  // namespace

static int ToolMain(int argc, char** argv) {
  using namespace lorad::data;
  std::string dataset, model, tags_csv, caption_ext;
  TagSelection selection;
  CaptionPolicy policy;
  bool json = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const bool has_value = i + 1 < argc;
    auto number = [&](float* out) {
      double v = 0;
      if (!has_value || !absl::SimpleAtod(argv[++i], &v) || v < 0) return false;
      *out = static_cast<float>(v);
      return true;
    };
    if (a == "--help" || a == "-h") {
      std::cout << kUsage;
      return 0;
    } else if (a == "--json") {
      json = true;
    } else if (a == "--model" && has_value) {
      model = argv[++i];
    } else if (a == "--tags" && has_value) {
      tags_csv = argv[++i];
    } else if (a == "--threshold" || a == "--general-threshold") {
      if (!number(&selection.general_threshold)) return Fail(a + " needs a probability in 0..1");
    } else if (a == "--character-threshold") {
      if (!number(&selection.character_threshold)) return Fail(a + " needs a probability (above 1 disables)");
    } else if (a == "--trigger" && has_value) {
      policy.trigger = argv[++i];
      if (policy.trigger.find_first_of(",\n") != std::string::npos) {
        return Fail("--trigger must be one caption token (no comma or newline)");
      }
    } else if (a == "--mode" && has_value) {
      auto mode = ParseCaptionMode(argv[++i]);
      if (!mode.ok()) return Fail(std::string(mode.status().message()));
      policy.mode = *mode;
    } else if (a == "--keep-tokens") {
      if (!has_value || !absl::SimpleAtoi(argv[++i], &policy.keep_tokens) || policy.keep_tokens < 0) {
        return Fail("--keep-tokens needs an integer >= 0");
      }
    } else if (a == "--caption-extension" && has_value) {
      caption_ext = argv[++i];
      if (!caption_ext.empty() && caption_ext[0] != '.') caption_ext = "." + caption_ext;
      if (caption_ext.size() < 2 || caption_ext.find('/') != std::string::npos) {
        return Fail("--caption-extension needs an extension such as .txt");
      }
    } else if (a == "--undesired-tags" && has_value) {
      selection.undesired_tags = List(argv[++i]);
    } else if (a == "--always-first-tags" && has_value) {
      selection.always_first_tags = List(argv[++i]);
    } else if (a == "--character-tags-first") {
      selection.character_tags_first = true;
    } else if (a == "--use-rating-tags") {
      selection.use_rating_tags = true;
    } else if (a == "--keep-underscores") {
      selection.remove_underscore = false;
    } else if (!a.empty() && a[0] != '-' && dataset.empty()) {
      dataset = a;
    } else {
      return Fail("unknown or incomplete argument " + a + "\n" + kUsage);
    }
  }
  if (dataset.empty() || model.empty() || tags_csv.empty()) {
    return Fail(std::string("DATASET, --model and --tags are required\n") + kUsage);
  }
  std::error_code ec;
  if (!fs::is_directory(dataset, ec)) return Fail("dataset folder " + dataset + " not found");
  auto vocabulary = LoadTagCsv(tags_csv);
  if (!vocabulary.ok()) return Fail(std::string(vocabulary.status().message()));
  auto tagger = Wd14Tagger::Load(model, vocabulary->tags.size());
  if (!tagger.ok()) return Fail(std::string(tagger.status().message()));

  std::vector<fs::path> images;
  int txt = 0, caption = 0;
  for (auto it = fs::recursive_directory_iterator(dataset, ec); !ec && it != fs::end(it); it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (!name.empty() && name[0] == '.') {  // hidden files and folders (.incoming-, editor temp files)
      if (it->is_directory()) it.disable_recursion_pending();
      continue;
    }
    if (!it->is_regular_file()) continue;
    if (IsImage(it->path())) images.push_back(it->path());
    txt += it->path().extension() == ".txt";
    caption += it->path().extension() == ".caption";
  }
  if (ec) return Fail("cannot list " + dataset + ": " + ec.message());
  std::sort(images.begin(), images.end());
  if (caption_ext.empty()) caption_ext = caption > 0 && txt == 0 ? ".caption" : ".txt";

  nlohmann::json report = {{"images", images.size()}, {"caption_extension", caption_ext},
                           {"broadcast_muls_rewritten", tagger->broadcast_muls_rewritten()}};
  nlohmann::json captions = nlohmann::json::array(), failed = nlohmann::json::array();
  int written = 0, skipped = 0, trigger_after_kept = 0;
  for (const fs::path& image : images) {
    const std::string rel = fs::relative(image, dataset).generic_string();
    fs::path caption_path = image;
    caption_path.replace_extension(caption_ext);
    std::optional<std::string> existing;
    if (fs::exists(caption_path, ec)) {
      auto text = ReadFileBytes(caption_path);
      if (!text.ok()) {
        failed.push_back({{"path", rel}, {"error", std::string(text.status().message())}});
        continue;
      }
      existing = PyStrip(*text);
      if (policy.mode == CaptionMode::kSkipExisting) {
        ++skipped;
        continue;
      }
    }
    auto decoded = LoadImageForWd14(image);
    auto pre = decoded.ok() ? PreprocessForWd14(*decoded) : absl::StatusOr<cv::Mat>(decoded.status());
    auto probs = pre.ok() ? tagger->Predict(*pre) : absl::StatusOr<std::vector<float>>(pre.status());
    if (!probs.ok()) {
      std::cerr << "lorad-tag: " << image.string() << ": " << probs.status().message() << "\n";
      failed.push_back({{"path", rel}, {"error", std::string(probs.status().message())}});
      continue;
    }
    const CaptionResult result = ComposeCaption(existing, SelectTags(*probs, *vocabulary, selection), policy);
    if (!result.caption) continue;
    trigger_after_kept += result.trigger_after_kept;
    std::string error;
    if (!WriteAtomically(caption_path, *result.caption + "\n", &error)) {
      failed.push_back({{"path", rel}, {"error", error}});
      continue;
    }
    ++written;
    captions.push_back({{"path", rel}, {"caption", *result.caption}});
    if (!json) std::cout << rel << ": " << *result.caption << "\n";
  }
  if (trigger_after_kept > 0) {
    std::cerr << "lorad-tag: warning: in " << trigger_after_kept << " caption(s) the first " << policy.keep_tokens
              << " kept token(s) lack the trigger \"" << policy.trigger
              << "\", so it follows them and is shuffled with the tags; raise --keep-tokens or add the trigger\n";
  }
  report["written"] = written;
  report["skipped"] = skipped;
  report["trigger_after_kept"] = trigger_after_kept;
  report["failed"] = failed;
  report["captions"] = captions;
  if (json) {
    std::cout << report.dump() << "\n";
  } else {
    std::cout << "lorad-tag: " << written << " caption(s) written, " << skipped << " skipped, " << failed.size()
              << " failed, of " << images.size() << " image(s)\n";
  }
  for (const auto& f : failed) {
    std::cerr << "lorad-tag: failed: " << f["path"].get<std::string>() << ": " << f["error"].get<std::string>()
              << "\n";
  }
  return failed.empty() ? 0 : 1;
}

int main(int argc, char** argv) {
  return lorad::RunToolMain("lorad-tag", [&] { return ToolMain(argc, argv); });
}
