#include "server/job_config.h"

#include <optional>
#include <set>
#include <sstream>

#include <toml++/toml.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "server/paths.h"
#include "core/base/toml.h"
#include "core/models/base_model.h"
#include "core/networks/network_config.h"
#include "core/train/dataset_args.h"

namespace lorad::server {
namespace fs = std::filesystem;
namespace {

// kohya keys that name files or folders, and which root a relative value is under.
enum class PathBase { kModels, kData };
const std::map<std::string, PathBase>& PathKeys() {
  static const std::map<std::string, PathBase> keys = {
      {"pretrained_model_name_or_path", PathBase::kModels},
      {"vae", PathBase::kModels},
      {"network_weights", PathBase::kModels},
      {"tokenizer_path", PathBase::kModels},
      {"train_data_dir", PathBase::kData},
      {"reg_data_dir", PathBase::kData},
      {"conditioning_data_dir", PathBase::kData},
      {"image_dir", PathBase::kData},
      {"metadata_file", PathBase::kData},
      {"sample_prompts", PathBase::kData},
      {"dataset_config", PathBase::kData},
      {"in_json", PathBase::kData},
  };
  return keys;
}

// Keys the daemon owns: it sets them itself.
const std::set<std::string>& DaemonKeys() {
  static const std::set<std::string> keys = {"output_dir", "logging_dir", "resume", "save_state", "gpus"};
  return keys;
}

std::string RootList(const std::vector<fs::path>& allowed) {
  std::vector<std::string> names;
  for (const auto& root : allowed) names.push_back(root.string());
  return absl::StrJoin(names, ", ");
}

// output_name becomes <output_dir>/<name>.safetensors and <name>-state: a path
// in it ("../../models/x", "/abs") would write the LoRA and its state anywhere.
absl::Status CheckOutputName(const toml::node& node, const std::vector<fs::path>& allowed) {
  auto value = node.value<std::string>();
  if (!value) return absl::InvalidArgumentError("output_name must be a string");
  const std::string& name = *value;
  if (name.empty() || name == "." || name == ".." || name.size() > 200 ||
      name.find_first_of(std::string("/\\\0", 3)) != std::string::npos) {
    return absl::PermissionDeniedError(absl::StrCat(
        "output_name = \"", name.substr(0, 80),
        "\" is not a plain file name; lorad writes the LoRA and its state into the job's output "
        "folder, inside the daemon's roots (", RootList(allowed), "); give a name without '/'"));
  }
  return absl::OkStatus();
}

// Confines every path key in the tree (tables, arrays of tables) in place.
absl::Status ConfineTree(toml::table& table, const fs::path& data_base, const JobRoots& roots,
                         const std::vector<fs::path>& allowed) {
  for (auto&& [key, node] : table) {
    const std::string k(key.str());
    if (auto* sub = node.as_table()) {
      if (auto s = ConfineTree(*sub, data_base, roots, allowed); !s.ok()) return s;
      continue;
    }
    if (auto* arr = node.as_array()) {
      for (auto& item : *arr) {
        if (auto* t = item.as_table()) {
          if (auto s = ConfineTree(*t, data_base, roots, allowed); !s.ok()) return s;
        }
      }
      continue;
    }
    if (k == "output_name") {
      if (auto s = CheckOutputName(node, allowed); !s.ok()) return s;
      continue;
    }
    auto it = PathKeys().find(k);
    if (it == PathKeys().end()) continue;
    auto value = node.value<std::string>();
    if (!value) {
      return absl::InvalidArgumentError(absl::StrCat(k, " must be a string path"));
    }
    if (value->empty()) continue;
    const fs::path base = it->second == PathBase::kModels ? roots.models_root : data_base;
    auto confined = ConfinePath(k, *value, base, allowed);
    if (!confined.ok()) return confined.status();
    node.ref<std::string>() = confined->string();
  }
  return absl::OkStatus();
}

// Removes `key` from the top level and from one section deep (as kohya flattens).
void EraseEverywhere(toml::table& table, const std::string& key) {
  table.erase(key);
  for (auto&& [name, node] : table) {
    if (auto* sub = node.as_table()) sub->erase(key);
  }
}

// The string value of `key` where kohya reads it: the top level, or one section deep.
std::optional<std::string> FindFlattened(const toml::table& table, const std::string& key) {
  if (auto v = table[key].value<std::string>()) return v;
  for (auto&& [name, node] : table) {
    if (auto* sub = node.as_table()) {
      if (auto v = (*sub)[key].value<std::string>()) return v;
    }
  }
  return std::nullopt;
}

// Appends the values of `table`'s data path keys, at any depth, to `out`.
void CollectDataPaths(const toml::table& table, std::vector<fs::path>* out) {
  for (auto&& [key, node] : table) {
    if (const auto* sub = node.as_table()) {
      CollectDataPaths(*sub, out);
      continue;
    }
    if (const auto* arr = node.as_array()) {
      for (const auto& item : *arr) {
        if (const auto* t = item.as_table()) CollectDataPaths(*t, out);
      }
      continue;
    }
    auto it = PathKeys().find(std::string(key.str()));
    if (it == PathKeys().end() || it->second != PathBase::kData) continue;
    if (auto value = node.value<std::string>(); value && !value->empty()) out->emplace_back(*value);
  }
}

}  // namespace

absl::StatusOr<std::string> ApplyOverrides(const std::string& config_toml,
                                           const std::map<std::string, std::string>& overrides) {
  if (overrides.empty()) return config_toml;
  if (overrides.size() > kMaxOverrides) {
    return absl::InvalidArgumentError(absl::StrCat("the job carries ", overrides.size(), " overrides; at most ",
                                                   kMaxOverrides, " are accepted (kohya has about 250 options)"));
  }
  auto parsed = ParseToml(config_toml, "training config");
  if (!parsed.ok()) return parsed.status();
  toml::table config = std::move(*parsed);
  for (const auto& [key, value_text] : overrides) {
    if (key.empty() || key.find_first_of(" =[]\"'\n") != std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat("override key '", key, "' is not a kohya option name"));
    }
    auto one = ParseToml(absl::StrCat("v = ", value_text), absl::StrCat("override ", key));
    if (!one.ok()) {
      // A bare word is taken as a string ("AdamW" without quotes).
      toml::table fallback;
      fallback.insert("v", value_text);
      one = std::move(fallback);
    }
    EraseEverywhere(config, key);
    config.insert_or_assign(key, *one->get("v"));
  }
  std::ostringstream os;
  os << config << "\n";
  return os.str();
}

