#include "core/data/dataset_config.h"

#include <algorithm>
#include <cctype>
#include <fstream>
#include <sstream>

#include <toml++/toml.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "core/base/limits.h"
#include "core/base/status_macros.h"
#include "core/base/toml.h"

namespace lorad::data {
namespace {

namespace fs = std::filesystem;

std::string Describe(const toml::node& v) {
  std::ostringstream os;
  if (v.is_string()) {
    const std::string text = *v.value<std::string>();
    if (text.size() > 80) {  // a huge value is named by its size, not echoed
      os << '"' << text.substr(0, 80) << "...\" (" << text.size() << " bytes)";
    } else {
      os << '"' << text << '"';
    }
  } else if (v.is_table()) {
    os << "a table";
  } else if (v.is_array()) {
    os << "an array";
  } else {
    v.visit([&os](auto&& n) { os << n; });
  }
  return os.str();
}

absl::Status BadValue(const std::string& where, const std::string& key, const std::string& allowed,
                      const toml::node& v) {
  return absl::InvalidArgumentError(
      absl::StrCat(where, ": key '", key, "' must be ", allowed, "; got ", Describe(v)));
}

absl::Status GetBool(const std::string& where, const std::string& key, const toml::node& v, bool* out) {
  if (!v.is_boolean()) return BadValue(where, key, "true or false", v);
  *out = *v.value<bool>();
  return absl::OkStatus();
}

// An integer in [min_value, max_value] (limits from core/base/limits.h, so it
// fits the int the data module computes with).
absl::Status GetInt(const std::string& where, const std::string& key, const toml::node& v, int64_t min_value,
                    int64_t max_value, int* out) {
  if (!v.is_integer() || *v.value<int64_t>() < min_value || *v.value<int64_t>() > max_value) {
    return BadValue(where, key, absl::StrCat("an integer from ", min_value, " to ", max_value), v);
  }
  *out = static_cast<int>(*v.value<int64_t>());
  return absl::OkStatus();
}

absl::Status GetDouble(const std::string& where, const std::string& key, const toml::node& v, double lo, double hi,
                       double* out) {
  if (!v.is_number() || !(*v.value<double>() >= lo) || !(*v.value<double>() <= hi)) {
    return BadValue(where, key, absl::StrCat("a number in [", lo, ", ", hi, "]"), v);
  }
  *out = *v.value<double>();
  return absl::OkStatus();
}

// Caption text (prefixes, class tokens, separators) goes into every caption.
bool IsCaptionText(const std::string& key) {
  return key == "class_tokens" || key == "caption_prefix" || key == "caption_suffix" || key == "caption_separator" ||
         key == "keep_tokens_separator" || key == "secondary_separator";
}

absl::Status GetString(const std::string& where, const std::string& key, const toml::node& v, std::string* out) {
  if (!v.is_string()) return BadValue(where, key, "a string", v);
  const size_t limit = IsCaptionText(key) ? kMaxCaptionBytes : kMaxConfigStringBytes;
  if (v.value<std::string>()->size() > limit) {
    return BadValue(where, key, absl::StrCat("a string of at most ", limit, " bytes"), v);
  }
  *out = *v.value<std::string>();
  return absl::OkStatus();
}

// Dataset-level keys ([general] or [[datasets]]). Sets *handled when `key` is one.
absl::Status ApplyDatasetKey(const std::string& where, const std::string& key, const toml::node& v,
                             DatasetGroupConfig& g, bool* handled) {
  *handled = true;
  if (key == "resolution") {
    auto size_ok = [](const toml::node& n) {
      return n.is_integer() && *n.value<int64_t>() > 0 && *n.value<int64_t>() <= kMaxResolution;
    };
    if (size_ok(v)) {
      g.resolution_width = g.resolution_height = static_cast<int>(*v.value<int64_t>());
      return absl::OkStatus();
    }
    const toml::array* a = v.as_array();
    if (a != nullptr && a->size() == 2 && size_ok((*a)[0]) && size_ok((*a)[1])) {
      g.resolution_width = static_cast<int>(*(*a)[0].value<int64_t>());
      g.resolution_height = static_cast<int>(*(*a)[1].value<int64_t>());
      return absl::OkStatus();
    }
    return BadValue(where, key,
                    absl::StrCat("a size or [width, height], each from 1 to ", kMaxResolution,
                                 " (the largest training resolution per side)"),
                    v);
  }
  if (key == "batch_size") return GetInt(where, key, v, 1, kMaxBatchSize, &g.batch_size);
  if (key == "enable_bucket") return GetBool(where, key, v, &g.enable_bucket);
  if (key == "min_bucket_reso") return GetInt(where, key, v, 1, kMaxResolution, &g.min_bucket_reso);
  if (key == "max_bucket_reso") return GetInt(where, key, v, 1, kMaxResolution, &g.max_bucket_reso);
  if (key == "bucket_reso_steps") {
    RETURN_IF_ERROR(GetInt(where, key, v, 8, kMaxResolution, &g.bucket_reso_steps));
    if (g.bucket_reso_steps % 8 != 0) return BadValue(where, key, "a multiple of 8 (e.g. 64)", v);
    return absl::OkStatus();
  }
  if (key == "bucket_no_upscale") return GetBool(where, key, v, &g.bucket_no_upscale);
  *handled = false;
  return absl::OkStatus();
}

// Subset-level keys (also allowed as defaults in [general] and [[datasets]]).
absl::Status ApplySubsetKey(const std::string& where, const std::string& key, const toml::node& v,
                            const fs::path& base_dir, SubsetConfig& s, bool* handled) {
  *handled = true;
  if (key == "image_dir") {
    std::string dir;
    RETURN_IF_ERROR(GetString(where, key, v, &dir));
    s.image_dir = fs::path(dir).is_absolute() ? fs::path(dir) : base_dir / dir;
    return absl::OkStatus();
  }
  if (key == "num_repeats") return GetInt(where, key, v, 1, kMaxRepeats, &s.num_repeats);
  if (key == "class_tokens") return GetString(where, key, v, &s.class_tokens);
  if (key == "is_reg") return GetBool(where, key, v, &s.is_reg);
  if (key == "caption_extension") {
    RETURN_IF_ERROR(GetString(where, key, v, &s.caption_extension));
    if (!s.caption_extension.empty() && s.caption_extension[0] != '.') s.caption_extension = "." + s.caption_extension;
    return absl::OkStatus();
  }
  if (key == "shuffle_caption") return GetBool(where, key, v, &s.shuffle_caption);
  if (key == "caption_separator") {
    RETURN_IF_ERROR(GetString(where, key, v, &s.caption_separator));
    if (s.caption_separator.empty()) return BadValue(where, key, "a non-empty string (default \",\")", v);
    return absl::OkStatus();
  }
  if (key == "keep_tokens") return GetInt(where, key, v, 0, 1000, &s.keep_tokens);
  if (key == "keep_tokens_separator") return GetString(where, key, v, &s.keep_tokens_separator);
  if (key == "secondary_separator") return GetString(where, key, v, &s.secondary_separator);
  if (key == "enable_wildcard") return GetBool(where, key, v, &s.enable_wildcard);
  if (key == "caption_prefix") return GetString(where, key, v, &s.caption_prefix);
  if (key == "caption_suffix") return GetString(where, key, v, &s.caption_suffix);
  if (key == "caption_dropout_rate") return GetDouble(where, key, v, 0, 1, &s.caption_dropout_rate);
  if (key == "caption_dropout_every_n_epochs") return GetInt(where, key, v, 0, kMaxTrainEpochs, &s.caption_dropout_every_n_epochs);
  if (key == "caption_tag_dropout_rate") return GetDouble(where, key, v, 0, 1, &s.caption_tag_dropout_rate);
  if (key == "token_warmup_step") return GetDouble(where, key, v, 0, kMaxTrainSteps, &s.token_warmup_step);
  if (key == "token_warmup_min") return GetInt(where, key, v, 0, 1000, &s.token_warmup_min);
  if (key == "flip_aug") return GetBool(where, key, v, &s.flip_aug);
  if (key == "random_crop") return GetBool(where, key, v, &s.random_crop);
  if (key == "color_aug") return GetBool(where, key, v, &s.color_aug);
  *handled = false;
  return absl::OkStatus();
}

// kohya keys lorad knows but does not implement: a clear error or a warning.
absl::Status CheckUnsupported(const std::string& where, const std::string& key, std::vector<std::string>* warnings,
                              bool* handled) {
  *handled = true;
  if (key == "metadata_file" || key == "conditioning_data_dir") {
    return absl::UnimplementedError(absl::StrCat(
        where, ": key '", key, "' (kohya fine-tuning / ControlNet datasets) is not supported; use DreamBooth-style "
        "subsets with image_dir and caption files"));
  }
  if (key == "face_crop_aug_range" || key == "alpha_mask" || key == "cache_info") {
    warnings->push_back(absl::StrCat(where, ": key '", key, "' is not supported by lorad and is ignored"));
    return absl::OkStatus();
  }
  *handled = false;
  return absl::OkStatus();
}

std::string UnknownKey(const std::string& where, const std::string& key) {
  return absl::StrCat(where, ": unknown key '", key, "' ignored (check the spelling against kohya's dataset_config)");
}

DatasetGroupConfig GroupFromArgs(const DatasetArgs& a) {
  DatasetGroupConfig g;
  g.resolution_width = a.resolution_width;
  g.resolution_height = a.resolution_height;
  g.batch_size = a.train_batch_size;
  g.enable_bucket = a.enable_bucket;
  g.min_bucket_reso = a.min_bucket_reso;
  g.max_bucket_reso = a.max_bucket_reso;
  g.bucket_reso_steps = a.bucket_reso_steps;
  g.bucket_no_upscale = a.bucket_no_upscale;
  return g;
}

// Parses "10_sks dog" -> (10, "sks dog"); nullopt when the name has no leading count.
std::optional<std::pair<int, std::string>> ParseRepeatsName(const std::string& name) {
  const size_t us = name.find('_');
  const std::string head = name.substr(0, us);
  if (head.empty() || head.size() > 9 || !std::all_of(head.begin(), head.end(), [](unsigned char c) { return std::isdigit(c) != 0; })) return std::nullopt;
  return std::make_pair(std::stoi(head), us == std::string::npos ? std::string() : name.substr(us + 1));
}

}  // namespace

absl::StatusOr<std::pair<int, int>> ParseResolution(const std::string& text) {
  std::vector<std::string> parts = absl::StrSplit(text, absl::ByAnyChar(",x"), absl::SkipWhitespace());
  std::vector<int> v;
  for (auto& p : parts) {
    int x = 0;
    try {
      size_t used = 0;
      x = std::stoi(p, &used);
      if (used != p.size() && p.find_first_not_of(' ', used) != std::string::npos) x = 0;
    } catch (...) {
      x = 0;
    }
    if (x <= 0) break;
    v.push_back(x);
  }
  if (std::any_of(v.begin(), v.end(), [](int x) { return x > kMaxResolution; })) {
    return absl::InvalidArgumentError(absl::StrCat("resolution '", text, "' is above the limit of ", kMaxResolution,
                                                   " pixels per side"));
  }
  if (v.size() == 1 && parts.size() == 1) return std::make_pair(v[0], v[0]);
  if (v.size() == 2 && parts.size() == 2) return std::make_pair(v[0], v[1]);
  return absl::InvalidArgumentError(absl::StrCat("resolution '", text,
                                                 "' is invalid; use one size (\"512\") or width,height (\"1024,768\")"));
}

absl::StatusOr<std::vector<SubsetConfig>> ScanRepeatFolders(const fs::path& dir, const SubsetConfig& defaults,
                                                            bool is_reg, std::vector<std::string>* warnings) {
  const char* what = is_reg ? "reg_data_dir" : "train_data_dir";
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    return absl::NotFoundError(absl::StrCat(what, " '", dir.string(),
                                            "' does not exist or is not a folder; give the folder that holds the "
                                            "N_name subfolders (e.g. 10_sks dog)"));
  }
  std::vector<fs::path> subdirs;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    if (e.is_directory()) subdirs.push_back(e.path());
  }
  std::sort(subdirs.begin(), subdirs.end());
  std::vector<SubsetConfig> out;
  for (const auto& sub : subdirs) {
    const std::string name = sub.filename().string();
    auto parsed = ParseRepeatsName(name);
    if (!parsed || parsed->first < 1) {
      warnings->push_back(absl::StrCat(what, ": folder '", name,
                                       "' ignored: its name does not start with a repeat count (N_name)"));
      continue;
    }
    if (parsed->first > kMaxRepeats) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": folder '", name, "' asks for ", parsed->first,
                                                     " repeats, more than the limit of ", kMaxRepeats));
    }
    SubsetConfig s = defaults;
    s.image_dir = sub;
    s.num_repeats = parsed->first;
    s.class_tokens = parsed->second;
    s.is_reg = is_reg;
    out.push_back(std::move(s));
  }
  if (out.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, " '", dir.string(), "' has no N_name subfolders (e.g. '10_sks dog' for 10 repeats); put the images in "
        "such a subfolder"));
  }
  return out;
}

