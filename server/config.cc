#include "server/config.h"

#include <cstdlib>
#include <fstream>
#include <optional>
#include <sstream>

#include <toml++/toml.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "core/base/toml.h"

namespace lorad::server {
namespace fs = std::filesystem;

namespace {

std::vector<std::string> StringList(const toml::node* node) {
  std::vector<std::string> out;
  if (node == nullptr) return out;
  if (auto s = node->value<std::string>()) {
    out.push_back(*s);
  } else if (const auto* arr = node->as_array()) {
    for (const auto& item : *arr) {
      if (auto s = item.value<std::string>()) out.push_back(*s);
      if (auto i = item.value<int64_t>()) out.push_back(std::to_string(*i));
    }
  }
  return out;
}

// A number given as an integer or a float.
std::optional<double> Number(const toml::node& node) {
  if (auto d = node.value_exact<double>()) return *d;
  if (auto i = node.value_exact<int64_t>()) return static_cast<double>(*i);
  return std::nullopt;
}

// on_idle = { after_minutes = 20, command = "...", timeout_s = 300 }
// (after_seconds instead of after_minutes: short windows for tests).
absl::Status LoadOnIdle(const std::string& path, const toml::node& node, ServerConfig* c) {
  const toml::table* table = node.as_table();
  if (table == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        "config ", path, ": on_idle must be a table, e.g. on_idle = { after_minutes = 20, command = \"...\" }"));
  }
  for (const auto& [key, value] : *table) {
    const std::string k(key.str());
    const std::optional<double> number = Number(value);
    if (k == "command") {
      auto text = value.value_exact<std::string>();
      if (!text) return absl::InvalidArgumentError(absl::StrCat("config ", path, ": on_idle.command must be a string"));
      c->on_idle_command = *text;
    } else if (k == "after_minutes" || k == "after_seconds" || k == "timeout_s") {
      if (!number || *number <= 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("config ", path, ": on_idle.", k, " must be a number > 0"));
      }
      if (k == "after_minutes") c->on_idle_after_s = *number * 60;
      if (k == "after_seconds") c->on_idle_after_s = *number;
      if (k == "timeout_s") c->on_idle_timeout_s = *number;
    } else {
      return absl::InvalidArgumentError(absl::StrCat("config ", path, ": unknown key on_idle.", k,
                                                     " (known: after_minutes, after_seconds, command, timeout_s)"));
    }
  }
  return absl::OkStatus();
}

// [slurm]: the Slurm executor's sbatch settings (server/slurm_executor.h).
absl::Status LoadSlurm(const std::string& path, const toml::node& node, ServerConfig* c) {
  const toml::table* table = node.as_table();
  if (table == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("config ", path, ": slurm must be a table ([slurm] partition = ...)"));
  }
  SlurmOptions& s = c->slurm;
  // Not a structured binding: clang 14 (the sanitizer build) cannot capture one.
  for (const auto& entry : *table) {
    const std::string k(entry.first.str());
    const toml::node& value = entry.second;
    auto text = [&](std::string* out) -> absl::Status {
      auto v = value.value_exact<std::string>();
      if (!v) return absl::InvalidArgumentError(absl::StrCat("config ", path, ": slurm.", k, " must be a string"));
      *out = *v;
      return absl::OkStatus();
    };
    auto count = [&](int* out) -> absl::Status {
      auto v = value.value_exact<int64_t>();
      if (!v || *v < 0) {
        return absl::InvalidArgumentError(absl::StrCat("config ", path, ": slurm.", k, " must be an integer >= 0"));
      }
      *out = static_cast<int>(*v);
      return absl::OkStatus();
    };
    absl::Status status;
    if (k == "partition") status = text(&s.partition);
    else if (k == "account") status = text(&s.account);
    else if (k == "gres") status = text(&s.gres);
    else if (k == "time_limit") status = text(&s.time_limit);
    else if (k == "bin_dir") status = text(&s.bin_dir);
    else if (k == "gpus_per_node") status = count(&s.gpus_per_node);
    else if (k == "cpus_per_task") status = count(&s.cpus_per_task);
    else if (k == "sbatch_args") s.sbatch_args = StringList(&value);
    else if (k == "poll_s") {
      const std::optional<double> poll = Number(value);
      if (!poll || *poll <= 0) return absl::InvalidArgumentError(absl::StrCat("config ", path, ": slurm.poll_s must be > 0"));
      s.poll_s = *poll;
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          "config ", path, ": unknown key slurm.", k,
          " (known: partition, account, gres, time_limit, gpus_per_node, cpus_per_task, sbatch_args, bin_dir, poll_s)"));
    }
    if (!status.ok()) return status;
  }
  return absl::OkStatus();
}