namespace {

// The integer value of `key` where kohya reads it; nullopt when unset.
absl::StatusOr<std::optional<int64_t>> FlattenedCount(const toml::table& table, const std::string& key) {
  const toml::node* node = table.get(key);
  for (auto&& [name, sub] : table) {
    if (node != nullptr) break;
    if (auto* t = sub.as_table()) node = t->get(key);
  }
  if (node == nullptr) return std::optional<int64_t>();
  auto value = node->value<int64_t>();
  if (!value || *value < 1 || *value > kMaxJobGpus) {
    return absl::InvalidArgumentError(absl::StrCat(key, " must be a whole number of GPUs from 1 to ", kMaxJobGpus,
                                                   " (one lorad-train rank per GPU)"));
  }
  return std::optional<int64_t>(*value);
}

absl::StatusOr<int> GpusOf(const toml::table& config) {
  auto gpus = FlattenedCount(config, "gpus");
  if (!gpus.ok()) return gpus.status();
  auto processes = FlattenedCount(config, "num_processes");
  if (!processes.ok()) return processes.status();
  if (*gpus && *processes && **gpus != **processes) {
    return absl::InvalidArgumentError(absl::StrCat("gpus = ", **gpus, " but num_processes = ", **processes,
                                                   ": the daemon starts one rank per GPU; set one of them"));
  }
  if (*gpus) return static_cast<int>(**gpus);
  if (*processes) return static_cast<int>(**processes);
  return 1;
}

}  // namespace

absl::StatusOr<int> JobGpus(const std::string& config_toml) {
  auto parsed = ParseToml(config_toml, "training config");
  if (!parsed.ok()) return parsed.status();
  return GpusOf(*parsed);
}

