// Faults the daemon must survive with its records whole: kill -9 at random
// moments across every kind of work it does (the fault matrix), and a data dir
// whose disk fills up under a running job.
#include <signal.h>
#include <sys/mount.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <google/protobuf/util/message_differencer.h>
#include <grpcpp/grpcpp.h>
#include <sqlite3.h>
#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/base/sha256.h"
#include "storage/job_store.h"
#include "tests/daemon_harness.h"

namespace lorad::tests {
namespace {
namespace fs = std::filesystem;
using lorad::v1::JobEvent;

fs::path TestRoot(const std::string& name) {
  return fs::temp_directory_path() / absl::StrCat("lorad_fault_", getpid(), "_", name);
}


std::vector<lorad::v1::Job> ListJobs(Daemon& d) {
  lorad::v1::ListJobsRequest request;
  lorad::v1::ListJobsResponse response;
  auto ctx = d.client().Context();
  const grpc::Status status = d.client().stub()->ListJobs(ctx.get(), request, &response);
  EXPECT_TRUE(status.ok()) << status.error_message();
  return {response.jobs().begin(), response.jobs().end()};
}

std::vector<lorad::v1::Sweep> ListSweeps(Daemon& d) {
  lorad::v1::ListSweepsRequest request;
  lorad::v1::ListSweepsResponse response;
  auto ctx = d.client().Context();
  const grpc::Status status = d.client().stub()->ListSweeps(ctx.get(), request, &response);
  EXPECT_TRUE(status.ok()) << status.error_message();
  return {response.sweeps().begin(), response.sweeps().end()};
}

// The database checked by a second connection while the daemon runs (WAL
// readers see the last committed state).
void ExpectIntegrity(Daemon& d, const std::string& when) {
  auto store = storage::JobStore::Open((d.data_dir() / "lorad.db").string());
  ASSERT_TRUE(store.ok()) << when << ": " << store.status();
  EXPECT_TRUE((*store)->IntegrityCheck().ok()) << when;
}

std::string FileSha256(const fs::path& path) {
  auto sha = Sha256File(path);
  EXPECT_TRUE(sha.ok()) << sha.status();
  return sha.ok() ? *sha : "";
}

// One moment of the matrix: what runs when the daemon is killed.
enum class Phase { kUpload, kSubmit, kTraining, kCheckpointSave, kFetch, kSweepSubmit };

const char* PhaseName(Phase p) {
  switch (p) {
    case Phase::kUpload: return "upload";
    case Phase::kSubmit: return "submit";
    case Phase::kTraining: return "training";
    case Phase::kCheckpointSave: return "checkpoint save";
    case Phase::kFetch: return "fetch";
    case Phase::kSweepSubmit: return "sweep submission";
  }
  return "?";
}

// kill -9 at 20 random moments (a fixed seed, printed, so a failure replays):
// uploads, submits, training, checkpoint saves, fetches and sweep submissions
// are cut at a random point. After each restart: integrity_check is ok, no
// partial upload is listed or left on disk, every acknowledged submit exists,
// every sweep has all of its jobs, and at the end every job succeeded (resumed
// from its newest state where it was cut), its events are gap-free, and every
// LoRA fetched matches its recorded sha256.
TEST(DaemonFaultMatrix, Kill9AtTwentyMomentsLosesNothingRecorded) {
  const uint32_t seed = 20261203;
  std::fprintf(stderr, "fault matrix seed %u\n", seed);
  std::mt19937 rng(seed);
  Daemon d(TestRoot("matrix"), DaemonOptions{2, 5, "t", {}});
  d.Start();
  const std::string dataset = d.UploadTestDataset(2);
  const fs::path local = TestRoot("matrix-local");
  MakeImageDataset(local, 6, 96);

  std::set<int64_t> acknowledged;  // job ids a SubmitJob answered
  std::mutex acknowledged_mu;
  auto submit = [&](const std::string& name, int steps) {
    lorad::v1::SubmitJobRequest request;
    request.set_config_toml(Daemon::TinyConfig(steps, 2));
    request.set_dataset(dataset);
    request.set_name(name);
    request.set_request_id(name);
    lorad::v1::Job job;
    auto ctx = d.client().Context();
    if (d.client().stub()->SubmitJob(ctx.get(), request, &job).ok()) {
      std::lock_guard<std::mutex> lock(acknowledged_mu);
      acknowledged.insert(job.id());
    }
  };
  // Waits for a live event (not one replayed from before the call) that matches.
  auto wait_for_event = [&](const std::function<bool(const lorad::v1::Event&)>& match, double timeout_s) {
    const int64_t since_ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
            .count();
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
    while (std::chrono::steady_clock::now() < deadline) {
      for (const auto& job : ListJobs(d)) {
        if (job.state() != lorad::v1::JOB_STATE_RUNNING) continue;
        auto ctx = d.client().Context(true);
        ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
        lorad::v1::StreamEventsRequest request;
        request.set_job_id(job.id());
        auto reader = d.client().stub()->StreamEvents(ctx.get(), request);
        JobEvent e;
        while (reader->Read(&e)) {
          if (e.event().time_unix_ms() >= since_ms && match(e.event())) {
            ctx->TryCancel();
            reader->Finish();
            return true;
          }
          if (e.event().has_finished()) break;
        }
        ctx->TryCancel();
        reader->Finish();
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return false;
  };
  int sweeps_started = 0;

  for (int moment = 0; moment < 20; ++moment) {
    const Phase phase = static_cast<Phase>(moment % 6);
    const int delay_ms = std::uniform_int_distribution<int>(0, 400)(rng);
    std::fprintf(stderr, "moment %2d: kill -9 during %s after %d ms\n", moment, PhaseName(phase), delay_ms);
    std::thread work;
    switch (phase) {
      case Phase::kUpload:
        work = std::thread([&] { (void)d.client().UploadDataset(local, absl::StrCat("cut-", moment)); });
        break;
      case Phase::kSubmit:
        work = std::thread([&, moment] {
          for (int i = 0; i < 3; ++i) submit(absl::StrCat("m", moment, "-", i), 6);
        });
        break;
      case Phase::kTraining:
        submit(absl::StrCat("m", moment, "-train"), 10);
        ASSERT_TRUE(wait_for_event([](const lorad::v1::Event& e) { return e.has_progress(); }, 120))
            << "no job made progress";
        break;
      case Phase::kCheckpointSave:
        submit(absl::StrCat("m", moment, "-save"), 10);
        ASSERT_TRUE(wait_for_event([](const lorad::v1::Event& e) { return e.has_progress() && e.progress().step() % 2 == 1; },
                                   120))
            << "no job reached a step before a save";
        break;
      case Phase::kFetch: {
        std::vector<lorad::v1::Artifact> loras;
        for (const auto& job : ListJobs(d)) {
          if (job.state() != lorad::v1::JOB_STATE_SUCCEEDED) continue;
          lorad::v1::ListArtifactsRequest list;
          list.set_job_id(job.id());
          list.set_kind(lorad::v1::ARTIFACT_KIND_LORA);
          lorad::v1::ListArtifactsResponse artifacts;
          auto ctx = d.client().Context();
          if (d.client().stub()->ListArtifacts(ctx.get(), list, &artifacts).ok()) {
            loras.insert(loras.end(), artifacts.artifacts().begin(), artifacts.artifacts().end());
          }
        }
        if (loras.empty()) break;  // nothing finished yet: this moment kills an idle daemon
        work = std::thread([&, lora = loras.front()] {
          (void)d.client().FetchArtifact(lora, TestRoot("matrix-fetch") / lora.name(), 0, nullptr, 4096);
        });
        break;
      }
      case Phase::kSweepSubmit:
        ++sweeps_started;
        work = std::thread([&, moment] {
          lorad::v1::SubmitSweepRequest request;
          request.set_sweep_toml(absl::StrCat(Daemon::TinyConfig(4, 2), "dataset = \"", dataset, "\"\n",
                                              "[sweep]\nlearning_rate = [1e-4, 2e-4, 3e-4]\n"));
          request.set_name(absl::StrCat("sweep-", moment));
          request.set_request_id(absl::StrCat("sweep-", moment));
          lorad::v1::Sweep sweep;
          auto ctx = d.client().Context();
          (void)d.client().stub()->SubmitSweep(ctx.get(), request, &sweep);
        });
        break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
    d.Kill9();
    if (work.joinable()) work.join();
    d.Start();
    const std::string when = absl::StrCat("after moment ", moment, " (", PhaseName(phase), ")");
    ExpectIntegrity(d, when);
    // No partial upload is visible or left on disk.
    for (const auto& entry : fs::directory_iterator(d.data_dir() / "datasets")) {
      EXPECT_FALSE(absl::StartsWith(entry.path().filename().string(), ".incoming-")) << when << ": " << entry.path();
    }
    // Every acknowledged submit survived.
    std::set<int64_t> listed;
    for (const auto& job : ListJobs(d)) listed.insert(job.id());
    {
      std::lock_guard<std::mutex> lock(acknowledged_mu);
      for (int64_t id : acknowledged) EXPECT_TRUE(listed.count(id)) << when << ": acknowledged job " << id << " is gone";
    }
    // A sweep exists with all of its jobs or not at all.
    for (const auto& sweep : ListSweeps(d)) {
      EXPECT_EQ(sweep.jobs_total(), 3) << when << ": sweep " << sweep.name() << " is partial";
    }
  }

  // Everything finishes, each job from its newest saved state where it was cut.
  int jobs = 0, resumed = 0;
  for (const auto& job : ListJobs(d)) {
    ++jobs;
    const lorad::v1::Job end =
        d.WaitFor(job.id(), [](const lorad::v1::Job& j) { return IsTerminal(j.state()); }, 300);
    EXPECT_EQ(end.state(), lorad::v1::JOB_STATE_SUCCEEDED) << "job " << job.id() << ": " << end.reason();
    const auto events = d.ReadAllEvents(job.id());
    ExpectContiguous(events, 1, absl::StrCat("job ", job.id()));
    // An attempt after the first resumes from the newest state recorded before it.
    int64_t newest_state = 0;
    for (const auto& e : events) {
      if (e.event().has_job_started() && e.event().job_started().resumed_from_step() > 0) {
        ++resumed;
        EXPECT_EQ(e.event().job_started().resumed_from_step(), newest_state) << "job " << job.id();
      }
      if (e.event().has_checkpoint() && e.event().checkpoint().kind() == lorad::v1::ARTIFACT_KIND_STATE) {
        newest_state = e.event().checkpoint().step();
      }
    }
    // The LoRA fetched is the one recorded.
    lorad::v1::ListArtifactsRequest list;
    list.set_job_id(job.id());
    list.set_kind(lorad::v1::ARTIFACT_KIND_LORA);
    lorad::v1::ListArtifactsResponse artifacts;
    auto ctx = d.client().Context();
    ASSERT_TRUE(d.client().stub()->ListArtifacts(ctx.get(), list, &artifacts).ok());
    ASSERT_FALSE(artifacts.artifacts().empty()) << "job " << job.id();
    for (const auto& lora : artifacts.artifacts()) {
      const fs::path out = TestRoot("matrix-final") / std::to_string(job.id()) / lora.name();
      ASSERT_TRUE(d.client().FetchArtifact(lora, out).ok()) << "job " << job.id() << " " << lora.name();
      EXPECT_EQ(FileSha256(out), lora.sha256());
    }
  }
  std::fprintf(stderr, "fault matrix: %d jobs ended SUCCEEDED, %d attempts resumed from a saved state, %zu sweeps\n",
               jobs, resumed, ListSweeps(d).size());
  EXPECT_GE(sweeps_started, 3);
  EXPECT_EQ(d.Stop(), 0);
  auto store = storage::JobStore::Open((d.data_dir() / "lorad.db").string());
  ASSERT_TRUE(store.ok());
  EXPECT_TRUE((*store)->IntegrityCheck().ok());
  for (const auto& dir : {d.data_dir(), local, TestRoot("matrix-fetch"), TestRoot("matrix-final")}) {
    fs::remove_all(dir);
  }
}

// A tmpfs the test mounts and unmounts (root only; skipped elsewhere).
class ScopedTmpfs {
 public:
  ScopedTmpfs(fs::path where, int64_t bytes) : where_(std::move(where)) {
    fs::create_directories(where_);
    const std::string options = absl::StrCat("size=", bytes);
    if (::mount("tmpfs", where_.c_str(), "tmpfs", 0, options.c_str()) == 0) {
      mounted_ = true;
    } else {
      error_ = std::strerror(errno);
    }
  }
  ~ScopedTmpfs() {
    if (mounted_) ::umount2(where_.c_str(), MNT_DETACH);
    std::error_code ec;
    fs::remove_all(where_, ec);
  }
  bool mounted() const { return mounted_; }
  const std::string& error() const { return error_; }

 private:
  fs::path where_;
  bool mounted_ = false;
  std::string error_;
};

// Writes until the disk refuses (ENOSPC); returns the bytes written.
int64_t FillDisk(const fs::path& file) {
  std::FILE* f = std::fopen(file.c_str(), "wb");
  if (f == nullptr) return 0;
  const std::string chunk(64 << 10, 'x');
  int64_t written = 0;
  while (true) {
    const size_t n = std::fwrite(chunk.data(), 1, chunk.size(), f);
    written += static_cast<int64_t>(n);
    if (n < chunk.size() || std::fflush(f) != 0) break;
  }
  std::fclose(f);
  return written;
}

// The pids of lorad-train processes whose command line names `needle`.
std::vector<pid_t> WorkersNaming(const std::string& needle) {
  std::vector<pid_t> pids;
  for (const auto& entry : fs::directory_iterator("/proc")) {
    const std::string name = entry.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream in(entry.path() / "cmdline", std::ios::binary);
    const std::string cmdline((std::istreambuf_iterator<char>(in)), {});
    if (absl::StrContains(cmdline, "lorad-train") && absl::StrContains(cmdline, needle)) {
      pids.push_back(static_cast<pid_t>(std::stoi(name)));
    }
  }
  return pids;
}

// The data dir on a small tmpfs that fills while a job trains: the job fails
// with a reason that names the full disk, its end is recorded once space
// returns (never a job RUNNING forever), the daemon answers throughout, and
// nothing recorded before is lost.
TEST(DaemonDiskFull, AJobOnAFullDiskFailsAndItsEndIsRecordedOnceSpaceReturns) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to mount a tmpfs";
  const fs::path root = TestRoot("diskfull");
  ScopedTmpfs tmpfs(root, int64_t{96} << 20);
  if (!tmpfs.mounted()) GTEST_SKIP() << "cannot mount a tmpfs here: " << tmpfs.error();
  const fs::path data = root / "data";
  Daemon d(data, DaemonOptions{1, 5, "t", {"--min-free-bytes", "0"}});
  d.Start();
  const std::string dataset = d.UploadTestDataset(2);
  const int64_t id = d.Submit(Daemon::TinyConfig(400, 1), dataset, "fills-the-disk");
  // Training has begun: the first progress event is recorded.
  const std::vector<JobEvent> before =
      d.ReadEventsUntil(id, [](const lorad::v1::Event& e) { return e.has_progress(); });
  ASSERT_FALSE(before.empty());
  ASSERT_TRUE(before.back().event().has_progress()) << "the job ended before it trained";
  const fs::path filler = root / "filler.bin";
  const int64_t filled = FillDisk(filler);
  std::fprintf(stderr, "filled the tmpfs with %lld bytes\n", static_cast<long long>(filled));
  // The worker's next save hits the full disk and it exits.
  const std::string job_dir = (data / "jobs" / std::to_string(id)).string();
  for (int i = 0; i < 1200 && !WorkersNaming(job_dir).empty(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_TRUE(WorkersNaming(job_dir).empty()) << "the worker kept running on a full disk";
  // The daemon still answers while the disk is full.
  const lorad::v1::Job during = d.GetJob(id);
  std::fprintf(stderr, "while full: job state %s (%s)\n", lorad::v1::JobState_Name(during.state()).c_str(),
               during.reason().c_str());
  // Space returns; the end is recorded within the retry back-off.
  fs::remove(filler);
  const lorad::v1::Job end = d.WaitFor(id, [](const lorad::v1::Job& j) { return IsTerminal(j.state()); }, 90);
  ASSERT_EQ(end.state(), lorad::v1::JOB_STATE_FAILED) << end.reason();
  std::fprintf(stderr, "recorded end: %s\n", end.reason().c_str());
  EXPECT_TRUE(absl::StrContains(end.reason(), "is full") || absl::StrContains(end.reason(), "No space left"))
      << end.reason();
  const auto events = d.ReadAllEvents(id);
  ExpectContiguous(events, 1, "the job on a full disk");
  ASSERT_GE(events.size(), before.size());
  for (size_t i = 0; i < before.size(); ++i) {
    EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(events[i], before[i])) << "event " << i << " changed";
  }
  EXPECT_TRUE(events.back().event().has_finished());
  // The slot is free again: a new job runs to its end.
  const int64_t next = d.Submit(Daemon::TinyConfig(2, 0), dataset, "after-the-disk-full");
  EXPECT_EQ(d.WaitFor(next, [](const lorad::v1::Job& j) { return IsTerminal(j.state()); }, 240).state(),
            lorad::v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(d.Stop(), 0);
  auto store = storage::JobStore::Open((data / "lorad.db").string());
  ASSERT_TRUE(store.ok());
  EXPECT_TRUE((*store)->IntegrityCheck().ok());
}

// Another process holds the database's write lock for longer than the
// daemon's busy_timeout (5 s) while a job trains: the daemon retries, the
// worker waits on its events pipe, and every step's progress is recorded once.
TEST(DaemonDatabaseLocked, AnotherProcessHoldingTheDatabaseDelaysEventsButLosesNone) {
  Daemon d(TestRoot("locked"), DaemonOptions{1, 5, "t", {}});
  d.Start();
  const std::string dataset = d.UploadTestDataset(2);
  // Long enough that the job is still training when the lock is taken on a busy machine.
  const int steps = 40;
  const int64_t id = d.Submit(Daemon::TinyConfig(steps, 10), dataset, "waits-for-the-lock");
  d.WaitFor(id, [](const lorad::v1::Job& j) { return j.state() == lorad::v1::JOB_STATE_RUNNING; }, 120);
  sqlite3* other = nullptr;
  ASSERT_EQ(sqlite3_open((d.data_dir() / "lorad.db").c_str(), &other), SQLITE_OK);
  sqlite3_busy_timeout(other, 30000);  // the daemon may be mid-commit at this instant
  ASSERT_EQ(sqlite3_exec(other, "BEGIN EXCLUSIVE", nullptr, nullptr, nullptr), SQLITE_OK) << sqlite3_errmsg(other);
  std::this_thread::sleep_for(std::chrono::seconds(8));
  // The daemon still answers reads meanwhile (WAL readers are not blocked).
  EXPECT_FALSE(IsTerminal(d.GetJob(id).state()));
  ASSERT_EQ(sqlite3_exec(other, "COMMIT", nullptr, nullptr, nullptr), SQLITE_OK) << sqlite3_errmsg(other);
  sqlite3_close(other);
  const lorad::v1::Job end = d.WaitFor(id, [](const lorad::v1::Job& j) { return IsTerminal(j.state()); }, 240);
  ASSERT_EQ(end.state(), lorad::v1::JOB_STATE_SUCCEEDED) << end.reason();
  const auto events = d.ReadAllEvents(id);
  ExpectContiguous(events, 1, "the job behind a locked database");
  std::map<int64_t, int> progress;
  for (const auto& e : events) {
    if (e.event().has_progress()) ++progress[e.event().progress().step()];
  }
  for (int step = 1; step <= steps; ++step) EXPECT_EQ(progress[step], 1) << "progress of step " << step;
  const std::string log = [&] {
    std::ifstream in(d.data_dir() / "logs" / "lorad.log");
    return std::string((std::istreambuf_iterator<char>(in)), {});
  }();
  EXPECT_TRUE(absl::StrContains(log, "recorded after all")) << "the lock never made the daemon retry";
  EXPECT_EQ(d.Stop(), 0);
  fs::remove_all(d.data_dir());
}

}  // namespace
}  // namespace lorad::tests
