// lorad-bench daemon: a real lorad on loopback with a temp data dir.
//  1. SubmitJob round trips per second (each one an fsynced SQLite transaction),
//     against ListDatasets (a read-only RPC) measured in the same run.
//  2. Event fan-out latency, from the worker's write to a tailing client's
//     receipt, p50/p99 with 1, 10 and 100 concurrent tails. The worker is this
//     binary (`lorad-bench daemon_worker`): it writes Log events stamped with
//     CLOCK_MONOTONIC microseconds through the real events pipe. Tails are
//     callback reactors; a last run repeats 100 tails as 100 threads blocked
//     in the sync API, which on the bench's 2 cores mostly measures those
//     threads. Each line splits the latency (to the event's first receipt /
//     from there to each tail) and gives the CPU the daemon and tails used.
//  3. FetchArtifact throughput for a --fetch-mib file (default 1 GiB) against
//     `cat FILE > /dev/null`, with the parts of a verified fetch timed alone.
// --submits N, --events N, --fetch-mib N; 0 skips that part.
#include <fcntl.h>
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
#include <sstream>
#include <thread>

#include <toml++/toml.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
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

// CPU seconds (user + system) used so far by process `pid` (0: this process).
double CpuSeconds(pid_t pid) {
  std::ifstream in(pid == 0 ? std::string("/proc/self/stat") : absl::StrCat("/proc/", pid, "/stat"));
  std::string text((std::istreambuf_iterator<char>(in)), {});
  // Fields after the parenthesised command name: utime is the 12th, stime the 13th.
  std::istringstream fields(text.substr(text.rfind(')') + 2));
  std::string field;
  long long ticks = 0;
  for (int i = 1; i <= 13 && fields >> field; ++i) {
    if (i >= 12) ticks += std::stoll(field);
  }
  return static_cast<double>(ticks) / static_cast<double>(sysconf(_SC_CLK_TCK));
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

// Records a bench Log event's latency into `latency` (indexed by event number);
// counts the tail in `ready` when the worker's job_started arrives (the worker
// then waits for the go file).
void RecordReceipt(const lorad::v1::JobEvent& e, std::vector<double>* latency, std::atomic<int>* ready) {
  const int64_t now = MonotonicUs();
  if (e.event().has_job_started()) ++*ready;
  const std::string& m = e.event().log().message();
  if (m.rfind("bench ", 0) != 0) return;
  const size_t space = m.rfind(' ');
  int64_t index = -1, sent = 0;
  (void)absl::SimpleAtoi(m.substr(6, space - 6), &index);
  (void)absl::SimpleAtoi(m.substr(space + 1), &sent);
  if (index >= 0 && index < static_cast<int64_t>(latency->size())) (*latency)[index] = (now - sent) / 1000.0;
}

// A tail on the callback API: its reads complete on gRPC's own threads, so 100
// tails cost the bench's host a few threads, not 100 (a real tail, loractl on
// another machine, costs the daemon's host none).
class CallbackTail : public grpc::ClientReadReactor<lorad::v1::JobEvent> {
 public:
  CallbackTail(client::Client& c, int64_t job_id, std::vector<double>* latency, std::atomic<int>* ready)
      : ctx_(c.Context(true)), latency_(latency), ready_(ready) {
    request_.set_job_id(job_id);
    c.stub()->async()->StreamEvents(ctx_.get(), &request_, this);
    StartRead(&event_);
    StartCall();
  }
  void OnReadDone(bool ok) override {
    if (!ok) return;  // OnDone follows
    RecordReceipt(event_, latency_, ready_);
    StartRead(&event_);
  }
  void OnDone(const grpc::Status&) override {
    absl::MutexLock lock(&mu_);
    done_ = true;
  }
  // Returns once OnDone ran; the tail may then be destroyed.
  void Await() {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(&done_));
  }

 private:
  std::unique_ptr<grpc::ClientContext> ctx_;
  lorad::v1::StreamEventsRequest request_;
  lorad::v1::JobEvent event_;  // reads are serialised: one in flight
  std::vector<double>* latency_;
  std::atomic<int>* ready_;
  absl::Mutex mu_;
  bool done_ ABSL_GUARDED_BY(mu_) = false;
};