absl::Status LoadToml(const std::string& path, ServerConfig* c) {
  auto parsed = ParseTomlFile(path);
  if (!parsed.ok()) return parsed.status();
  const toml::table table = std::move(*parsed);
  for (const auto& [key, node] : table) {
    const std::string k(key.str());
    if (k == "listen") c->listen = node.value_or(c->listen);
    else if (k == "data_dir") c->data_dir = node.value_or(c->data_dir.string());
    else if (k == "slots") c->slots = static_cast<int>(node.value_or(int64_t{c->slots}));
    else if (k == "gpus") c->gpus = StringList(&node);
    else if (k == "token" || k == "tokens") c->tokens = StringList(&node);
    else if (k == "tls_cert") c->tls_cert = node.value_or(std::string());
    else if (k == "tls_key") c->tls_key = node.value_or(std::string());
    else if (k == "models_root") c->models_root = node.value_or(std::string());
    else if (k == "datasets_root") c->datasets_root = node.value_or(std::string());
    else if (k == "allowed_roots") {
      for (const auto& r : StringList(&node)) c->allowed_roots.emplace_back(r);
    } else if (k == "worker_binary") c->worker_binary = node.value_or(std::string());
    else if (k == "worker_args") c->worker_args = StringList(&node);
    else if (k == "webhook_urls" || k == "webhook_url") c->webhook_urls = StringList(&node);
    else if (k == "webhook_ca_file") c->webhook_ca_file = node.value_or(std::string());
    else if (k == "price_per_hour") {
      const std::optional<double> price = Number(node);
      if (!price) return absl::InvalidArgumentError(absl::StrCat("config ", path, ": price_per_hour must be a number"));
      c->price_per_hour = *price;
    } else if (k == "on_idle") {
      if (absl::Status s = LoadOnIdle(path, node, c); !s.ok()) return s;
    }
    else if (k == "models_free_reserve_gb") {
      const std::optional<double> gb = Number(node);
      if (!gb || *gb < 0) return absl::InvalidArgumentError(absl::StrCat("config ", path, ": models_free_reserve_gb must be a number >= 0"));
      c->models_free_reserve_bytes = static_cast<int64_t>(*gb * (int64_t{1} << 30));
    }
    else if (k == "hf_token") c->hf_token = node.value_or(std::string());
    else if (k == "civitai_token") c->civitai_token = node.value_or(std::string());
    else if (k == "hf_base_url") c->hf_base_url = node.value_or(c->hf_base_url);
    else if (k == "civitai_base_url") c->civitai_base_url = node.value_or(c->civitai_base_url);
    else if (k == "models_ca_file") c->models_ca_file = node.value_or(std::string());
    else if (k == "curate_binary") c->curate_binary = node.value_or(std::string());
    else if (k == "tag_binary") c->tag_binary = node.value_or(std::string());
    else if (k == "cancel_grace_s") c->cancel_grace_s = node.value_or(c->cancel_grace_s);
    else if (k == "max_upload_bytes") c->max_upload_bytes = node.value_or(c->max_upload_bytes);
    else if (k == "min_free_bytes") c->min_free_bytes = node.value_or(c->min_free_bytes);
    else if (k == "max_upload_files")
      c->max_upload_files = static_cast<int>(node.value_or(int64_t{c->max_upload_files}));
    else if (k == "log_level") c->log_level = node.value_or(c->log_level);
    else if (k == "executor") c->executor = node.value_or(c->executor);
    else if (k == "backfill_s") {
      const std::optional<double> seconds = Number(node);
      if (!seconds || *seconds < 0) return absl::InvalidArgumentError(absl::StrCat("config ", path, ": backfill_s must be a number >= 0"));
      c->backfill_s = *seconds;
    } else if (k == "slurm") {
      if (absl::Status s = LoadSlurm(path, node, c); !s.ok()) return s;
    }
    else if (k == "http") {
      c->http = node.value_or(c->http);
      c->http_explicit = true;
    } else if (k == "metrics_open") c->metrics_open = node.value_or(c->metrics_open);
    else {
      return absl::InvalidArgumentError(absl::StrCat(
          "config ", path, ": unknown key '", k, "' (see `lorad --help` for the keys)"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

std::string ServerUsage() {
  return "usage: lorad [--config lorad.toml] [--listen ADDR] [--data-dir DIR] [--token T]\n"
         "             [--slots N] [--gpus 0,1] [--worker PATH] [--worker-arg ARG]...\n"
         "             [--curate PATH] [--tag PATH] [--grace-s SECONDS] [--tls-cert PEM --tls-key PEM]\n"
         "             [--models-root DIR] [--datasets-root DIR] [--allowed-root DIR]...\n"
         "             [--max-upload-bytes N] [--min-free-bytes N] [--log-level debug|info|warn]\n"
         "             [--webhook http(s)://HOST:PORT/PATH]... [--webhook-ca PEM] (also webhook_urls,\n"
         "             webhook_ca_file in lorad.toml) [--price-per-hour P]\n"
         "             [--on-idle-command CMD --on-idle-after-minutes M] (on_idle = { after_minutes = M,\n"
         "             command = \"...\" } in lorad.toml: runs CMD once when no job has been queued or\n"
         "             running for M minutes, e.g. the provider's stop command)\n"
         "Models (loractl models pull/upload): [--models-free-reserve-gb G] (default 5) [--models-ca PEM]\n"
         "             [--hf-base-url URL] [--civitai-base-url URL]; hf_token / civitai_token in lorad.toml\n"
         "             or HF_TOKEN / CIVITAI_TOKEN in the environment for gated repos and civitai downloads\n"
         "Defaults: listen 127.0.0.1:50051 (reach it through `ssh -L 50051:127.0.0.1:50051 box`),\n"
         "data dir ./lorad-data, one slot per visible GPU. LORAD_TOKEN sets a token too.\n"
         "Multi-GPU jobs (gpus = N in the job's TOML): [--backfill-s S] (backfill_s; default 0: strict\n"
         "queue order). Slurm: [--executor local|slurm] (executor = \"slurm\" plus a [slurm] table:\n"
         "partition, account, gres = \"gpu:{gpus}\", time_limit, gpus_per_node, cpus_per_task,\n"
         "sbatch_args, bin_dir, poll_s); slots then caps the jobs submitted at once (default 64).\n"
         "Dashboard and Prometheus /metrics: [--http HOST:PORT|off] [--metrics-open true|false]\n"
         "(http, metrics_open in lorad.toml), default 127.0.0.1:50052: open it through\n"
         "`ssh -L 50052:127.0.0.1:50052 box`, then http://127.0.0.1:50052 (same token as the API;\n"
         "--metrics-open true lets /metrics answer without it).\n";
}

bool WantsHelp(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg == "--help" || arg == "-h") return true;
  }
  return false;
}

absl::StatusOr<ServerConfig> ParseServerConfig(int argc, char** argv) {
  ServerConfig config;
  std::vector<std::pair<std::string, std::string>> flags;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg.rfind("--", 0) != 0) {
      return absl::InvalidArgumentError(absl::StrCat("unexpected argument '", arg, "'\n", ServerUsage()));
    }
    std::string name = arg.substr(2), value;
    if (auto eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    } else if (i + 1 < argc) {
      value = argv[++i];
    } else {
      return absl::InvalidArgumentError(absl::StrCat("flag --", name, " needs a value"));
    }
    flags.emplace_back(name, value);
  }
  for (const auto& [name, value] : flags) {
    if (name == "config") {
      absl::Status status = LoadToml(value, &config);
      if (!status.ok()) return status;
    }
  }
  if (const char* token = std::getenv("LORAD_TOKEN"); token && *token && config.tokens.empty()) {
    config.tokens.push_back(token);
  }
  // The variables huggingface_hub and civitai's tools read.
  if (const char* token = std::getenv("HF_TOKEN"); token && *token && config.hf_token.empty()) config.hf_token = token;
  if (const char* token = std::getenv("CIVITAI_TOKEN"); token && *token && config.civitai_token.empty()) {
    config.civitai_token = token;
  }
  for (const auto& flag : flags) {
    // Not a structured binding: clang 14 (the sanitizer build) cannot capture one.
    const std::string& name = flag.first;
    const std::string& value = flag.second;
    auto as_int = [&](int64_t* out) -> absl::Status {
      if (!absl::SimpleAtoi(value, out)) {
        return absl::InvalidArgumentError(absl::StrCat("--", name, " expects an integer, got '", value, "'"));
      }
      return absl::OkStatus();
    };
    int64_t number = 0;
    if (name == "config") continue;
    if (name == "listen") config.listen = value;
    else if (name == "data-dir") config.data_dir = value;
    else if (name == "slots") {
      if (auto s = as_int(&number); !s.ok()) return s;
      config.slots = static_cast<int>(number);
    } else if (name == "gpus") config.gpus = absl::StrSplit(value, ',', absl::SkipEmpty());
    else if (name == "token") config.tokens = {value};
    else if (name == "tls-cert") config.tls_cert = value;
    else if (name == "tls-key") config.tls_key = value;
    else if (name == "models-root") config.models_root = value;
    else if (name == "datasets-root") config.datasets_root = value;
    else if (name == "allowed-root") config.allowed_roots.emplace_back(value);
    else if (name == "worker") config.worker_binary = value;
    else if (name == "worker-arg") config.worker_args.push_back(value);
    else if (name == "webhook") config.webhook_urls.push_back(value);
    else if (name == "webhook-ca") config.webhook_ca_file = value;
    else if (name == "on-idle-command") config.on_idle_command = value;
    else if (name == "price-per-hour" || name == "on-idle-after-minutes") {
      double number = 0;
      if (!absl::SimpleAtod(value, &number)) {
        return absl::InvalidArgumentError(absl::StrCat("--", name, " expects a number, got '", value, "'"));
      }
      if (name == "price-per-hour") config.price_per_hour = number;
      else config.on_idle_after_s = number * 60;
    }
    else if (name == "models-free-reserve-gb") {
      double gb = 0;
      if (!absl::SimpleAtod(value, &gb) || gb < 0) {
        return absl::InvalidArgumentError(absl::StrCat("--models-free-reserve-gb expects a number >= 0, got '", value, "'"));
      }
      config.models_free_reserve_bytes = static_cast<int64_t>(gb * (int64_t{1} << 30));
    }
    else if (name == "hf-base-url") config.hf_base_url = value;
    else if (name == "civitai-base-url") config.civitai_base_url = value;
    else if (name == "models-ca") config.models_ca_file = value;
    else if (name == "curate") config.curate_binary = value;
    else if (name == "tag") config.tag_binary = value;
    else if (name == "grace-s") {
      if (!absl::SimpleAtod(value, &config.cancel_grace_s)) {
        return absl::InvalidArgumentError(absl::StrCat("--grace-s expects seconds, got '", value, "'"));
      }
    } else if (name == "max-upload-bytes") {
      if (auto s = as_int(&config.max_upload_bytes); !s.ok()) return s;
    } else if (name == "min-free-bytes") {
      if (auto s = as_int(&config.min_free_bytes); !s.ok()) return s;
    } else if (name == "log-level") config.log_level = value;
    else if (name == "executor") config.executor = value;
    else if (name == "backfill-s") {
      if (!absl::SimpleAtod(value, &config.backfill_s) || config.backfill_s < 0) {
        return absl::InvalidArgumentError(absl::StrCat("--backfill-s expects seconds >= 0, got '", value, "'"));
      }
    }
    else if (name == "http") {
      config.http = value;
      config.http_explicit = true;
    } else if (name == "metrics-open") {
      if (value != "true" && value != "false") {
        return absl::InvalidArgumentError(absl::StrCat("--metrics-open expects true or false, got '", value, "'"));
      }
      config.metrics_open = value == "true";
    }
    else {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag --", name, "\n", ServerUsage()));
    }
  }
  if (config.slots < 0) return absl::InvalidArgumentError("--slots must be >= 0");
  if (config.executor != "local" && config.executor != "slurm") {
    return absl::InvalidArgumentError(absl::StrCat("executor must be \"local\" (lorad-train on this machine) or ",
                                                   "\"slurm\" (sbatch jobs), got \"", config.executor, "\""));
  }
  if (config.price_per_hour < 0) return absl::InvalidArgumentError("price_per_hour must be >= 0");
  if (config.on_idle_command.empty() != (config.on_idle_after_s <= 0)) {
    return absl::InvalidArgumentError(
        "on_idle needs both a command and a time: on_idle = { after_minutes = 20, command = \"...\" } "
        "(or --on-idle-command CMD --on-idle-after-minutes M)");
  }
  if (config.tls_cert.empty() != config.tls_key.empty()) {
    return absl::InvalidArgumentError("TLS needs both tls_cert and tls_key (PEM files)");
  }
  return config;
}

absl::Status FinalizeServerConfig(ServerConfig* c, const fs::path& self_path) {
  std::error_code ec;
  fs::create_directories(c->data_dir, ec);
  if (ec) {
    return absl::PermissionDeniedError(absl::StrCat("cannot create data dir ", c->data_dir.string(),
                                                    ": ", ec.message()));
  }
  c->data_dir = fs::canonical(c->data_dir);
  if (c->models_root.empty()) c->models_root = c->data_dir / "models";
  if (c->datasets_root.empty()) c->datasets_root = c->data_dir / "datasets";
  for (const auto& dir : {c->models_root, c->datasets_root, c->jobs_dir(), c->logs_dir()}) {
    fs::create_directories(dir, ec);
    if (ec) return absl::PermissionDeniedError(absl::StrCat("cannot create ", dir.string(), ": ", ec.message()));
  }
  c->models_root = fs::canonical(c->models_root);
  c->datasets_root = fs::canonical(c->datasets_root);
  const fs::path self_dir = fs::weakly_canonical(self_path).parent_path();
  auto sibling = [&](const char* name) {
    // Build trees keep lorad-train in core/train; an install keeps it next to lorad.
    for (const fs::path& candidate :
         {self_dir / name, self_dir.parent_path() / "core" / "train" / name,
          self_dir.parent_path() / "core" / "data" / name}) {
      if (fs::exists(candidate)) return candidate.string();
    }
    return (self_dir / name).string();
  };
  if (c->worker_binary.empty()) c->worker_binary = sibling("lorad-train");
  if (c->curate_binary.empty()) c->curate_binary = sibling("lorad-curate");
  if (c->tag_binary.empty()) c->tag_binary = sibling("lorad-tag");
  if (c->cancel_grace_s < 0) return absl::InvalidArgumentError("cancel_grace_s must be >= 0");
  return absl::OkStatus();
}

}  // namespace lorad::server
