// lorad-bench daemon: a real lorad on loopback with a temp data dir.
//  1. SubmitJob round trips per second (each one an fsynced SQLite transaction),
//     against ListDatasets (a read-only RPC) measured in the same run.
//  2. Event fan-out latency, from the worker's write to a tailing client's
//     receipt, p50/p99 with 1, 10 and 100 concurrent tails. The worker is this
//     binary (`lorad-bench daemon_worker`): it writes Log events stamped with
//     CLOCK_MONOTONIC microseconds through the real events pipe.
//  3. FetchArtifact throughput for a 1 GiB file against `cat FILE > /dev/null`.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include <toml++/toml.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "bench/bench_registry.h"
#include "client/client.h"
#include "proto/event_stream.h"
#include "core/base/sha256.h"
#include "storage/job_store.h"

namespace lorad::bench {
namespace {
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

int64_t MonotonicUs() {
  return std::chrono::duration_cast<std::chrono::microseconds>(Clock::now().time_since_epoch()).count();
}

// The worker: `daemon_worker --config_file F ... --events-fd N`; F has bench_events, bench_interval_us, bench_wait_file.
int DaemonWorker(int argc, char** argv) {
  std::string config_file;
  int fd = -1;
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::string(argv[i]) == "--config_file") config_file = argv[i + 1];
    if (std::string(argv[i]) == "--events-fd") (void)absl::SimpleAtoi(argv[i + 1], &fd);
  }
  if (config_file.empty() || fd < 0) return 2;
  toml::table config = toml::parse_file(config_file);
  const int64_t events = config["bench_events"].value_or(int64_t{0});
  const int64_t interval_us = config["bench_interval_us"].value_or(int64_t{1000});
  const std::string wait_file = config["bench_wait_file"].value_or(std::string());
  events::EventWriter writer(fd);
  lorad::v1::Event event;
  event.mutable_job_started()->set_total_steps(events);
  (void)writer.Write(event);
  while (!wait_file.empty() && !fs::exists(wait_file)) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  for (int64_t i = 0; i < events; ++i) {
    lorad::v1::Event e;
    e.mutable_log()->set_message(absl::StrCat("bench ", i, " ", MonotonicUs()));
    if (!writer.Write(e).ok()) return 1;
    std::this_thread::sleep_for(std::chrono::microseconds(interval_us));
  }
  lorad::v1::Event done;
  done.mutable_finished()->set_status(lorad::v1::Finished::SUCCEEDED);
  (void)writer.Write(done);
  return 0;
}

struct Daemon {
  pid_t pid = -1;
  fs::path data;
  std::unique_ptr<client::Client> client;
  ~Daemon() {
    if (pid > 0) {
      kill(pid, SIGTERM);
      waitpid(pid, nullptr, 0);
    }
    fs::remove_all(data);
  }
};

bool StartDaemon(Daemon* d, const fs::path& self) {
  const fs::path lorad = self.parent_path().parent_path() / "server" / "lorad";
  d->data = fs::temp_directory_path() / absl::StrCat("lorad_bench_", getpid());
  fs::remove_all(d->data);
  fs::create_directories(d->data);
  std::vector<std::string> args = {lorad.string(), "--listen", "127.0.0.1:0", "--data-dir", d->data.string(),
                                   "--slots", "2", "--worker", self.string(), "--worker-arg", "daemon_worker",
                                   "--log-level", "warn"};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  d->pid = fork();
  if (d->pid == 0) {
    execv(argv[0], argv.data());
    _exit(127);
  }
  for (int i = 0; i < 1000 && !fs::exists(d->data / "lorad.port"); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  int port = 0;
  std::ifstream(d->data / "lorad.port") >> port;
  if (port == 0) {
    std::fprintf(stderr, "lorad did not start (%s)\n", lorad.c_str());
    return false;
  }
  client::Connection c;
  c.server = absl::StrCat("127.0.0.1:", port);
  d->client = std::make_unique<client::Client>(c);
  return true;
}

// `config` holds the bench_* keys; SubmitJob checks the rest with the trainer's
// parser, so each job names a model and a dataset (never read by the bench worker).
int64_t Submit(client::Client& c, const std::string& config, const std::string& name) {
  lorad::v1::SubmitJobRequest request;
  request.set_config_toml(absl::StrCat("pretrained_model_name_or_path = \"bench.safetensors\"\n"
                                       "train_data_dir = \"bench\"\n",
                                       config));
  request.set_name(name);
  lorad::v1::Job job;
  auto ctx = c.Context();
  return c.stub()->SubmitJob(ctx.get(), request, &job).ok() ? job.id() : -1;
}

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * v.size()))];
}

void BenchSubmit(Daemon& d, int count) {
  const auto t0 = Clock::now();
  for (int i = 0; i < count; ++i) Submit(*d.client, "bench_events = 0\n", "submit-bench");
  const double submit_s = std::chrono::duration<double>(Clock::now() - t0).count();
  const auto t1 = Clock::now();
  for (int i = 0; i < count; ++i) {
    lorad::v1::ListDatasetsResponse r;
    auto ctx = d.client->Context();
    d.client->stub()->ListDatasets(ctx.get(), {}, &r);
  }
  const double read_s = std::chrono::duration<double>(Clock::now() - t1).count();
  std::printf("SubmitJob: %.0f round trips/s (%d sequential, durable); ListDatasets (read-only RPC): "
              "%.0f/s; ratio submit/read %.2f\n",
              count / submit_s, count, count / read_s, read_s / submit_s);
}

