// Unit tests of the parts of running a job that need no lorad-train: launch
// planning, the pure worker-event -> artifact mapping (and the disk facts it is
// fed), the pure end classifier, and the service's task pool.
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include <gtest/gtest.h>

#include "core/base/exit_codes.h"
#include "server/artifact_events.h"
#include "server/job_outcome.h"
#include "server/launch_plan.h"
#include "server/task_pool.h"
#include "core/base/testing/scoped_temp_dir.h"

namespace lorad::server {
namespace {
namespace fs = std::filesystem;

// ---- launch planning -------------------------------------------------------

TEST(LaunchPlanTest, BuildsTheWorkerCommandLineAndSlotGpu) {
  SchedulerOptions options;
  options.worker_binary = "/opt/lorad/bin/lorad-train";
  options.worker_args = {"--log-level", "debug"};
  const LaunchPlan plain = PlanWorkerLaunch(options, {"1"}, "/data/jobs/7", false, std::nullopt);
  EXPECT_EQ(plain.launch.argv,
            (std::vector<std::string>{"/opt/lorad/bin/lorad-train", "--log-level", "debug", "--config_file",
                                      "/data/jobs/7/config.toml"}));
  EXPECT_EQ(plain.launch.working_dir, "/data/jobs/7");
  ASSERT_EQ(plain.launch.env.size(), 1u);
  EXPECT_EQ(plain.launch.env[0], (std::pair<std::string, std::string>{"CUDA_VISIBLE_DEVICES", "1"}));
  EXPECT_TRUE(plain.resume_note.empty());
  // One rank: as before data parallelism, --events-fd and no torchrun variables.
  const std::vector<WorkerLaunch> one = PlanLocalRanks(plain.launch, 1, 0);
  ASSERT_EQ(one.size(), 1u);
  EXPECT_EQ(one[0].argv.back(), "3");
  EXPECT_EQ(one[0].argv[one[0].argv.size() - 2], "--events-fd");
  EXPECT_EQ(one[0].env, plain.launch.env);

  storage::ArtifactRecord state;
  state.path = "/data/jobs/7/output/state-000200";
  state.name = "state-000200";
  state.step = 200;
  const LaunchPlan resumed = PlanWorkerLaunch(options, {}, "/data/jobs/7", true, state);
  EXPECT_EQ(resumed.launch.argv,
            (std::vector<std::string>{"/opt/lorad/bin/lorad-train", "--log-level", "debug", "--config_file",
                                      "/data/jobs/7/config.toml", "--dataset_config",
                                      "/data/jobs/7/dataset_config.toml", "--resume",
                                      "/data/jobs/7/output/state-000200"}));
  EXPECT_TRUE(resumed.launch.env.empty());  // no GPUs: the environment is left alone
  EXPECT_EQ(resumed.resume_note, ", resuming from step 200 (state-000200)");
}

// ---- worker events -> artifacts ----------------------------------------------

const JobFolder kJob{"/data/jobs/7", "/data/jobs/7/output"};

ArtifactFile InsideFile(const std::string& path, int64_t bytes, bool is_directory = false,
                        const std::string& sha256 = "") {
  return ArtifactFile{path, /*inside_job=*/true, is_directory, bytes, sha256};
}

TEST(ArtifactEventsTest, ReportedPathIsTheCheckpointOrSampleFile) {
  lorad::v1::Event checkpoint;
  checkpoint.mutable_checkpoint()->set_path("/x/a.safetensors");
  EXPECT_EQ(ReportedArtifactPath(checkpoint), fs::path("/x/a.safetensors"));
  lorad::v1::Event sample;
  sample.mutable_sample()->set_path("/x/s.png");
  EXPECT_EQ(ReportedArtifactPath(sample), fs::path("/x/s.png"));
  lorad::v1::Event progress;
  progress.mutable_progress()->set_step(3);
  EXPECT_EQ(ReportedArtifactPath(progress), std::nullopt);
  lorad::v1::Event empty;
  empty.mutable_checkpoint();
  EXPECT_EQ(ReportedArtifactPath(empty), std::nullopt);
}

TEST(ArtifactEventsTest, LoraCheckpointBecomesAnArtifactNamedInsideOutput) {
  lorad::v1::Event event;
  event.set_time_unix_ms(5);
  auto* c = event.mutable_checkpoint();
  c->set_path("/data/jobs/7/output/cat-000100.safetensors");
  c->set_step(100);
  c->set_sha256("feed");
  c->set_is_final(true);
  const MappedEvent mapped = MapWorkerEvent(
      event, InsideFile("/data/jobs/7/output/cat-000100.safetensors", 1234, false, "other"), kJob, 99);
  ASSERT_EQ(mapped.writes.size(), 1u);
  const storage::EventWrite& write = mapped.writes[0];
  EXPECT_EQ(write.event.time_unix_ms(), 5);
  EXPECT_TRUE(write.event.has_checkpoint());
  ASSERT_TRUE(write.artifact.has_value());
  EXPECT_EQ(write.artifact->kind, lorad::v1::ARTIFACT_KIND_LORA);  // unspecified file: a LoRA
  EXPECT_EQ(write.artifact->name, "cat-000100.safetensors");
  EXPECT_EQ(write.artifact->path, "/data/jobs/7/output/cat-000100.safetensors");
  EXPECT_EQ(write.artifact->bytes, 1234);
  EXPECT_EQ(write.artifact->step, 100);
  EXPECT_EQ(write.artifact->sha256, "feed");  // the worker's hash wins
  EXPECT_TRUE(write.artifact->is_final);
  EXPECT_FALSE(write.end.has_value());
  EXPECT_EQ(mapped.lora, "/data/jobs/7/output/cat-000100.safetensors");
  EXPECT_FALSE(mapped.finished.has_value());
}

TEST(ArtifactEventsTest, FolderCheckpointIsStateAndSampleTakesTheComputedHash) {
  lorad::v1::Event state;
  state.mutable_checkpoint()->set_path("/data/jobs/7/output/state-000100");
  const MappedEvent mapped_state =
      MapWorkerEvent(state, InsideFile("/data/jobs/7/output/state-000100", 4096, true), kJob, 0);
  ASSERT_TRUE(mapped_state.writes[0].artifact.has_value());
  EXPECT_EQ(mapped_state.writes[0].artifact->kind, lorad::v1::ARTIFACT_KIND_STATE);
  EXPECT_TRUE(mapped_state.writes[0].artifact->is_directory);
  EXPECT_FALSE(mapped_state.lora.has_value());

  lorad::v1::Event sample;
  sample.mutable_sample()->set_path("/data/jobs/7/output/sample/s-000100.png");
  sample.mutable_sample()->set_step(100);
  const MappedEvent mapped_sample =
      MapWorkerEvent(sample, InsideFile("/data/jobs/7/output/sample/s-000100.png", 10, false, "abc1"), kJob, 0);
  ASSERT_TRUE(mapped_sample.writes[0].artifact.has_value());
  EXPECT_EQ(mapped_sample.writes[0].artifact->kind, lorad::v1::ARTIFACT_KIND_SAMPLE);
  EXPECT_EQ(mapped_sample.writes[0].artifact->name, "sample/s-000100.png");
  EXPECT_EQ(mapped_sample.writes[0].artifact->sha256, "abc1");
  EXPECT_EQ(mapped_sample.writes[0].artifact->step, 100);
}

TEST(ArtifactEventsTest, ExplicitKindWinsAndNamesFallBackToTheJobFolder) {
  lorad::v1::Event event;
  event.mutable_checkpoint()->set_path("/data/jobs/7/extra.safetensors");
  event.mutable_checkpoint()->set_kind(lorad::v1::ARTIFACT_KIND_STATE);
  const MappedEvent mapped = MapWorkerEvent(event, InsideFile("/data/jobs/7/extra.safetensors", 1), kJob, 0);
  ASSERT_TRUE(mapped.writes[0].artifact.has_value());
  EXPECT_EQ(mapped.writes[0].artifact->kind, lorad::v1::ARTIFACT_KIND_STATE);
  EXPECT_EQ(mapped.writes[0].artifact->name, "extra.safetensors");
}

TEST(ArtifactEventsTest, FileOutsideTheJobIsAWarningAndNoArtifact) {
  lorad::v1::Event event;
  event.mutable_checkpoint()->set_path("/etc/passwd");
  const MappedEvent mapped =
      MapWorkerEvent(event, ArtifactFile{"/etc/passwd", /*inside_job=*/false, false, 0, ""}, kJob, 42);
  ASSERT_EQ(mapped.writes.size(), 2u);
  EXPECT_EQ(mapped.writes[0].event.time_unix_ms(), 42);
  EXPECT_EQ(mapped.writes[0].event.log().level(), lorad::v1::Log::WARN);
  EXPECT_EQ(mapped.writes[0].event.log().message(),
            "worker reported /etc/passwd outside /data/jobs/7; not recorded as an artifact");
  EXPECT_TRUE(mapped.writes[1].event.has_checkpoint());  // the event itself is kept
  EXPECT_FALSE(mapped.writes[1].artifact.has_value());
  EXPECT_FALSE(mapped.lora.has_value());
}

TEST(ArtifactEventsTest, ProgressCarriesTheStepAndFinishedIsNotWritten) {
  lorad::v1::Event progress;
  progress.mutable_progress()->set_step(17);
  const MappedEvent mapped = MapWorkerEvent(progress, std::nullopt, kJob, 0);
  ASSERT_EQ(mapped.writes.size(), 1u);
  EXPECT_FALSE(mapped.writes[0].artifact.has_value());
  EXPECT_EQ(mapped.step, 17);

  lorad::v1::Event finished;
  finished.mutable_finished()->set_status(lorad::v1::Finished::SUCCEEDED);
  finished.mutable_finished()->set_final_lora_path("/data/jobs/7/output/cat.safetensors");
  const MappedEvent end = MapWorkerEvent(finished, std::nullopt, kJob, 0);
  EXPECT_TRUE(end.writes.empty());
  ASSERT_TRUE(end.finished.has_value());
  EXPECT_EQ(end.finished->final_lora_path(), "/data/jobs/7/output/cat.safetensors");
}

TEST(ArtifactEventsTest, InspectReadsSizeHashAndConfinement) {
  const lorad::testing::ScopedTempDir tmp("lorad_job_run_test");
  const fs::path& root = tmp.path();
  fs::create_directories(root / "job" / "output" / "state");
  std::ofstream(root / "job" / "output" / "a.safetensors") << "abc";
  std::ofstream(root / "job" / "output" / "state" / "x") << "12345";
  std::ofstream(root / "secret") << "no";
  fs::create_symlink(root / "secret", root / "job" / "output" / "link");
  const JobFolder job = ResolveJobFolder(root / "job");

  const ArtifactFile file = InspectArtifactFile(root / "job" / "output" / "a.safetensors", job, true);
  EXPECT_TRUE(file.inside_job);
  EXPECT_FALSE(file.is_directory);
  EXPECT_EQ(file.bytes, 3);
  EXPECT_EQ(file.sha256, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(InspectArtifactFile(root / "job" / "output" / "a.safetensors", job, false).sha256, "");

  const ArtifactFile folder = InspectArtifactFile(root / "job" / "output" / "state", job, true);
  EXPECT_TRUE(folder.is_directory);
  EXPECT_EQ(folder.bytes, 5);
  EXPECT_EQ(folder.sha256, "");

  const ArtifactFile escaped = InspectArtifactFile(root / "job" / "output" / "link", job, true);
  EXPECT_FALSE(escaped.inside_job);  // the symlink points out of the job folder
  EXPECT_EQ(escaped.path, fs::canonical(root / "secret"));
  EXPECT_EQ(escaped.sha256, "");
  fs::remove_all(root);
}

// ---- the job's end -----------------------------------------------------------

lorad::v1::Finished WorkerFinished(lorad::v1::Finished::Status status, const std::string& reason = "") {
  lorad::v1::Finished finished;
  finished.set_status(status);
  finished.set_reason(reason);
  return finished;
}

TEST(JobOutcomeTest, SucceedsOnlyWithTheWorkersWordACleanExitAndAnIntactStream) {
  WorkerReport report;
  report.exit = ExitInfo{0, 0};
  report.finished = WorkerFinished(lorad::v1::Finished::SUCCEEDED);
  report.last_step = 300;
  report.last_lora = "/j/output/cat.safetensors";
  JobOutcome outcome = ClassifyJobEnd(report, {});
  EXPECT_FALSE(outcome.requeue);
  EXPECT_EQ(outcome.end.state, storage::JobState::kSucceeded);
  EXPECT_EQ(outcome.end.reason, "");
  EXPECT_EQ(outcome.finished.status(), lorad::v1::Finished::SUCCEEDED);
  EXPECT_EQ(outcome.finished.final_step(), 300);
  EXPECT_EQ(outcome.finished.final_lora_path(), "/j/output/cat.safetensors");

  report.finished->set_final_lora_path("/j/output/cat-final.safetensors");  // the worker's own word wins
  EXPECT_EQ(ClassifyJobEnd(report, {}).finished.final_lora_path(), "/j/output/cat-final.safetensors");

  report.stream_error = "bad length prefix";
  outcome = ClassifyJobEnd(report, {});
  EXPECT_EQ(outcome.end.state, storage::JobState::kFailed);
  EXPECT_EQ(outcome.end.reason, "corrupt event stream: bad length prefix; lorad-train exit status 0");
}

TEST(JobOutcomeTest, FailureReasonsNameTheTrainerExitCode) {
  WorkerReport diverged;
  diverged.exit = ExitInfo{kExitDiverged, 0};
  diverged.finished = WorkerFinished(lorad::v1::Finished::FAILED, "loss became NaN at step 12");
  JobOutcome outcome = ClassifyJobEnd(diverged, {});
  EXPECT_EQ(outcome.end.state, storage::JobState::kFailed);
  EXPECT_EQ(outcome.end.exit_code, kExitDiverged);
  EXPECT_EQ(outcome.end.reason, "loss became NaN at step 12; lorad-train exit status 8: diverged (NaN/inf)");
  EXPECT_EQ(outcome.finished.status(), lorad::v1::Finished::FAILED);
  EXPECT_EQ(outcome.finished.reason(), outcome.end.reason);

  WorkerReport oom;
  oom.exit = ExitInfo{kExitOutOfMemory, 0};
  oom.stderr_tail = "CUDA out of memory\nbatch size 4 at 1024x1024";
  EXPECT_EQ(ClassifyJobEnd(oom, {}).end.reason,
            "lorad-train exit status 9: out of memory; last stderr lines:\n"
            "CUDA out of memory\nbatch size 4 at 1024x1024");

  WorkerReport killed;
  killed.exit = ExitInfo{-1, 9};
  outcome = ClassifyJobEnd(killed, {});
  EXPECT_EQ(outcome.end.reason, "lorad-train killed by signal 9 (SIGKILL)");
  EXPECT_EQ(outcome.end.term_signal, 9);
  EXPECT_EQ(outcome.end.exit_code, -1);

  WorkerReport silent;  // exit 0 but no Finished event
  EXPECT_EQ(ClassifyJobEnd(silent, {}).end.reason,
            "lorad-train exit status 0; it exited without reporting the end of training");
}

TEST(JobOutcomeTest, EachTrainerExitCodeHasAMeaning) {
  EXPECT_EQ(TrainerExitMeaning(kExitUsage), "bad command line or config value");
  EXPECT_EQ(TrainerExitMeaning(kExitWriteFailed), "it could not write its output (disk full or I/O error)");
  EXPECT_NE(TrainerExitMeaning(kExitNotFound).find("missing"), std::string::npos);
  EXPECT_EQ(TrainerExitMeaning(kExitDiverged), "diverged (NaN/inf)");
  EXPECT_EQ(TrainerExitMeaning(kExitOutOfMemory), "out of memory");
  EXPECT_EQ(TrainerExitMeaning(kExitCancelled), "cancelled (SIGTERM/SIGINT)");
  EXPECT_NE(TrainerExitMeaning(kExitEventsBroken).find("events pipe"), std::string::npos);
  EXPECT_EQ(TrainerExitMeaning(kExitOk), "");
  EXPECT_EQ(TrainerExitMeaning(kExitError), "");
  EXPECT_EQ(TrainerExitMeaning(kExitUnreachable), "");  // a loractl code, never lorad-train's
  EXPECT_EQ(DescribeTrainerExit(ExitInfo{kExitUsage, 0}), "exit status 2: bad command line or config value");
  EXPECT_EQ(DescribeTrainerExit(ExitInfo{-1, 15}), "killed by signal 15 (SIGTERM)");
}

TEST(JobOutcomeTest, CancelWinsOverAnyExit) {
  WorkerReport report;
  report.exit = ExitInfo{kExitCancelled, 0};
  report.finished = WorkerFinished(lorad::v1::Finished::CANCELLED, "stopped by signal");
  report.last_lora = "/j/output/cat-000050.safetensors";
  EndRequest request;
  request.cancel_requested = true;
  request.cancel_reason = "cancelled by alice";
  JobOutcome outcome = ClassifyJobEnd(report, request);
  EXPECT_EQ(outcome.end.state, storage::JobState::kCancelled);
  EXPECT_EQ(outcome.end.reason, "cancelled by alice (worker exit status 11)");
  EXPECT_EQ(outcome.finished.status(), lorad::v1::Finished::CANCELLED);
  EXPECT_EQ(outcome.finished.final_lora_path(), "/j/output/cat-000050.safetensors");  // kept on cancel

  report.exit = ExitInfo{0, 0};
  report.finished = WorkerFinished(lorad::v1::Finished::SUCCEEDED);
  request.cancel_reason.clear();
  outcome = ClassifyJobEnd(report, request);
  EXPECT_EQ(outcome.end.state, storage::JobState::kCancelled);
  EXPECT_EQ(outcome.end.reason, "cancelled (worker exit status 0)");

  request.daemon_stopping = true;  // a cancel during shutdown still cancels
  EXPECT_EQ(ClassifyJobEnd(report, request).end.state, storage::JobState::kCancelled);
}

TEST(JobOutcomeTest, DaemonStopRequeues) {
  WorkerReport report;
  report.exit = ExitInfo{kExitCancelled, 0};
  EndRequest request;
  request.daemon_stopping = true;
  const JobOutcome outcome = ClassifyJobEnd(report, request);
  EXPECT_TRUE(outcome.requeue);
  EXPECT_EQ(outcome.requeue_reason,
            "lorad stopping; worker exit status 11; job re-queued to resume from its last saved state");
}

// ---- the service's task pool ------------------------------------------------

TEST(TaskPoolTest, RunsTasksAndRefusesBeyondItsBound) {
  TaskPool pool("curation reports", 1, 1);
  std::atomic<bool> started{false};
  std::atomic<bool> release{false};
  std::atomic<int> ran{0};
  ASSERT_TRUE(pool.Submit([&](const std::atomic<bool>&) {
                    started = true;
                    while (!release) std::this_thread::sleep_for(std::chrono::milliseconds(5));
                    ++ran;
                  }).ok());
  while (!started) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  ASSERT_TRUE(pool.Submit([&](const std::atomic<bool>&) { ++ran; }).ok());  // waits in the queue
  const absl::Status third = pool.Submit([&](const std::atomic<bool>&) { ++ran; });
  EXPECT_EQ(third.code(), absl::StatusCode::kResourceExhausted) << third;
  EXPECT_EQ(third.message(),
            "1 curation reports are running and 1 are waiting (the most lorad takes at once); "
            "try again when one has finished");
  release = true;
  pool.Shutdown();
  EXPECT_EQ(ran, 2);  // the refused task never ran
}

TEST(TaskPoolTest, ShutdownStopsRunningTasksRunsQueuedOnesAndJoins) {
  TaskPool pool("curation reports", 1, 4);
  std::atomic<bool> started{false};
  std::atomic<bool> saw_stop{false};
  std::atomic<bool> queued_saw_stop{false};
  ASSERT_TRUE(pool.Submit([&](const std::atomic<bool>& stopping) {
                    started = true;
                    while (!stopping) std::this_thread::sleep_for(std::chrono::milliseconds(5));
                    saw_stop = true;
                  }).ok());
  ASSERT_TRUE(pool.Submit([&](const std::atomic<bool>& stopping) { queued_saw_stop = stopping.load(); }).ok());
  while (!started) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  pool.Shutdown();  // returns only once both tasks are done
  EXPECT_TRUE(saw_stop);
  EXPECT_TRUE(queued_saw_stop);  // still run (its caller gets an answer), told to stop
  EXPECT_EQ(pool.Submit([](const std::atomic<bool>&) {}).code(), absl::StatusCode::kUnavailable);
  pool.Shutdown();  // idempotent
}

}  // namespace
}  // namespace lorad::server