// `blocking_threads`: each tail is a thread blocked in the sync API's Read (as
// before issue 16); otherwise tails are callback reactors. With 100 tails on
// the bench's 2 cores, 100 runnable threads compete with the daemon itself.
void BenchFanOut(Daemon& d, int tails, int events, bool blocking_threads) {
  const std::string name = absl::StrCat("fanout-", tails, blocking_threads ? "-threads" : "");
  const fs::path go = d.data / absl::StrCat("go-", name);
  const int64_t id = Submit(*d.client,
                            absl::StrCat("bench_events = ", events, "\nbench_interval_us = 2000\n",
                                         "bench_wait_file = \"", go.string(), "\"\n"),
                            name);
  // latency[t][i]: event i's worker write -> receipt by tail t, in ms (-1: not received).
  std::vector<std::vector<double>> latency(tails, std::vector<double>(events, -1));
  std::atomic<int> ready{0};
  std::vector<std::thread> threads;
  std::vector<std::unique_ptr<CallbackTail>> reactors;
  for (int t = 0; t < tails; ++t) {
    if (!blocking_threads) {
      reactors.push_back(std::make_unique<CallbackTail>(*d.client, id, &latency[t], &ready));
      continue;
    }
    threads.emplace_back([&, t] {
      auto ctx = d.client->Context(true);
      lorad::v1::StreamEventsRequest request;
      request.set_job_id(id);
      auto reader = d.client->stub()->StreamEvents(ctx.get(), request);
      lorad::v1::JobEvent e;
      while (reader->Read(&e)) RecordReceipt(e, &latency[t], &ready);
      reader->Finish();
    });
  }
  // Queued submits from BenchSubmit run first; the clock starts when the
  // worker has started and every tail is attached (or after 5 minutes).
  const auto give_up = Clock::now() + std::chrono::minutes(5);
  while (ready < tails && Clock::now() < give_up) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  const double daemon_cpu0 = CpuSeconds(d.pid), self_cpu0 = CpuSeconds(0);
  const auto wall0 = Clock::now();
  std::ofstream(go) << "go";
  for (auto& th : threads) th.join();
  for (auto& r : reactors) r->Await();
  const double wall = std::chrono::duration<double>(Clock::now() - wall0).count();
  const double daemon_cpu = CpuSeconds(d.pid) - daemon_cpu0, tails_cpu = CpuSeconds(0) - self_cpu0;
  // Each receipt's latency splits into the time to the event's first receipt
  // by any tail (worker pipe, fsynced SQLite commit, one delivery) and the
  // time from there to this tail (the fan-out proper).
  std::vector<double> all, first, spread;
  for (int i = 0; i < events; ++i) {
    double earliest = -1;
    for (int t = 0; t < tails; ++t) {
      if (latency[t][i] >= 0 && (earliest < 0 || latency[t][i] < earliest)) earliest = latency[t][i];
    }
    if (earliest < 0) continue;
    first.push_back(earliest);
    for (int t = 0; t < tails; ++t) {
      if (latency[t][i] < 0) continue;
      all.push_back(latency[t][i]);
      spread.push_back(latency[t][i] - earliest);
    }
  }
  std::printf("fan-out %3d tail(s)%s: %zu receipts, latency worker write -> client receipt p50 %.3f ms, "
              "p99 %.3f ms\n    (to the event's first receipt p50 %.3f, p99 %.3f; from there to each tail "
              "p50 %.3f, p99 %.3f; CPU over %.2f s: daemon %.2f s, tails %.2f s)\n",
              tails, blocking_threads ? ", a blocked thread each" : "", all.size(), Percentile(all, 0.5),
              Percentile(all, 0.99), Percentile(first, 0.5), Percentile(first, 0.99), Percentile(spread, 0.5),
              Percentile(spread, 0.99), wall, daemon_cpu, tails_cpu);
}