void BenchFanOut(Daemon& d, int tails, int events) {
  const fs::path go = d.data / absl::StrCat("go-", tails);
  const int64_t id = Submit(*d.client,
                            absl::StrCat("bench_events = ", events, "\nbench_interval_us = 2000\n",
                                         "bench_wait_file = \"", go.string(), "\"\n"),
                            absl::StrCat("fanout-", tails));
  std::vector<std::vector<double>> latencies(tails);
  std::atomic<int> connected{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < tails; ++t) {
    threads.emplace_back([&, t] {
      auto ctx = d.client->Context(true);
      lorad::v1::StreamEventsRequest request;
      request.set_job_id(id);
      auto reader = d.client->stub()->StreamEvents(ctx.get(), request);
      lorad::v1::JobEvent e;
      bool counted = false;
      while (reader->Read(&e)) {
        if (!counted) {
          connected++;
          counted = true;
        }
        const std::string& m = e.event().log().message();
        if (m.rfind("bench ", 0) != 0) continue;
        const int64_t now = MonotonicUs();
        int64_t sent = 0;
        (void)absl::SimpleAtoi(m.substr(m.rfind(' ') + 1), &sent);
        latencies[t].push_back((now - sent) / 1000.0);
      }
      reader->Finish();
    });
  }
  while (connected < tails) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  std::ofstream(go) << "go";
  for (auto& th : threads) th.join();
  std::vector<double> all;
  for (auto& l : latencies) all.insert(all.end(), l.begin(), l.end());
  std::printf("fan-out %3d tail(s): %zu receipts, latency worker write -> client receipt p50 %.3f ms, "
              "p99 %.3f ms\n",
              tails, all.size(), Percentile(all, 0.5), Percentile(all, 0.99));
}

void BenchFetch(Daemon& d, int64_t mib) {
  // A finished job's output folder holds the file; it is recorded the way the
  // supervisor records a worker's checkpoint.
  const int64_t id = Submit(*d.client, "bench_events = 0\n", "fetch-bench");
  const fs::path file = d.data / "jobs" / std::to_string(id) / "output" / "big.safetensors";
  for (int i = 0; i < 500 && !fs::exists(file.parent_path()); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  fs::create_directories(file.parent_path());
  {
    std::ofstream out(file, std::ios::binary);
    std::mt19937_64 rng(1);
    std::vector<uint64_t> block((1 << 20) / 8);
    for (int64_t i = 0; i < mib; ++i) {
      for (auto& x : block) x = rng();
      out.write(reinterpret_cast<const char*>(block.data()), 1 << 20);
    }
  }
  auto sha = lorad::Sha256File(file.string());
  auto store = storage::JobStore::Open((d.data / "lorad.db").string());
  if (!store.ok() || !sha.ok()) return;
  storage::EventWrite write;
  write.event.mutable_checkpoint()->set_path(file.string());
  storage::ArtifactRecord a;
  a.kind = lorad::v1::ARTIFACT_KIND_LORA;
  a.path = file.string();
  a.name = "big.safetensors";
  a.bytes = mib << 20;
  a.sha256 = *sha;
  write.artifact = a;
  (void)(*store)->AppendEvent(id, write);
  auto artifacts = (*store)->ListArtifacts(id);
  if (!artifacts.ok() || artifacts->empty()) return;
  lorad::v1::Artifact artifact;
  artifact.set_id(artifacts->back().id);
  artifact.set_bytes(a.bytes);
  artifact.set_name(a.name);

  auto time_cat = [&] {
    const auto t = Clock::now();
    (void)std::system(absl::StrCat("cat '", file.string(), "' > /dev/null").c_str());
    return std::chrono::duration<double>(Clock::now() - t).count();
  };
  time_cat();  // warm the page cache for both readers
  const double cat_s = time_cat();
  const fs::path target = d.data / "fetched.safetensors";
  const auto t = Clock::now();
  absl::Status status = d.client->FetchArtifact(artifact, target);
  const double fetch_s = std::chrono::duration<double>(Clock::now() - t).count();
  const double gib = mib / 1024.0;
  std::printf("FetchArtifact %lld MiB: %.2f s (%.0f MiB/s, sha256 verified: %s); cat > /dev/null: %.2f s "
              "(%.0f MiB/s); fetch/cat throughput ratio %.2f\n",
              static_cast<long long>(mib), fetch_s, mib / fetch_s, status.ok() ? "yes" : status.ToString().c_str(),
              cat_s, mib / cat_s, cat_s / fetch_s);
  (void)gib;
  fs::remove(target);
  fs::remove(file);
}

int DaemonBench(int argc, char** argv) {
  int64_t fetch_mib = 1024, submits = 300, events = 200;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--fetch-mib") (void)absl::SimpleAtoi(argv[i + 1], &fetch_mib);
    if (flag == "--submits") (void)absl::SimpleAtoi(argv[i + 1], &submits);
    if (flag == "--events") (void)absl::SimpleAtoi(argv[i + 1], &events);
  }
  Daemon d;
  if (!StartDaemon(&d, fs::read_symlink("/proc/self/exe"))) return 1;
  BenchSubmit(d, static_cast<int>(submits));
  for (int tails : {1, 10, 100}) BenchFanOut(d, tails, static_cast<int>(events));
  BenchFetch(d, fetch_mib);
  return 0;
}

}  // namespace

LORAD_BENCH(daemon, "lorad: SubmitJob/s, event fan-out latency (1/10/100 tails), FetchArtifact vs cat",
            DaemonBench);
LORAD_BENCH(daemon_worker, "internal: the fake worker `lorad-bench daemon` runs", DaemonWorker);

}  // namespace lorad::bench
