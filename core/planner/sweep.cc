#include "core/planner/sweep.h"

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <utility>

#include <toml++/toml.h>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "core/planner/number_format.h"
#include "core/base/toml.h"

namespace lorad::planner {
namespace {

constexpr size_t kMaxNameLength = 64;
constexpr size_t kMaxValuePartLength = 24;

// kohya keys whose value is itself a list: a sweep over them is a list of lists.
bool IsListValuedKey(absl::string_view key) {
  return key == "network_args" || key == "optimizer_args" || key == "lr_scheduler_args";
}

// Short names for the keys people sweep most, used in job names.
std::string KeyAbbreviation(absl::string_view key) {
  static const auto* abbreviations = new absl::flat_hash_map<std::string, std::string>{
      {"dataset", "ds"},          {"learning_rate", "lr"},     {"unet_lr", "ulr"},
      {"text_encoder_lr", "telr"}, {"network_dim", "dim"},     {"network_alpha", "alpha"},
      {"optimizer_type", "opt"},  {"train_batch_size", "bs"},  {"max_train_epochs", "ep"},
      {"max_train_steps", "steps"}, {"network_args", "args"},  {"lr_scheduler", "sched"},
      {"min_snr_gamma", "snr"},   {"noise_offset", "noff"},    {"keep_tokens", "kt"},
      {"resolution", "res"},      {"network_module", "net"},   {"optimizer_args", "oargs"},
      {"train_data_dir", "data"}, {"dataset_config", "dcfg"},  {"seed", "seed"}};
  const std::string last(key.substr(key.rfind('.') == absl::string_view::npos ? 0 : key.rfind('.') + 1));
  const auto found = abbreviations->find(last);
  return found == abbreviations->end() ? last : found->second;
}

// Text of a value for the table and `varied` (strings unquoted).
std::string ValueText(const toml::node& node) {
  if (auto text = node.value_exact<std::string>()) return *text;
  if (auto integer = node.value_exact<int64_t>()) return absl::StrCat(*integer);
  if (auto number = node.value_exact<double>()) return FormatNumber(*number);
  if (auto boolean = node.value_exact<bool>()) return *boolean ? "true" : "false";
  if (const toml::array* array = node.as_array()) {
    std::vector<std::string> parts;
    for (const toml::node& element : *array) parts.push_back(ValueText(element));
    return absl::StrCat("[", absl::StrJoin(parts, ", "), "]");
  }
  std::ostringstream out;
  node.visit([&](const auto& concrete) { out << concrete; });
  return out.str();
}

std::string Sanitize(absl::string_view text) {
  std::string out;
  for (char c : text) {
    const bool keep = absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '.' ||
                      c == '_' || c == '+' || c == '-';
    const char mapped = keep ? c : '-';
    if (mapped == '-' && !out.empty() && out.back() == '-') continue;
    out += mapped;
  }
  while (!out.empty() && (out.back() == '-' || out.back() == '.')) out.pop_back();
  while (!out.empty() && (out.front() == '-' || out.front() == '.')) out.erase(0, 1);
  return out;
}

uint32_t Fnv1a(absl::string_view text) {
  uint32_t hash = 2166136261u;
  for (char c : text) {
    hash ^= static_cast<unsigned char>(c);
    hash *= 16777619u;
  }
  return hash;
}

absl::Status KeyError(absl::string_view key, absl::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat("sweep key '", std::string(key), "': ", std::string(what)));
}

struct SweepAxis {
  std::string key;
  std::vector<const toml::node*> values;
};

template <typename Table>
void AssignNode(Table& table, const std::string& key, const toml::node& value) {
  value.visit([&](const auto& concrete) { table.insert_or_assign(key, concrete); });
}

// Writes `value` where kohya reads `key` (see sweep.h).
absl::Status ApplyValue(toml::table& config, const std::string& key, const toml::node& value) {
  if (const size_t dot = key.find('.'); dot != std::string::npos) {
    const std::string section = key.substr(0, dot);
    const std::string inner = key.substr(dot + 1);
    if (inner.empty() || section.empty() || inner.find('.') != std::string::npos) {
      return KeyError(key, "a dotted key must be 'section.key' (one level, as kohya reads sections)");
    }
    toml::node* existing = config.get(section);
    if (existing == nullptr) {
      config.insert_or_assign(section, toml::table{});
      existing = config.get(section);
    }
    toml::table* table = existing->as_table();
    if (table == nullptr) {
      return KeyError(key, absl::StrCat("'", section, "' is a value in the base config, not a section"));
    }
    AssignNode(*table, inner, value);
    return absl::OkStatus();
  }
  bool placed = false;
  if (const toml::node* top = config.get(key); top != nullptr) {
    if (top->is_table()) return KeyError(key, "names a section of the base config, not a value");
    AssignNode(config, key, value);
    placed = true;
  }
  for (auto&& [section_key, node] : config) {
    if (toml::table* section = node.as_table(); section != nullptr && section->contains(key)) {
      AssignNode(*section, key, value);
      placed = true;
    }
  }
  if (!placed) AssignNode(config, key, value);
  return absl::OkStatus();
}

// Finds output_name (top level or one section deep) and appends the job name.
void SuffixOutputName(toml::table& config, const std::string& job_name) {
  const auto suffix = [&](toml::table& table) {
    if (auto name = table["output_name"].value<std::string>()) {
      table.insert_or_assign("output_name", absl::StrCat(*name, "_", job_name));
    }
  };
  suffix(config);
  for (auto&& [key, node] : config) {
    if (toml::table* section = node.as_table()) suffix(*section);
  }
}

std::string MakeName(const std::vector<std::pair<std::string, std::string>>& varied,
                     const std::map<std::string, std::string>& dataset_labels) {
  std::vector<std::string> parts;
  for (const auto& [key, value] : varied) {
    const auto label = key == "dataset" ? dataset_labels.find(value) : dataset_labels.end();
    parts.push_back(absl::StrCat(KeyAbbreviation(key), "-",
                                 ShortValueForName(key, label == dataset_labels.end() ? value : label->second)));
  }
  std::string name = absl::StrJoin(parts, "_");
  if (name.size() > kMaxNameLength) {
    char hash[16];
    std::snprintf(hash, sizeof(hash), "%08x", Fnv1a(name));
    name = absl::StrCat(name.substr(0, kMaxNameLength - 9), "-", hash);
  }
  return name;
}

absl::StatusOr<std::vector<SweepAxis>> ReadAxes(const toml::table& sweep) {
  std::vector<std::pair<toml::source_position, SweepAxis>> ordered;
  for (const auto& [raw_key, node] : sweep) {
    const std::string key(raw_key.str());
    if (key == "mode") continue;
    if (const toml::table* nested = node.as_table()) {
      // [sweep.optimizer_arguments] learning_rate = [...] means the dotted key.
      for (const auto& [inner_key, inner_node] : *nested) {
        SweepAxis axis{absl::StrCat(key, ".", std::string(inner_key.str())), {}};
        ordered.push_back({inner_node.source().begin, std::move(axis)});
        const toml::array* array = inner_node.as_array();
        if (array == nullptr) {
          return KeyError(ordered.back().second.key, "must be a list of values, e.g. [1e-4, 5e-4]");
        }
        for (const toml::node& value : *array) ordered.back().second.values.push_back(&value);
      }
      continue;
    }
    const toml::array* array = node.as_array();
    if (array == nullptr) {
      return KeyError(key, "must be a list of values, e.g. [1e-4, 5e-4]");
    }
    SweepAxis axis{key, {}};
    for (const toml::node& value : *array) axis.values.push_back(&value);
    ordered.push_back({node.source().begin, std::move(axis)});
  }
  std::stable_sort(ordered.begin(), ordered.end(), [](const auto& a, const auto& b) {
    if (a.first.line != b.first.line) return a.first.line < b.first.line;
    return a.first.column < b.first.column;
  });
  std::vector<SweepAxis> axes;
  for (auto& [position, axis] : ordered) {
    if (axis.values.empty()) return KeyError(axis.key, "has an empty list; give at least one value");
    const std::string last = axis.key.substr(axis.key.rfind('.') == std::string::npos
                                                 ? 0 : axis.key.rfind('.') + 1);
    for (const toml::node* value : axis.values) {
      if (value->is_table()) return KeyError(axis.key, "values must not be tables");
      if (IsListValuedKey(last) && !value->is_array()) {
        return KeyError(axis.key, absl::StrCat("takes a list of lists, e.g. ", last,
                                               " = [[\"conv_dim=4\"], []]"));
      }
      if (axis.key == "dataset" && !value->is_string()) {
        return KeyError(axis.key, "values must be strings (dataset folders or ids)");
      }
    }
    axes.push_back(std::move(axis));
  }
  if (axes.empty()) {
    return absl::InvalidArgumentError(
        "[sweep] has no keys to vary; add e.g. learning_rate = [1e-4, 5e-4]");
  }
  return axes;
}

// Index tuples of the jobs: cartesian (first key slowest) or zipped.
absl::StatusOr<std::vector<std::vector<size_t>>> Combinations(const std::vector<SweepAxis>& axes,
                                                              SweepMode mode) {
  std::vector<std::vector<size_t>> combos;
  if (mode == SweepMode::kZip) {
    const size_t length = axes.front().values.size();
    for (const SweepAxis& axis : axes) {
      if (axis.values.size() != length) {
        return absl::InvalidArgumentError(absl::StrCat(
            "zip sweep: key '", axis.key, "' has ", axis.values.size(), " values but '",
            axes.front().key, "' has ", length,
            "; zip needs lists of equal length (or use mode = \"grid\")"));
      }
    }
    for (size_t i = 0; i < length; ++i) combos.emplace_back(axes.size(), i);
    return combos;
  }
  int64_t total = 1;
  for (const SweepAxis& axis : axes) {
    total *= static_cast<int64_t>(axis.values.size());
    if (total > kMaxSweepJobs) {
      return absl::InvalidArgumentError(absl::StrCat(
          "grid sweep has more than ", kMaxSweepJobs, " jobs (at key '", axis.key,
          "'); split it into smaller sweeps"));
    }
  }
  std::vector<size_t> index(axes.size(), 0);
  for (int64_t n = 0; n < total; ++n) {
    combos.push_back(index);
    for (size_t k = axes.size(); k-- > 0;) {
      if (++index[k] < axes[k].values.size()) break;
      index[k] = 0;
    }
  }
  return combos;
}

}  // namespace