absl::StatusOr<PreparedJobConfig> PrepareJobConfig(const JobConfigInput& input, const JobRoots& roots) {
  auto parsed = ParseToml(input.config_toml, "training config");
  if (!parsed.ok()) return parsed.status();
  toml::table config = std::move(*parsed);
  auto gpus = GpusOf(config);
  if (!gpus.ok()) return gpus.status();

  std::vector<fs::path> allowed = {roots.models_root, roots.datasets_root, input.job_dir};
  allowed.insert(allowed.end(), roots.extra_roots.begin(), roots.extra_roots.end());
  const fs::path data_base = input.dataset_dir.empty() ? roots.datasets_root : input.dataset_dir;

  if (!input.dataset_dir.empty() && input.dataset_config_toml.empty()) {
    EraseEverywhere(config, "train_data_dir");
    config.insert_or_assign("train_data_dir", input.dataset_dir.string());
  }
  for (const auto& key : DaemonKeys()) EraseEverywhere(config, key);
  if (auto s = ConfineTree(config, data_base, roots, allowed); !s.ok()) return s;
  // A dataset_config named in the config (already confined) is read now and its
  // own paths confined like an uploaded one's; the worker reads only that copy
  // (--dataset_config), never the named file, whose image_dir could point anywhere.
  std::optional<toml::table> dataset;
  fs::path dataset_base = data_base;
  if (!input.dataset_config_toml.empty()) {
    auto parsed_dataset = ParseToml(input.dataset_config_toml, "dataset config");
    if (!parsed_dataset.ok()) return parsed_dataset.status();
    dataset = std::move(*parsed_dataset);
  }
  if (auto named = FindFlattened(config, "dataset_config")) {
    EraseEverywhere(config, "dataset_config");
    if (!dataset) {
      auto from_file = ParseTomlFile(*named);
      if (!from_file.ok()) return from_file.status();
      dataset = std::move(*from_file);
      dataset_base = fs::path(*named).parent_path();  // core/data resolves relative image_dir there
    }
  }
  config.insert_or_assign("output_dir", (input.job_dir / "output").string());
  config.insert_or_assign("logging_dir", (input.job_dir / "logs").string());
  config.insert_or_assign("save_state", true);

  PreparedJobConfig prepared;
  prepared.gpus = *gpus;
  std::ostringstream os;
  os << config << "\n";
  prepared.config_toml = os.str();

  if (dataset) {
    if (auto s = ConfineTree(*dataset, dataset_base, roots, allowed); !s.ok()) return s;
    std::ostringstream ds;
    ds << *dataset << "\n";
    prepared.dataset_config_toml = ds.str();
  }

  // The worker's view: the same parser, the same --dataset_config.
  std::vector<std::pair<std::string, std::string>> worker_args;
  if (!prepared.dataset_config_toml.empty()) {
    worker_args.emplace_back("dataset_config", DatasetConfigPath(input.job_dir).string());
  }
  auto train = train::ParseTrainConfig(prepared.config_toml, worker_args);
  if (!train.ok()) return train.status();
  prepared.train = std::move(*train);
  // The network keys go through the trainer's network parser, so a bad
  // network_args entry is refused now rather than when the worker starts.
  if (auto network = networks::ParseNetworkConfig(networks::NetworkInputOf(prepared.train)); !network.ok()) {
    return network.status();
  }
  // What the checkpoint's header says (v-prediction, EDM) is judged now, as the
  // trainer will judge it; a model the header reader cannot open is left to the worker.
  if (auto facts = models::ReadBaseModelFacts(prepared.train.pretrained_model_name_or_path); facts.ok()) {
    train::TrainConfig as_trained = prepared.train;
    std::vector<std::string> notes;
    if (auto agreed = models::ApplyBaseModelFacts(*facts, as_trained, &notes); !agreed.ok()) return agreed;
  }
  if (dataset) {
    // The worker's reading: the config's dataset keys as fallbacks (the model's
    // native resolution is not known here; the config's sdxl flag stands in).
    auto args = train::DatasetArgsFor(prepared.train, prepared.train.sdxl ? 1024 : 512);
    if (!args.ok()) return args.status();
    auto datasets = data::ParseDatasetConfigToml(prepared.dataset_config_toml, dataset_base, *args);
    if (!datasets.ok()) {
      return absl::Status(datasets.status().code(), absl::StrCat("dataset config: ", datasets.status().message()));
    }
    prepared.datasets = std::move(*datasets);
  }
  prepared.hyperparameters = prepared.train.explicitly_set;
  if (!worker_args.empty()) prepared.hyperparameters.erase("dataset_config");
  return prepared;
}

std::vector<fs::path> DataPaths(const PreparedJobConfig& prepared) {
  std::vector<fs::path> paths;
  for (const std::string* text : {&prepared.config_toml, &prepared.dataset_config_toml}) {
    if (text->empty()) continue;
    // Both were written by PrepareJobConfig from parsed tables: they parse.
    auto parsed = ParseToml(*text, "prepared config");
    if (parsed.ok()) CollectDataPaths(*parsed, &paths);
  }
  return paths;
}

fs::path DatasetConfigPath(const fs::path& job_dir) { return job_dir / "dataset_config.toml"; }

}  // namespace lorad::server
