// lorad: the LoRA training daemon. See `lorad --help` and server/config.h.
#include <signal.h>

#include <filesystem>
#include <fstream>
#include <memory>

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "core/base/sha256.h"
#include "absl/synchronization/mutex.h"
#include "core/base/exit_codes.h"
#include "server/auth.h"
#include "server/completion_notifier.h"
#include "server/config.h"
#include "server/data_dir_lock.h"
#include "server/disk_cleanup.h"
#include "server/notify/webhook.h"
#include "server/event_hub.h"
#include "server/http_server.h"
#include "server/metrics.h"
#include "server/idle_switch.h"
#include "server/local_executor.h"
#include "server/scheduler.h"
#include "server/slurm_executor.h"
#include "server/server_info.h"
#include "server/service.h"
#include "spdlog/sinks/basic_file_sink.h"
#include "spdlog/sinks/stdout_color_sinks.h"
#include "spdlog/spdlog.h"
#include "storage/job_store.h"

namespace fs = std::filesystem;
using namespace lorad;

namespace {

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// Slots and the GPU each one gets: explicit config, else CUDA_VISIBLE_DEVICES,
// else the GPUs nvidia-smi saw at start; one CPU slot without GPUs.
void PlanSlots(const server::ServerConfig& config, const std::vector<server::GpuInfo>& machine_gpus,
               server::SchedulerOptions* options) {
  if (config.executor == "slurm") {
    // Slurm places the GPUs; the slots only cap the jobs kept submitted.
    options->slots = config.slots > 0 ? config.slots : 64;
    return;
  }
  std::vector<std::string> gpus = config.gpus;
  if (gpus.empty()) {
    if (const char* visible = std::getenv("CUDA_VISIBLE_DEVICES"); visible != nullptr) {
      gpus = absl::StrSplit(visible, ',', absl::SkipEmpty());
    } else {
      for (const auto& gpu : machine_gpus) gpus.push_back(std::to_string(gpu.index));
    }
  }
  options->slots = config.slots > 0 ? config.slots : std::max<int>(1, static_cast<int>(gpus.size()));
  for (int i = 0; i < options->slots && !gpus.empty(); ++i) {
    options->slot_gpus.push_back(gpus[i % gpus.size()]);
  }
}

int Run(int argc, char** argv) {
  if (server::WantsHelp(argc, argv)) {
    std::fprintf(stdout, "%s\n", server::ServerUsage().c_str());
    return kExitOk;
  }
  auto parsed = server::ParseServerConfig(argc, argv);
  if (!parsed.ok()) {
    std::fprintf(stderr, "%s\n", std::string(parsed.status().message()).c_str());
    return kExitUsage;
  }
  server::ServerConfig config = std::move(*parsed);
  if (auto s = server::FinalizeServerConfig(&config, fs::read_symlink("/proc/self/exe")); !s.ok()) {
    std::fprintf(stderr, "lorad: %s\n", std::string(s.message()).c_str());
    return kExitUsage;
  }

  auto console = std::make_shared<spdlog::sinks::stderr_color_sink_mt>();
  auto file = std::make_shared<spdlog::sinks::basic_file_sink_mt>((config.logs_dir() / "lorad.log").string());
  auto logger = std::make_shared<spdlog::logger>("lorad", spdlog::sinks_init_list{console, file});
  logger->set_level(spdlog::level::from_str(config.log_level));
  logger->flush_on(spdlog::level::info);
  spdlog::set_default_logger(logger);

  // Before the store opens: a second lorad must not touch this data dir's jobs.
  auto data_dir_lock = server::DataDirLock::Acquire(config.data_dir);
  if (!data_dir_lock.ok()) {
    spdlog::critical("{}", std::string(data_dir_lock.status().message()));
    return kExitStorage;
  }
  // Under the lock, an .incoming- folder is no live upload's: a crash cut it short.
  for (const auto& partial : server::RemoveIncompleteUploads(config.datasets_root)) {
    spdlog::warn("removed {}: an upload interrupted by a crash or kill", partial.string());
  }
  for (const auto& leftover : server::RemoveInterruptedDeletions(config.datasets_root)) {
    spdlog::warn("removed {}: a deleted dataset whose removal a crash or stop interrupted", leftover.string());
  }
  auto store = storage::JobStore::Open(config.db_path().string());
  if (!store.ok()) {
    spdlog::critical("{}", store.status().ToString());
    return kExitStorage;
  }
  server::EventHub hub(store->get());
  // Read once: slot planning and GetServerInfo share it (no nvidia-smi inside an RPC).
  std::vector<server::GpuInfo> machine_gpus = server::QueryGpus();
  server::SchedulerOptions options;
  PlanSlots(config, machine_gpus, &options);
  options.worker_binary = config.worker_binary;
  options.worker_args = config.worker_args;
  options.jobs_dir = config.jobs_dir();
  options.roots = {config.models_root, config.datasets_root, config.allowed_roots};
  options.grace_s = config.cancel_grace_s;
  options.latent_cache_root = config.data_dir / "cache" / "latents";
  options.price_per_hour = config.price_per_hour;
  options.backfill_s = config.backfill_s;
  if (config.executor == "slurm") {
    server::SlurmOptions slurm = config.slurm;
    // Another lorad on the same cluster names its jobs apart (its data dir).
    slurm.name_prefix = absl::StrCat("lorad-", Sha256Hex(config.data_dir.string()).substr(0, 6));
    options.executor = std::make_shared<server::SlurmExecutor>(std::move(slurm));
  } else {
    options.executor = std::make_shared<server::LocalExecutor>();
  }
  notify::WebhookOptions webhook_options;
  webhook_options.urls = config.webhook_urls;
  webhook_options.ca_file = config.webhook_ca_file;
  auto webhooks = notify::WebhookNotifier::Create(webhook_options);
  if (!webhooks.ok()) {
    spdlog::critical("webhook_urls: {}", webhooks.status().ToString());
    return kExitUsage;
  }
  server::CompletionNotifier completions(store->get(), webhooks->get(), config.price_per_hour > 0);
  if (!config.webhook_urls.empty()) {
    hub.SetTerminalListener([&completions](int64_t job_id) { completions.OnJobFinished(job_id); });
  }
  server::Scheduler scheduler(store->get(), &hub, options);
  server::LoradService service(&config, store->get(), &hub, &scheduler, std::move(machine_gpus));
  server::ModelManagerOptions model_options;
  model_options.models_root = config.models_root;
  model_options.free_reserve_bytes = config.models_free_reserve_bytes;
  model_options.sources = {config.hf_base_url, config.civitai_base_url, config.hf_token, config.civitai_token};
  model_options.http.ca_bundle = config.models_ca_file;
  model_options.http.user_agent = "lorad/" LORAD_VERSION;
  server::ModelManager models(store->get(), &hub, [&scheduler] { scheduler.NotifyQueued(); }, model_options);
  service.SetModelManager(&models);
  std::unique_ptr<server::IdleSwitch> idle_switch;
  if (!config.on_idle_command.empty()) {
    server::IdleSwitchOptions idle;
    idle.command = config.on_idle_command;
    idle.after = absl::Seconds(config.on_idle_after_s);
    idle.timeout = absl::Seconds(config.on_idle_timeout_s);
    // Short windows (tests) are looked at more often than once a second.
    idle.poll = std::min(absl::Seconds(1), idle.after / 10);
    storage::JobStore* jobs = store->get();
    idle_switch = std::make_unique<server::IdleSwitch>(
        idle, jobs, webhooks->get(),
        [jobs, &scheduler] {
          auto queued = jobs->CountJobs(storage::JobState::kQueued);
          auto running = jobs->CountJobs(storage::JobState::kRunning);
          // A store that cannot answer counts as busy: never stop the box on a guess.
          return !queued.ok() || !running.ok() || *queued > 0 || *running > 0 || scheduler.running() > 0;
        },
        [&scheduler] { return scheduler.activity(); });
    service.SetIdleSwitch(idle_switch.get());
  }

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  std::shared_ptr<grpc::ServerCredentials> credentials = grpc::InsecureServerCredentials();
  if (!config.tls_cert.empty()) {
    grpc::SslServerCredentialsOptions ssl;
    ssl.pem_key_cert_pairs.push_back({ReadFile(config.tls_key), ReadFile(config.tls_cert)});
    credentials = grpc::SslServerCredentials(ssl);
  }
  int port = 0;
  builder.AddListeningPort(config.listen, credentials, &port);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, 30000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10000);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 10000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder.SetMaxReceiveMessageSize(16 << 20);
  builder.RegisterService(&service);
  // Reflection lists every method and message: behind the token like the rest.
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> interceptors;
  // Every call counted and timed for /metrics, in this one place.
  server::RpcMetrics rpc_metrics;
  interceptors.push_back(rpc_metrics.NewInterceptorFactory());
  interceptors.push_back(server::NewReflectionAuthInterceptorFactory(&config.tokens));
  builder.experimental().SetInterceptorCreators(std::move(interceptors));
  std::unique_ptr<grpc::Server> grpc_server = builder.BuildAndStart();
  if (!grpc_server || port == 0) {
    spdlog::critical("cannot listen on {} (in use? try --listen 127.0.0.1:PORT)", config.listen);
    return kExitCannotListen;
  }
  if (auto s = scheduler.Start(); !s.ok()) {
    spdlog::critical("scheduler: {}", s.ToString());
    return kExitStorage;
  }
  // Pulls a previous daemon left unfinished resume (HTTP Range) from here.
  if (auto s = models.Start(); !s.ok()) {
    spdlog::critical("models: {}", s.ToString());
    return kExitStorage;
  }
  grpc_server->GetHealthCheckService()->SetServingStatus(true);
  // The dashboard and /metrics: a busy default port leaves the daemon
  // without them (a warning); a port the user chose must be free.
  std::unique_ptr<server::HttpServer> http;
  if (config.http != "off") {
    http = std::make_unique<server::HttpServer>(
        server::HttpSources{&config, store->get(), &hub, &scheduler, &service, &rpc_metrics});
    if (absl::Status s = http->Start(); !s.ok()) {
      if (config.http_explicit) {
        spdlog::critical("{}", std::string(s.message()));
        scheduler.Shutdown();
        service.Shutdown();
        hub.Shutdown();
        grpc_server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(3));
        return kExitCannotListen;
      }
      spdlog::warn("{}; running without the dashboard", std::string(s.message()));
      http.reset();
    } else {
      const fs::path http_port_file = config.data_dir / "lorad.http-port";
      std::ofstream(http_port_file.string() + ".tmp") << http->port() << "\n";
      fs::rename(http_port_file.string() + ".tmp", http_port_file);
      spdlog::info("dashboard on http://{} (port {}){}", config.http, http->port(),
                   config.metrics_open ? "; /metrics open without the token" : "");
    }
  }
  if (idle_switch) {
    idle_switch->Start();
    spdlog::info("on_idle: `{}` runs once the queue has been empty for {}", config.on_idle_command,
                 absl::FormatDuration(absl::Seconds(config.on_idle_after_s)));
  }
  // The bound port (useful with --listen 127.0.0.1:0), written atomically.
  {
    const fs::path port_file = config.data_dir / "lorad.port";
    std::ofstream(port_file.string() + ".tmp") << port << "\n";
    fs::rename(port_file.string() + ".tmp", port_file);
  }
  spdlog::info("lorad {} listening on {} (port {}), data dir {}, {} slot(s), worker {}{}", LORAD_VERSION,
               config.listen, port, config.data_dir.string(), options.slots, config.worker_binary,
               config.tokens.empty() ? " — no token configured: anyone who reaches the port can submit"
                                     : "");

  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  int received = 0;
  sigwait(&stop_signals, &received);
  spdlog::info("received {}: stopping (running jobs save their state and resume on the next start)",
               received == SIGTERM ? "SIGTERM" : "SIGINT");
  grpc_server->GetHealthCheckService()->SetServingStatus(false);
  if (http) http->Stop();  // its event streams end within a second
  if (idle_switch) idle_switch->Stop();
  scheduler.Shutdown();
  models.Shutdown();  // pulls pause (they resume at the next start); upload checks answer
  service.Shutdown();  // kills running curation reports; their calls end before the server's Shutdown
  hub.Shutdown();
  hub.SetTerminalListener(nullptr);
  (*webhooks)->Shutdown(absl::Seconds(5));
  grpc_server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(3));
  spdlog::info("lorad stopped cleanly");
  return kExitOk;
}

}  // namespace

int main(int argc, char** argv) {
  // Debian's Abseil checks every mutex acquisition for lock-order cycles in
  // release builds, gRPC's own locks included: 5-15% of the daemon's CPU while
  // it fans events out to 100 tails (lorad-bench daemon).
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  // Block the stop signals in every thread (threads inherit the mask); main sigwaits.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  signal(SIGPIPE, SIG_IGN);
  return Run(argc, argv);
}