absl::StatusOr<ResolvedDatasets> ParseDatasetConfigToml(const std::string& toml_text, const fs::path& base_dir,
                                                        const DatasetArgs& fallbacks) {
  const std::string file = absl::StrCat("dataset_config '", (base_dir / "<toml>").parent_path().string(), "'");
  ASSIGN_OR_RETURN(toml::table root, ParseToml(toml_text, "dataset_config"));
  ResolvedDatasets out;
  DatasetGroupConfig general_group = GroupFromArgs(fallbacks);
  SubsetConfig general_subset = fallbacks.subset_defaults;
  bool handled = false;
  for (auto&& [k, v] : root) {
    const std::string key(k.str());
    if (key == "general" || key == "datasets") continue;
    out.warnings.push_back(UnknownKey("dataset_config", key));
  }
  if (const toml::node* gen = root.get("general")) {
    const toml::table* t = gen->as_table();
    if (t == nullptr) return BadValue("dataset_config", "general", "a table ([general])", *gen);
    for (auto&& [k, v] : *t) {
      const std::string key(k.str());
      RETURN_IF_ERROR(ApplyDatasetKey("[general]", key, v, general_group, &handled));
      if (handled) continue;
      RETURN_IF_ERROR(ApplySubsetKey("[general]", key, v, base_dir, general_subset, &handled));
      if (handled) continue;
      RETURN_IF_ERROR(CheckUnsupported("[general]", key, &out.warnings, &handled));
      if (!handled) out.warnings.push_back(UnknownKey("[general]", key));
    }
  }
  const toml::node* ds_node = root.get("datasets");
  const toml::array* datasets = ds_node != nullptr ? ds_node->as_array() : nullptr;
  if (datasets == nullptr || datasets->empty()) {
    return absl::InvalidArgumentError(
        "dataset_config has no [[datasets]] entries; add at least one [[datasets]] with a [[datasets.subsets]] "
        "that sets image_dir");
  }
  for (size_t di = 0; di < datasets->size(); ++di) {
    const std::string where = absl::StrCat("datasets[", di, "]");
    const toml::table* dt = (*datasets)[di].as_table();
    if (dt == nullptr) return BadValue("dataset_config", where, "a table ([[datasets]])", (*datasets)[di]);
    DatasetGroupConfig group = general_group;
    SubsetConfig subset_defaults = general_subset;
    for (auto&& [k, v] : *dt) {
      const std::string key(k.str());
      if (key == "subsets") continue;
      RETURN_IF_ERROR(ApplyDatasetKey(where, key, v, group, &handled));
      if (handled) continue;
      RETURN_IF_ERROR(ApplySubsetKey(where, key, v, base_dir, subset_defaults, &handled));
      if (handled) continue;
      RETURN_IF_ERROR(CheckUnsupported(where, key, &out.warnings, &handled));
      if (!handled) out.warnings.push_back(UnknownKey(where, key));
    }
    const toml::node* sn = dt->get("subsets");
    const toml::array* subsets = sn != nullptr ? sn->as_array() : nullptr;
    if (subsets == nullptr || subsets->empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "dataset_config ", where, " has no [[datasets.subsets]]; add one with image_dir = \"...\""));
    }
    for (size_t si = 0; si < subsets->size(); ++si) {
      const std::string swhere = absl::StrCat(where, ".subsets[", si, "]");
      const toml::table* st = (*subsets)[si].as_table();
      if (st == nullptr) return BadValue("dataset_config", swhere, "a table ([[datasets.subsets]])", (*subsets)[si]);
      SubsetConfig s = subset_defaults;
      s.image_dir.clear();
      for (auto&& [k, v] : *st) {
        const std::string key(k.str());
        RETURN_IF_ERROR(ApplySubsetKey(swhere, key, v, base_dir, s, &handled));
        if (handled) continue;
        RETURN_IF_ERROR(CheckUnsupported(swhere, key, &out.warnings, &handled));
        if (handled) continue;
        DatasetGroupConfig ignored;
        RETURN_IF_ERROR(ApplyDatasetKey(swhere, key, v, ignored, &handled));
        if (handled) {
          out.warnings.push_back(absl::StrCat(swhere, ": key '", key,
                                              "' is a dataset setting and is ignored in a subset; move it to "
                                              "[[datasets]] or [general]"));
          continue;
        }
        out.warnings.push_back(UnknownKey(swhere, key));
      }
      if (s.image_dir.empty()) {
        return absl::InvalidArgumentError(absl::StrCat("dataset_config ", swhere,
                                                       ": image_dir is missing; set image_dir = \"/path/to/images\""));
      }
      group.subsets.push_back(std::move(s));
    }
    out.datasets.push_back(std::move(group));
  }
  return out;
}