std::string ShortValueForName(absl::string_view key, absl::string_view value_text) {
  std::string text(value_text);
  if (key == "dataset" || key == "train_data_dir" || key == "dataset_config") {
    while (text.size() > 1 && text.back() == '/') text.pop_back();
    if (const size_t slash = text.rfind('/'); slash != std::string::npos) text = text.substr(slash + 1);
    if (const size_t dot = text.rfind(".toml"); dot != std::string::npos && dot + 5 == text.size()) {
      text.resize(dot);
    }
  }
  if (text.size() >= 2 && text.front() == '[' && text.back() == ']') {
    text = text.substr(1, text.size() - 2);
    if (text.empty()) return "none";
    text = absl::StrJoin(absl::StrSplit(text, ", "), "+");
  }
  std::string sanitized = Sanitize(text);
  if (sanitized.size() > kMaxValuePartLength) sanitized.resize(kMaxValuePartLength);
  return sanitized.empty() ? "x" : sanitized;
}

absl::StatusOr<SweepPlan> ParseSweep(absl::string_view toml_text,
                                     const std::map<std::string, std::string>& dataset_labels) {
  auto parsed = ParseToml(std::string_view(toml_text.data(), toml_text.size()), "sweep file");
  if (!parsed.ok()) return parsed.status();
  toml::table document = std::move(*parsed);
  const toml::table* sweep = document["sweep"].as_table();
  if (sweep == nullptr) {
    return absl::InvalidArgumentError(
        "sweep file has no [sweep] table; add one with the keys to vary, e.g. "
        "[sweep] learning_rate = [1e-4, 5e-4]");
  }
  SweepPlan plan;
  if (const toml::node* mode = sweep->get("mode")) {
    const auto text = mode->value<std::string>();
    if (text == "grid") {
      plan.mode = SweepMode::kGrid;
    } else if (text == "zip") {
      plan.mode = SweepMode::kZip;
    } else {
      return KeyError("mode", "must be \"grid\" or \"zip\"");
    }
  }
  auto axes = ReadAxes(*sweep);
  if (!axes.ok()) return axes.status();
  auto combos = Combinations(*axes, plan.mode);
  if (!combos.ok()) return combos.status();

  toml::table base = document;
  base.erase("sweep");
  std::string base_dataset;
  if (const toml::node* dataset = base.get("dataset")) {
    const auto text = dataset->value<std::string>();
    if (!text) return absl::InvalidArgumentError("top-level 'dataset' must be a string");
    base_dataset = *text;
    base.erase("dataset");
  }
  for (const SweepAxis& axis : *axes) plan.varied_keys.push_back(axis.key);

  absl::flat_hash_set<std::string> used_names;
  for (const std::vector<size_t>& combo : *combos) {
    SweepJobSpec job;
    job.dataset = base_dataset;
    toml::table config = base;
    for (size_t k = 0; k < axes->size(); ++k) {
      const SweepAxis& axis = (*axes)[k];
      const toml::node& value = *axis.values[combo[k]];
      job.varied.emplace_back(axis.key, ValueText(value));
      if (axis.key == "dataset") {
        job.dataset = *value.value<std::string>();
        continue;
      }
      if (absl::Status status = ApplyValue(config, axis.key, value); !status.ok()) return status;
    }
    const std::string base_name = MakeName(job.varied, dataset_labels);
    std::string name = base_name;
    for (int n = 2; !used_names.insert(name).second; ++n) {
      const std::string suffix = absl::StrCat("-", n);
      name = absl::StrCat(base_name.substr(0, kMaxNameLength - suffix.size()), suffix);
    }
    job.name = name;
    SuffixOutputName(config, job.name);
    std::ostringstream text;
    text << config << "\n";
    job.config_toml = text.str();
    plan.jobs.push_back(std::move(job));
  }
  return plan;
}

absl::StatusOr<SweepPlan> ParseSweepFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read sweep file '", path, "'"));
  std::ostringstream text;
  text << in.rdbuf();
  auto plan = ParseSweep(text.str());
  if (!plan.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", plan.status().message()));
  }
  return plan;
}

}  // namespace lorad::planner
