// The daemon on a multi-GPU box (issue 15): `gpus = N` jobs and 1-GPU jobs
// share one queue. A fake 2-GPU topology: two slots with made-up GPU ids
// (--gpus 0,1), the real lorad-train ranks on CPU standing in (device = cpu).
// The start order is asserted from the jobs' recorded start and end times
// against the policy stated in server/scheduler.h.
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <regex>

#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "tests/daemon_harness.h"

namespace lorad::tests {
namespace {
namespace fs = std::filesystem;
using lorad::v1::Job;

std::string ReadFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

fs::path TestRoot(const std::string& name) {
  return fs::temp_directory_path() / absl::StrCat("lorad_mgpu_", getpid(), "_", name);
}

Job WaitEnd(Daemon& d, int64_t id) {
  return d.WaitFor(id, [](const Job& j) { return IsTerminal(j.state()); }, 600);
}

// The "attempt N started ..." log line the scheduler records for a job (read
// without following: the job may still run).
std::string StartedLine(Daemon& d, int64_t id) {
  auto ctx = d.client().Context(true);
  lorad::v1::StreamEventsRequest request;
  request.set_job_id(id);
  request.set_no_follow(true);
  auto reader = d.client().stub()->StreamEvents(ctx.get(), request);
  std::vector<lorad::v1::JobEvent> events;
  lorad::v1::JobEvent event;
  while (reader->Read(&event)) events.push_back(event);
  EXPECT_TRUE(reader->Finish().ok());
  for (const auto& e : events) {
    if (e.event().has_log() && absl::StrContains(e.event().log().message(), " started")) {
      return e.event().log().message();
    }
  }
  return "";
}

// The pids a "... (pids 1, 2; 2 ranks, ...)" line names.
std::vector<pid_t> RankPids(const std::string& started) {
  std::vector<pid_t> pids;
  std::smatch match;
  if (!std::regex_search(started, match, std::regex("\\(pids ([0-9, ]+);"))) return pids;
  for (absl::string_view part : absl::StrSplit(match[1].str(), ", ", absl::SkipEmpty())) {
    int pid = 0;
    if (absl::SimpleAtoi(part, &pid)) pids.push_back(pid);
  }
  return pids;
}

class MultiGpuDaemonTest : public ::testing::Test {
 protected:
  void StartDaemon(double backfill_s) {
    daemon_ = std::make_unique<Daemon>(
        TestRoot(absl::StrCat("backfill", backfill_s)),
        DaemonOptions{2, 5, "test-token", {"--gpus", "0,1", "--backfill-s", absl::StrCat(backfill_s)}});
    daemon_->Start();
    dataset_ = daemon_->UploadTestDataset(3);
  }
  void TearDown() override {
    if (daemon_) {
      EXPECT_EQ(daemon_->Stop(), 0);
      fs::remove_all(daemon_->data_dir());
    }
  }
  // Three jobs: a longer 1-GPU job, a 2-GPU job, a 1-GPU job, queued in that order.
  std::vector<int64_t> SubmitMix() {
    Daemon& d = *daemon_;
    return {d.Submit(Daemon::TinyConfig(10, 0), dataset_, "one-gpu-first"),
            d.Submit(Daemon::TinyConfig(4, 0, "gpus = 2\n"), dataset_, "two-gpus"),
            d.Submit(Daemon::TinyConfig(4, 0), dataset_, "one-gpu-behind")};
  }
  std::unique_ptr<Daemon> daemon_;
  std::string dataset_;
};

TEST_F(MultiGpuDaemonTest, StrictOrderTheTwoGpuJobHoldsTheSlotsAndNothingPassesIt) {
  StartDaemon(0);
  Daemon& d = *daemon_;
  const std::vector<int64_t> ids = SubmitMix();
  std::vector<Job> jobs;
  for (int64_t id : ids) jobs.push_back(WaitEnd(d, id));  // no deadlock: all end
  for (const Job& job : jobs) {
    ASSERT_EQ(job.state(), lorad::v1::JOB_STATE_SUCCEEDED) << job.name() << ": " << job.reason();
    EXPECT_EQ(job.attempts(), 1) << job.name();
  }
  const Job& first = jobs[0];
  const Job& two = jobs[1];
  const Job& behind = jobs[2];
  // The 2-GPU job waited for both slots, and the 1-GPU job behind it did not
  // take the one free slot meanwhile.
  EXPECT_GE(two.started_unix_ms(), first.finished_unix_ms());
  EXPECT_GE(behind.started_unix_ms(), two.finished_unix_ms());
  EXPECT_EQ(two.step(), 4);

  const std::string started = StartedLine(d, two.id());
  EXPECT_TRUE(absl::StrContains(started, "on slots 0,1 with CUDA_VISIBLE_DEVICES=0,1, 2 GPUs (pids ")) << started;
  EXPECT_TRUE(absl::StrContains(started, "; 2 ranks, rendezvous 127.0.0.1:")) << started;
  EXPECT_EQ(RankPids(started).size(), 2u) << started;
  // Each rank logged on its own; rank 0 alone reported (the events are rank 0's).
  const fs::path job_dir = d.data_dir() / "jobs" / std::to_string(two.id());
  // The ranks met at the rendezvous the daemon gave them (data-parallel lorad-train).
  std::smatch port;
  ASSERT_TRUE(std::regex_search(started, port, std::regex("rendezvous (127\\.0\\.0\\.1:[0-9]+)")));
  for (int rank = 0; rank < 2; ++rank) {
    const std::string log = ReadFile(job_dir / (rank == 0 ? "worker.log" : "worker.rank1.log"));
    EXPECT_TRUE(absl::StrContains(log, absl::StrCat("data-parallel rank ", rank, " of 2 (local rank ", rank,
                                                    " of 2), rendezvous at ", port[1].str())))
        << "rank " << rank << " log:\n" << log;
  }
  const auto events = d.ReadAllEvents(two.id());
  ExpectContiguous(events, 1, "2-GPU job");
  int progress = 0;
  for (const auto& e : events) progress += e.event().has_progress() ? 1 : 0;
  EXPECT_EQ(progress, 4);  // not 8: rank 1 sent nothing
}

TEST_F(MultiGpuDaemonTest, WithinTheBackfillWindowASmallJobPassesTheWaitingBigOne) {
  StartDaemon(3600);
  Daemon& d = *daemon_;
  const std::vector<int64_t> ids = SubmitMix();
  std::vector<Job> jobs;
  for (int64_t id : ids) jobs.push_back(WaitEnd(d, id));
  for (const Job& job : jobs) {
    ASSERT_EQ(job.state(), lorad::v1::JOB_STATE_SUCCEEDED) << job.name() << ": " << job.reason();
  }
  // The last 1-GPU job took the free slot while the 2-GPU job waited; the
  // 2-GPU job started once both 1-GPU jobs had freed theirs.
  EXPECT_LT(jobs[2].started_unix_ms(), jobs[1].started_unix_ms());
  EXPECT_LT(jobs[2].started_unix_ms(), jobs[0].finished_unix_ms());
  EXPECT_GE(jobs[1].started_unix_ms(), std::max(jobs[0].finished_unix_ms(), jobs[2].finished_unix_ms()));
}

TEST_F(MultiGpuDaemonTest, CancelStopsEveryRankAndATooBigJobIsRefused) {
  StartDaemon(0);
  Daemon& d = *daemon_;
  const int64_t too_big = d.Submit(Daemon::TinyConfig(4, 0, "gpus = 3\n"), dataset_, "three-gpus");
  const Job refused = WaitEnd(d, too_big);
  EXPECT_EQ(refused.state(), lorad::v1::JOB_STATE_FAILED);
  EXPECT_TRUE(absl::StrContains(refused.reason(), "asks for gpus = 3 but this lorad has 2 GPU slot(s)"))
      << refused.reason();

  const int64_t id = d.Submit(Daemon::TinyConfig(100000, 0, "gpus = 2\n"), dataset_, "long-two-gpus");
  d.ReadEventsUntil(id, [](const lorad::v1::Event& e) { return e.has_progress(); });
  const std::vector<pid_t> pids = RankPids(StartedLine(d, id));
  ASSERT_EQ(pids.size(), 2u);
  for (pid_t pid : pids) EXPECT_EQ(::kill(pid, 0), 0) << "rank pid " << pid << " should run";
  lorad::v1::CancelJobRequest cancel;
  cancel.set_job_id(id);
  cancel.set_reason("test cancel");
  Job job;
  auto ctx = d.client().Context();
  ASSERT_TRUE(d.client().stub()->CancelJob(ctx.get(), cancel, &job).ok());
  job = WaitEnd(d, id);
  EXPECT_EQ(job.state(), lorad::v1::JOB_STATE_CANCELLED) << job.reason();
  EXPECT_TRUE(absl::StartsWith(job.reason(), "test cancel")) << job.reason();
  // Both ranks are gone (reaped), not only rank 0.
  for (pid_t pid : pids) {
    EXPECT_EQ(::kill(pid, 0), -1) << "rank pid " << pid << " survived the cancel";
    EXPECT_EQ(errno, ESRCH);
  }
  // The slots are free again: a 2-GPU job runs.
  const int64_t next = d.Submit(Daemon::TinyConfig(2, 0, "gpus = 2\n"), dataset_, "after-cancel");
  EXPECT_EQ(WaitEnd(d, next).state(), lorad::v1::JOB_STATE_SUCCEEDED);
}

TEST_F(MultiGpuDaemonTest, ARankKilledFailsTheJobNamingItAndStopsTheOtherRank) {
  StartDaemon(0);
  Daemon& d = *daemon_;
  const int64_t id = d.Submit(Daemon::TinyConfig(100000, 0, "gpus = 2\n"), dataset_, "loses-a-rank");
  d.ReadEventsUntil(id, [](const lorad::v1::Event& e) { return e.has_progress(); });
  const std::vector<pid_t> pids = RankPids(StartedLine(d, id));
  ASSERT_EQ(pids.size(), 2u);
  const auto killed_at = std::chrono::steady_clock::now();
  ASSERT_EQ(::kill(pids[1], SIGKILL), 0);
  const Job job = WaitEnd(d, id);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - killed_at).count();
  EXPECT_EQ(job.state(), lorad::v1::JOB_STATE_FAILED);
  EXPECT_TRUE(absl::StartsWith(job.reason(), "rank 1 of 2 failed first: lorad-train killed by signal 9 (SIGKILL)"))
      << job.reason();
  EXPECT_LT(seconds, 5 + 10.0);  // rank 0 stopped within the grace period (5 s), not at its collective timeout
  EXPECT_EQ(::kill(pids[0], 0), -1) << "rank 0 survived its peer";
}

}  // namespace
}  // namespace lorad::tests