absl::StatusOr<ResolvedDatasets> ResolveDatasets(const DatasetArgs& args) {
  if (args.dataset_config.has_value()) {
    const fs::path& p = *args.dataset_config;
    std::ifstream in(p);
    if (!in) {
      return absl::NotFoundError(absl::StrCat("dataset_config '", p.string(),
                                              "' cannot be read; check the path (a kohya dataset TOML file)"));
    }
    std::stringstream ss;
    ss << in.rdbuf();
    auto r = ParseDatasetConfigToml(ss.str(), p.parent_path(), args);
    if (!r.ok()) {
      return absl::Status(r.status().code(), absl::StrCat("'", p.string(), "': ", r.status().message()));
    }
    if (args.train_data_dir.has_value() || args.reg_data_dir.has_value()) {
      r->warnings.push_back("train_data_dir/reg_data_dir are ignored because dataset_config is given (as in kohya)");
    }
    return r;
  }
  if (!args.train_data_dir.has_value()) {
    return absl::InvalidArgumentError(
        "no dataset given: set dataset_config (a kohya TOML) or train_data_dir (a folder of N_name subfolders)");
  }
  ResolvedDatasets out;
  DatasetGroupConfig group = GroupFromArgs(args);
  ASSIGN_OR_RETURN(group.subsets, ScanRepeatFolders(*args.train_data_dir, args.subset_defaults, false, &out.warnings));
  if (args.reg_data_dir.has_value()) {
    ASSIGN_OR_RETURN(auto reg, ScanRepeatFolders(*args.reg_data_dir, args.subset_defaults, true, &out.warnings));
    group.subsets.insert(group.subsets.end(), reg.begin(), reg.end());
  }
  out.datasets.push_back(std::move(group));
  return out;
}

}  // namespace lorad::data
