// lorad's configuration: defaults, then the TOML file (--config), then flags.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "server/slurm_executor.h"

namespace lorad::server {

struct ServerConfig {
  std::string listen = "127.0.0.1:50051";  // loopback: reach it through an SSH tunnel
  std::filesystem::path data_dir = "lorad-data";  // db, datasets, models, jobs, logs
  int slots = 0;                       // 0: one per visible GPU, 1 without GPUs
  std::vector<std::string> gpus;       // CUDA_VISIBLE_DEVICES value per slot; empty: detect
  std::vector<std::string> tokens;     // bearer tokens; empty: no auth
  std::string tls_cert;                // PEM files; both set: TLS
  std::string tls_key;
  std::filesystem::path models_root;   // default <data_dir>/models
  std::filesystem::path datasets_root; // default <data_dir>/datasets
  std::vector<std::filesystem::path> allowed_roots;  // extra read-only roots for job paths
  std::string worker_binary;           // default: lorad-train next to lorad
  std::vector<std::string> worker_args;  // inserted before lorad-train's own arguments
  std::string curate_binary;           // default: lorad-curate next to lorad
  std::string tag_binary;              // default: lorad-tag next to lorad (TagDataset)
  double cancel_grace_s = 30;          // SIGTERM -> SIGKILL
  int64_t max_upload_bytes = int64_t{8} << 30;
  int max_upload_files = 100000;
  // Free space the data dir keeps: an upload that would leave less is refused.
  int64_t min_free_bytes = int64_t{2} << 30;
  std::string log_level = "info";
  // Where attempts run: "local" (lorad-train children, one rank per GPU slot)
  // or "slurm" (one sbatch job per attempt, settings in `slurm`).
  std::string executor = "local";
  SlurmOptions slurm;
  // How long smaller jobs may pass a multi-GPU job that waits for free slots
  // (server/scheduler.h); 0: strict queue order.
  double backfill_s = 0;
  // http(s):// URLs POSTed a JSON body when a job or a whole sweep ends, and
  // when the idle switch fires.
  std::vector<std::string> webhook_urls;
  // The dashboard and /metrics (server/http_server.h): "HOST:PORT", loopback
  // like `listen`; "off" disables it. Busy default port: lorad runs without
  // the dashboard (a warning); a busy port set by flag or file stops the start.
  std::string http = "127.0.0.1:50052";
  bool http_explicit = false;  // set by --http or the file's `http`
  // /metrics without the token, for a scraper on the same machine (the port
  // is loopback by default); the pages and the API keep needing it.
  bool metrics_open = false;
  // PEM CA certificates trusted for https webhooks instead of the system
  // store (a private or test CA); empty: the system store.
  std::string webhook_ca_file;
  // What the box costs per hour, in the user's currency (issue 13). A job is
  // charged its GPUs' share of it for the time it runs; 0: no prices, GPU
  // time is still counted.
  double price_per_hour = 0;
  // on_idle = { after_minutes = 20, command = "..." }: once no job has been
  // queued or running for `on_idle_after_s`, lorad runs `on_idle_command`
  // (through /bin/sh -c) once, killed after `on_idle_timeout_s`. Empty: off.
  std::string on_idle_command;
  double on_idle_after_s = 0;
  double on_idle_timeout_s = 300;

  // Models as records (issue 13): the free space the models' disk keeps
  // (uploads and pulls that would leave less are refused), the tokens for
  // gated Hugging Face repos and civitai downloads (else HF_TOKEN /
  // CIVITAI_TOKEN), the sites' base URLs (tests point them at a loopback
  // server) and a PEM CA bundle for pulls (empty: the system store).
  int64_t models_free_reserve_bytes = int64_t{5} << 30;
  std::string hf_token;
  std::string civitai_token;
  std::string hf_base_url = "https://huggingface.co";
  std::string civitai_base_url = "https://civitai.com";
  std::string models_ca_file;

  std::filesystem::path db_path() const { return data_dir / "lorad.db"; }
  std::filesystem::path jobs_dir() const { return data_dir / "jobs"; }
  std::filesystem::path logs_dir() const { return data_dir / "logs"; }
};

// Parses `lorad [--config FILE] [--listen ADDR] [--data-dir DIR] [--token T]...
// [--slots N] [--worker PATH] [--grace-s S] ...`. Flags override the file.
// `self_path` (argv[0] resolved) locates the default lorad-train/lorad-curate.
// --help / -h: see WantsHelp, checked before parsing.
absl::StatusOr<ServerConfig> ParseServerConfig(int argc, char** argv);

// True when the command line asks for --help / -h.
bool WantsHelp(int argc, char** argv);

// Applies derived defaults (roots under data_dir, binaries next to self) and
// creates the data folders.
absl::Status FinalizeServerConfig(ServerConfig* config, const std::filesystem::path& self_path);

std::string ServerUsage();

}  // namespace lorad::server
