// Unit tests of the executors (issue 15): the GPU dispatch policy, the local
// ranks' launch and supervision (real child processes: shell scripts standing
// in for lorad-train), the Slurm scripts and Slurm's answers, and how a job's
// GPUs are read from its TOML.
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <fstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/base/testing/scoped_temp_dir.h"
#include "server/job_config.h"
#include "server/job_outcome.h"
#include "server/launch_plan.h"
#include "server/local_executor.h"
#include "server/scheduler.h"
#include "server/slurm_executor.h"
#include "server/worker_session.h"

namespace lorad::server {
namespace {
namespace fs = std::filesystem;
using lorad::testing::ScopedTempDir;

// ---- the dispatch policy ------------------------------------------------------

TEST(PlanDispatchTest, ABlockedHeadHoldsTheSlotsWhenReserving) {
  // 1-GPU job, 2-GPU job, 1-GPU job on two free slots.
  const std::vector<QueuedJob> queue = {{1, 1}, {2, 2}, {3, 1}};
  DispatchPlan strict = PlanDispatch(queue, 2, 2, [](int64_t) { return true; });
  EXPECT_EQ(strict.start, (std::vector<int64_t>{1}));
  EXPECT_EQ(strict.blocked, 2);
  EXPECT_TRUE(strict.too_big.empty());

  // Within the backfill window the small job behind passes the blocked head.
  DispatchPlan backfill = PlanDispatch(queue, 2, 2, [](int64_t) { return false; });
  EXPECT_EQ(backfill.start, (std::vector<int64_t>{1, 3}));
  EXPECT_EQ(backfill.blocked, 2);

  // Once both slots are free the 2-GPU head starts, before the job behind it.
  DispatchPlan head = PlanDispatch({{2, 2}, {3, 1}}, 2, 2, [](int64_t) { return true; });
  EXPECT_EQ(head.start, (std::vector<int64_t>{2}));
  EXPECT_EQ(head.blocked, 3);
}

TEST(PlanDispatchTest, AJobLargerThanTheBoxIsRefusedNotWaitedFor) {
  int asked = 0;
  DispatchPlan plan = PlanDispatch({{1, 4}, {2, 2}, {3, 3}}, 1, 2, [&](int64_t) {
    ++asked;
    return true;
  });
  EXPECT_EQ(plan.too_big, (std::vector<int64_t>{1, 3}));  // also behind a reserving head
  EXPECT_TRUE(plan.start.empty());
  EXPECT_EQ(plan.blocked, 2);
  EXPECT_EQ(asked, 1);
}

TEST(PlanDispatchTest, EverythingThatFitsStartsInOrder) {
  DispatchPlan plan = PlanDispatch({{5, 1}, {6, 1}, {7, 1}}, 2, 4, [](int64_t) { return true; });
  EXPECT_EQ(plan.start, (std::vector<int64_t>{5, 6}));
  EXPECT_EQ(plan.blocked, 7);
  EXPECT_EQ(PlanDispatch({}, 2, 2, [](int64_t) { return true; }).blocked, 0);
}

// ---- a job's GPUs -------------------------------------------------------------

TEST(JobGpusTest, GpusKeyElseNumProcessesElseOne) {
  EXPECT_EQ(*JobGpus("learning_rate = 1e-4\n"), 1);
  EXPECT_EQ(*JobGpus("gpus = 2\n"), 2);
  EXPECT_EQ(*JobGpus("num_processes = 3\n"), 3);
  EXPECT_EQ(*JobGpus("[training]\ngpus = 4\n"), 4);  // one section deep, as kohya flattens
  EXPECT_EQ(*JobGpus("gpus = 2\nnum_processes = 2\n"), 2);
  auto mismatch = JobGpus("gpus = 2\nnum_processes = 4\n");
  ASSERT_FALSE(mismatch.ok());
  EXPECT_TRUE(absl::StrContains(mismatch.status().message(), "gpus = 2 but num_processes = 4"));
  for (const char* bad : {"gpus = 0\n", "gpus = \"two\"\n", "gpus = 1.5\n", "gpus = 99999\n"}) {
    auto parsed = JobGpus(bad);
    ASSERT_FALSE(parsed.ok()) << bad;
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_TRUE(absl::StrContains(parsed.status().message(), "gpus must be a whole number")) << bad;
  }
}

// ---- local ranks --------------------------------------------------------------

TEST(LocalRanksTest, RankZeroAloneReportsAndEveryRankGetsTheRendezvous) {
  WorkerLaunch base;
  base.argv = {"/bin/lorad-train", "--config_file", "/j/config.toml"};
  base.env = {{"CUDA_VISIBLE_DEVICES", "0,1"}};
  const std::vector<WorkerLaunch> ranks = PlanLocalRanks(base, 2, 29511);
  ASSERT_EQ(ranks.size(), 2u);
  EXPECT_EQ(ranks[0].argv, (std::vector<std::string>{"/bin/lorad-train", "--config_file", "/j/config.toml",
                                                     "--events-fd", "3"}));
  EXPECT_EQ(ranks[1].argv, base.argv);
  for (int r = 0; r < 2; ++r) {
    std::map<std::string, std::string> env(ranks[r].env.begin(), ranks[r].env.end());
    EXPECT_EQ(env["CUDA_VISIBLE_DEVICES"], "0,1");  // each rank takes cuda:LOCAL_RANK of the job's GPUs
    EXPECT_EQ(env["WORLD_SIZE"], "2");
    EXPECT_EQ(env["RANK"], std::to_string(r));
    EXPECT_EQ(env["LOCAL_RANK"], std::to_string(r));
    EXPECT_EQ(env["MASTER_ADDR"], "127.0.0.1");
    EXPECT_EQ(env["MASTER_PORT"], "29511");
  }
}

// Shell scripts stand in for lorad-train: what matters here is the
// supervision of several real processes.
AttemptSpec ShellAttempt(const fs::path& dir, const std::string& script, int world_size) {
  AttemptSpec spec;
  spec.job_id = 1;
  spec.attempt = 1;
  spec.job_dir = dir;
  spec.world_size = world_size;
  spec.base.argv = {"/bin/sh", "-c", script, "sh"};
  spec.base.working_dir = dir.string();
  return spec;
}

WorkerSessionOptions SessionIn(const fs::path& dir, double grace_s) {
  WorkerSessionOptions options;
  options.job = ResolveJobFolder(dir);
  options.log_path = dir / "worker.log";
  options.grace_s = grace_s;
  options.cancel_requested = [] { return false; };
  options.daemon_stopping = [] { return false; };
  options.commit = [](const std::vector<storage::EventWrite>&) {};
  return options;
}

TEST(LocalExecutorTest, ARankThatDiesEndsTheOthersWithinTheGraceAndIsNamed) {
  ScopedTempDir dir("lorad_ranks");
  LocalExecutor executor;
  // Rank 1 fails as soon as rank 0 is up (its trap set and its environment
  // written: without that wait a fast supervisor could stop rank 0 before it
  // started); rank 0 would wait a minute for it in a collective.
  const std::string script =
      "trap 'exit 5' TERM\n"
      "echo \"$WORLD_SIZE $RANK $LOCAL_RANK $MASTER_ADDR $MASTER_PORT\" > rank$RANK.env\n"
      "if [ \"$RANK\" = 1 ]; then\n"
      "  while [ ! -e rank0.ready ]; do sleep 0.01; done\n"
      "  echo 'rank 1: out of memory' >&2; exit 9\n"
      "fi\n"
      "touch rank0.ready\nsleep 60 & wait\n";
  auto run = executor.Launch(ShellAttempt(dir.path(), script, 2));
  ASSERT_TRUE(run.ok()) << run.status();
  EXPECT_TRUE(absl::StrContains((*run)->Describe(), "2 ranks, rendezvous 127.0.0.1:")) << (*run)->Describe();
  const auto started = std::chrono::steady_clock::now();
  const WorkerReport report = (*run)->Supervise(SessionIn(dir.path(), 5));
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  EXPECT_LT(seconds, 5.0);  // SIGTERM at once (trapped: exit 5), not the grace's SIGKILL
  EXPECT_EQ(report.exit.exit_code, 5);
  EXPECT_TRUE(absl::StartsWith(report.first_failure, "rank 1 of 2 failed first: lorad-train exit status 9"))
      << report.first_failure;
  EXPECT_TRUE(absl::StrContains(report.first_failure, "rank 1: out of memory")) << report.first_failure;
  std::ifstream env0(dir.path() / "rank0.env"), env1(dir.path() / "rank1.env");
  std::string world, rank, local, addr, port0, port1;
  env0 >> world >> rank >> local >> addr >> port0;
  EXPECT_EQ(world + rank + local + addr, "200127.0.0.1");
  env1 >> world >> rank >> local >> addr >> port1;
  EXPECT_EQ(world + rank + local, "211");
  EXPECT_EQ(port0, port1);
  EXPECT_GT(std::stoi(port0), 0);
  // Each rank's stderr has its own log.
  std::ifstream log1(dir.path() / "worker.rank1.log");
  std::string line;
  std::getline(log1, line);
  EXPECT_EQ(line, "rank 1: out of memory");

  const JobOutcome outcome = ClassifyJobEnd(report, {});
  EXPECT_EQ(outcome.end.state, storage::JobState::kFailed);
  EXPECT_TRUE(absl::StartsWith(outcome.end.reason, "rank 1 of 2 failed first")) << outcome.end.reason;
}

TEST(LocalExecutorTest, CancelStopsEveryRankAndAStubbornOneIsKilledAfterTheGrace) {
  ScopedTempDir dir("lorad_ranks");
  LocalExecutor executor;
  // Rank 1 ignores SIGTERM: only the grace period's SIGKILL ends it.
  const std::string script =
      "if [ \"$RANK\" = 1 ]; then trap '' TERM; else trap 'exit 5' TERM; fi\n"
      "i=0; while [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done\n";
  auto run = executor.Launch(ShellAttempt(dir.path(), script, 2));
  ASSERT_TRUE(run.ok()) << run.status();
  WorkerSessionOptions session = SessionIn(dir.path(), 1.0);
  const auto started = std::chrono::steady_clock::now();
  session.cancel_requested = [&] { return std::chrono::steady_clock::now() - started > std::chrono::milliseconds(300); };
  const WorkerReport report = (*run)->Supervise(session);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  EXPECT_GE(seconds, 1.2);  // the stubborn rank held on for the grace period...
  EXPECT_LT(seconds, 5.0);  // ...and no longer
  EXPECT_EQ(report.exit.exit_code, 5);
  EXPECT_TRUE(report.first_failure.empty()) << report.first_failure;  // a stop, not a rank's failure
}

TEST(LocalExecutorTest, OneRankIsAPlainWorker) {
  ScopedTempDir dir("lorad_ranks");
  LocalExecutor executor;
  auto run = executor.Launch(ShellAttempt(dir.path(), "echo \"[${WORLD_SIZE:-unset}] $1 $2\" > args\n", 1));
  ASSERT_TRUE(run.ok()) << run.status();
  EXPECT_TRUE(absl::StartsWith((*run)->Describe(), "pid ")) << (*run)->Describe();
  const WorkerReport report = (*run)->Supervise(SessionIn(dir.path(), 1));
  EXPECT_EQ(report.exit.exit_code, 0);
  std::ifstream args(dir.path() / "args");
  std::string line;
  std::getline(args, line);
  EXPECT_EQ(line, "[unset] --events-fd 3");
}

// ---- Slurm --------------------------------------------------------------------

AttemptSpec SlurmAttempt(int gpus) {
  AttemptSpec spec;
  spec.job_id = 12;
  spec.attempt = 3;
  spec.job_dir = "/data/jobs/12";
  spec.world_size = gpus;
  spec.base.argv = {"/opt/lorad/bin/lorad-train", "--config_file", "/data/jobs/12/config.toml", "--output_name",
                    "it's"};
  spec.base.working_dir = "/data/jobs/12";
  return spec;
}

TEST(SlurmScriptsTest, BatchScriptAsksForTheGpusAndSrunStartsTheRanks) {
  SlurmOptions options;
  options.partition = "a100";
  options.account = "lab";
  options.time_limit = "12:00:00";
  options.sbatch_args = {"--qos=high"};
  const SlurmScripts scripts = RenderSlurmScripts(options, SlurmAttempt(2));
  for (const char* line : {"#SBATCH --nodes=1\n", "#SBATCH --ntasks=2\n", "#SBATCH --gres=gpu:2\n",
                           "#SBATCH --partition=a100\n", "#SBATCH --account=lab\n", "#SBATCH --time=12:00:00\n",
                           "#SBATCH --no-requeue\n", "#SBATCH --qos=high\n",
                           "show hostnames \"$SLURM_JOB_NODELIST\" | head -n 1",
                           "export MASTER_PORT=\"$((20000 + SLURM_JOB_ID % 20000))\"",
                           "exec 'srun' --kill-on-bad-exit=1 --label /bin/bash '/data/jobs/12/slurm/attempt-3.rank.sh'"}) {
    EXPECT_TRUE(absl::StrContains(scripts.sbatch, line)) << line << "\n" << scripts.sbatch;
  }
  EXPECT_FALSE(absl::StrContains(scripts.sbatch, "--ntasks-per-node"));
  for (const char* line :
       {"export WORLD_SIZE=\"$SLURM_NTASKS\" RANK=\"$SLURM_PROCID\" LOCAL_RANK=\"$SLURM_LOCALID\"",
        "export LOCAL_WORLD_SIZE=\"${SLURM_STEP_TASKS_PER_NODE%%[(,]*}\"",
        "if [ \"${SLURM_PROCID:-0}\" = 0 ]; then\n  exec '/opt/lorad/bin/lorad-train' '--config_file' "
        "'/data/jobs/12/config.toml' '--output_name' 'it'\\''s' --events-file '/data/jobs/12/slurm/attempt-3.events'\nfi\n"
        "exec '/opt/lorad/bin/lorad-train' '--config_file' '/data/jobs/12/config.toml' '--output_name' 'it'\\''s'\n"}) {
    EXPECT_TRUE(absl::StrContains(scripts.rank, line)) << line << "\n" << scripts.rank;
  }
}

TEST(SlurmScriptsTest, ManyGpusSpanNodesAndAnEmptyGresAsksNone) {
  SlurmOptions options;
  options.gpus_per_node = 4;
  options.gres = "gpu:h100:{gpus}";
  SlurmScripts scripts = RenderSlurmScripts(options, SlurmAttempt(8));
  EXPECT_TRUE(absl::StrContains(scripts.sbatch, "#SBATCH --nodes=2\n#SBATCH --ntasks=8\n#SBATCH --ntasks-per-node=4\n"
                                                "#SBATCH --gres=gpu:h100:4\n"))
      << scripts.sbatch;
  options.gres.clear();
  scripts = RenderSlurmScripts(options, SlurmAttempt(1));
  EXPECT_FALSE(absl::StrContains(scripts.sbatch, "--gres")) << scripts.sbatch;
  EXPECT_FALSE(absl::StrContains(scripts.sbatch, "--partition")) << scripts.sbatch;
}

TEST(SlurmStateTest, ScontrolAndSacctAnswers) {
  const SlurmJobState running = ParseScontrolJob(
      "JobId=57 JobName=lorad-ab12cd-12-a3 UserId=root(0) GroupId=root(0) Priority=1 JobState=RUNNING "
      "Reason=None Dependency=(null) Requeue=0 Restarts=0 BatchFlag=1 ExitCode=0:0 RunTime=00:00:05\n");
  EXPECT_TRUE(running.known);
  EXPECT_EQ(running.state, "RUNNING");
  EXPECT_FALSE(running.terminal());
  EXPECT_TRUE(running.reason.empty());

  const SlurmJobState failed = ParseScontrolJob("JobId=58 JobState=FAILED Reason=NonZeroExitCode ExitCode=8:0\n");
  EXPECT_TRUE(failed.terminal());
  EXPECT_EQ(failed.exit_code, 8);
  EXPECT_EQ(failed.reason, "NonZeroExitCode");
  const SlurmJobState signalled = ParseScontrolJob("JobId=59 JobState=CANCELLED Reason=None ExitCode=0:15\n");
  EXPECT_EQ(signalled.exit_code, -1);
  EXPECT_EQ(signalled.term_signal, 15);
  EXPECT_FALSE(ParseScontrolJob("").known);

  const SlurmJobState acct = ParseSacctJob("CANCELLED by 1000|0:15\n");
  EXPECT_TRUE(acct.terminal());
  EXPECT_EQ(acct.state, "CANCELLED");
  EXPECT_EQ(acct.term_signal, 15);
  EXPECT_FALSE(ParseSacctJob("").known);
}

TEST(SlurmStateTest, TheEndSlurmReportsDecidesTheJobsEnd) {
  auto end = [](const std::string& state, bool lorad_cancelled, int code = 0, int sig = 0) {
    SlurmJobState s;
    s.known = true;
    s.state = state;
    s.exit_code = code;
    s.term_signal = sig;
    WorkerReport report;
    ApplySlurmEnd(s, "57", lorad_cancelled, &report);
    return report;
  };
  WorkerReport outside = end("CANCELLED", false, -1, 15);
  EXPECT_EQ(outside.exit.term_signal, 15);
  EXPECT_TRUE(absl::StartsWith(outside.external_cancel, "cancelled outside lorad: Slurm job 57 is CANCELLED"));
  JobOutcome outcome = ClassifyJobEnd(outside, {});
  EXPECT_EQ(outcome.end.state, storage::JobState::kCancelled);
  EXPECT_EQ(outcome.end.reason, outside.external_cancel);
  EXPECT_EQ(outcome.finished.status(), lorad::v1::Finished::CANCELLED);

  EXPECT_TRUE(end("CANCELLED", true).external_cancel.empty());  // lorad's own scancel

  WorkerReport node = end("NODE_FAIL", false);
  EXPECT_EQ(node.lost_reason, "Slurm job 57 ended NODE_FAIL (a node of the job failed)");
  outcome = ClassifyJobEnd(node, {});
  EXPECT_TRUE(outcome.requeue);
  EXPECT_TRUE(absl::StrContains(outcome.requeue_reason, "re-queued to resume from its last saved state"));
  // A cancel asked through lorad still wins over a node failure.
  EndRequest cancel;
  cancel.cancel_requested = true;
  EXPECT_EQ(ClassifyJobEnd(node, cancel).end.state, storage::JobState::kCancelled);

  WorkerReport timeout = end("TIMEOUT", false, -1, 9);
  outcome = ClassifyJobEnd(timeout, {});
  EXPECT_EQ(outcome.end.state, storage::JobState::kFailed);
  EXPECT_TRUE(absl::StartsWith(outcome.end.reason, "Slurm ended job 57 at its time limit (TIMEOUT"))
      << outcome.end.reason;

  WorkerReport failed = end("FAILED", false, 8);
  EXPECT_TRUE(failed.first_failure.empty());
  EXPECT_TRUE(absl::StrContains(ClassifyJobEnd(failed, {}).end.reason, "lorad-train exit status 8: diverged"));
}

}  // namespace
}  // namespace lorad::server