// Seconds to write `mib` MiB to a new file at `path` in 1 MiB write(2) calls
// (page cache only: no fsync, as a fetch does not fsync either).
double TimeWriteNewFile(const fs::path& path, int64_t mib) {
  const std::string block(1 << 20, 'w');
  const auto t = Clock::now();
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  for (int64_t i = 0; fd >= 0 && i < mib; ++i) {
    if (::write(fd, block.data(), block.size()) != static_cast<ssize_t>(block.size())) break;
  }
  if (fd >= 0) ::close(fd);
  return std::chrono::duration<double>(Clock::now() - t).count();
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
  const double daemon_cpu0 = CpuSeconds(d.pid), self_cpu0 = CpuSeconds(0);
  const auto t = Clock::now();
  absl::Status status = d.client->FetchArtifact(artifact, target);
  const double fetch_s = std::chrono::duration<double>(Clock::now() - t).count();
  const double daemon_cpu = CpuSeconds(d.pid) - daemon_cpu0, client_cpu = CpuSeconds(0) - self_cpu0;

  // What a verified fetch is made of, each part timed alone afterwards on the
  // same data: the tree's one SHA-256 over the file; write(2) of as many bytes
  // to a new file; the bare stream (chunks read and dropped: no file, no hash).
  // The fetched file is kept until then, so the write pays for fresh page
  // cache as the fetch did: on a VM that hands freed memory back to its host
  // (Firecracker with free page reporting, as here) each new page costs a host
  // fault, and pages freed moments ago do not, so this figure swings.
  const auto t_hash = Clock::now();
  (void)lorad::Sha256File(file);
  const double hash_s = std::chrono::duration<double>(Clock::now() - t_hash).count();
  const fs::path written = d.data / "write-reference.bin";
  const double write_s = TimeWriteNewFile(written, mib);
  const auto t_stream = Clock::now();
  int64_t streamed = 0;
  {
    auto ctx = d.client->Context(true);
    lorad::v1::FetchArtifactRequest request;
    request.set_artifact_id(artifact.id());
    auto reader = d.client->stub()->FetchArtifact(ctx.get(), request);
    lorad::v1::ArtifactChunk chunk;
    while (reader->Read(&chunk)) streamed += static_cast<int64_t>(chunk.data().size());
    if (!reader->Finish().ok()) streamed = -1;
  }
  const double stream_s = std::chrono::duration<double>(Clock::now() - t_stream).count();

  const double cat_rate = mib / cat_s;
  std::printf("FetchArtifact %lld MiB: %.2f s (%.0f MiB/s, sha256 verified: %s; CPU: daemon %.2f s, client %.2f s); "
              "cat > /dev/null: %.2f s (%.0f MiB/s); fetch/cat throughput ratio %.2f\n",
              static_cast<long long>(mib), fetch_s, mib / fetch_s, status.ok() ? "yes" : status.ToString().c_str(),
              daemon_cpu, client_cpu, cat_s, cat_rate, cat_s / fetch_s);
  std::printf("    parts alone (MiB/s, and ratio to cat): sha256 %.0f (%.2f); write(2) to a new file %.0f (%.2f); "
              "bare stream %.0f (%.2f)%s\n",
              mib / hash_s, (mib / hash_s) / cat_rate, mib / write_s, (mib / write_s) / cat_rate, mib / stream_s,
              (mib / stream_s) / cat_rate, streamed == (mib << 20) ? "" : " [bare stream FAILED]");
  fs::remove(target);
  fs::remove(written);
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
  if (submits > 0) BenchSubmit(d, static_cast<int>(submits));
  if (events > 0) {
    for (int tails : {1, 10, 100}) BenchFanOut(d, tails, static_cast<int>(events), false);
    BenchFanOut(d, 100, static_cast<int>(events), true);
  }
  if (fetch_mib > 0) BenchFetch(d, fetch_mib);
  return 0;
}

}  // namespace

LORAD_BENCH(daemon, "lorad: SubmitJob/s, event fan-out latency (1/10/100 tails), FetchArtifact vs cat",
            DaemonBench);
LORAD_BENCH(daemon_worker, "internal: the fake worker `lorad-bench daemon` runs", DaemonWorker);

}  // namespace lorad::bench
