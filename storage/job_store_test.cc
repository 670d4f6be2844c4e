#include "storage/job_store.h"
#include "core/base/testing/fake_clock.h"
#include "core/base/testing/scoped_temp_dir.h"

#include <atomic>
#include <filesystem>

#include <gtest/gtest.h>

namespace lorad::storage {
namespace {

namespace fs = std::filesystem;

class JobStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto store = JobStore::Open((dir_ / "lorad.db").string());
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::move(*store);
  }
  void TearDown() override { store_.reset(); }  // closed before dir_ goes
  JobRecord SubmitNamed(const std::string& name, int priority = 0, const std::string& rid = "") {
    JobSpec spec;
    spec.name = name;
    spec.priority = priority;
    spec.request_id = rid;
    spec.config_toml = "learning_rate = 1e-4\n";
    spec.hyperparameters = {{"learning_rate", "1e-4"}, {"network_dim", "4"}};
    auto result = store_->Submit(spec);
    EXPECT_TRUE(result.ok()) << result.status();
    return result->job;
  }
  lorad::testing::ScopedTempDir dir_{"lorad_storage_test"};
  std::unique_ptr<JobStore> store_;
};

TEST_F(JobStoreTest, SubmitIsIdempotentByRequestId) {
  JobRecord first = SubmitNamed("a", 0, "req-1");
  JobRecord again = SubmitNamed("a-retry", 0, "req-1");
  EXPECT_EQ(first.id, again.id);
  EXPECT_EQ(again.name, "a");
  JobRecord other = SubmitNamed("b", 0, "req-2");
  EXPECT_NE(other.id, first.id);
  auto page = store_->ListJobs({});
  ASSERT_TRUE(page.ok());
  EXPECT_EQ(page->jobs.size(), 2u);
  EXPECT_EQ(first.state, JobState::kQueued);
  EXPECT_EQ(first.last_seq, 1);  // the "queued" event
  auto hp = store_->GetHyperparameters(first.id);
  ASSERT_TRUE(hp.ok());
  EXPECT_EQ(hp->at("network_dim"), "4");
}

TEST_F(JobStoreTest, ClaimsByPriorityThenFifo) {
  JobRecord low1 = SubmitNamed("low1", 0);
  JobRecord high = SubmitNamed("high", 5);
  JobRecord low2 = SubmitNamed("low2", 0);
  std::vector<int64_t> order;
  for (int i = 0; i < 4; ++i) {
    auto claimed = store_->ClaimNext(i);
    ASSERT_TRUE(claimed.ok());
    if (!claimed->has_value()) break;
    EXPECT_EQ((*claimed)->state, JobState::kRunning);
    EXPECT_EQ((*claimed)->slot, i);
    EXPECT_EQ((*claimed)->attempts, 1);
    order.push_back((*claimed)->id);
  }
  EXPECT_EQ(order, (std::vector<int64_t>{high.id, low1.id, low2.id}));
}

TEST_F(JobStoreTest, EventsGetContiguousSeqsAndUpdateTheJob) {
  JobRecord job = SubmitNamed("events");
  ASSERT_TRUE(store_->ClaimNext(0).ok());
  EventWrite started;
  started.event.mutable_job_started()->set_total_steps(10);
  (*started.event.mutable_job_started()->mutable_hyperparameters())["learning_rate"] = "0.0002";
  ASSERT_TRUE(store_->AppendEvent(job.id, started).ok());
  for (int step = 1; step <= 3; ++step) {
    EventWrite progress;
    progress.event.mutable_progress()->set_step(step);
    progress.event.mutable_progress()->set_total_steps(10);
    progress.event.mutable_progress()->set_loss_avg(1.0 / step);
    auto stored = store_->AppendEvent(job.id, progress);
    ASSERT_TRUE(stored.ok()) << stored.status();
    EXPECT_EQ(stored->seq, 2 + step);
  }
  EventWrite state;
  state.event.mutable_checkpoint()->set_kind(lorad::v1::ARTIFACT_KIND_STATE);
  state.artifact = ArtifactRecord{};
  state.artifact->kind = lorad::v1::ARTIFACT_KIND_STATE;
  state.artifact->path = "/x/state-3";
  state.artifact->name = "state-3";
  state.artifact->step = 3;
  state.artifact->is_directory = true;
  ASSERT_TRUE(store_->AppendEvent(job.id, state).ok());
  EventWrite done;
  done.event.mutable_finished()->set_status(lorad::v1::Finished::SUCCEEDED);
  done.end = JobEnd{JobState::kSucceeded, "", 0, 0};
  ASSERT_TRUE(store_->AppendEvent(job.id, done).ok());

  auto events = store_->ReadEvents(job.id, 0, 100);
  ASSERT_TRUE(events.ok());
  ASSERT_EQ(events->size(), 7u);
  for (size_t i = 0; i < events->size(); ++i) EXPECT_EQ((*events)[i].seq, int64_t(i + 1));
  auto tail = store_->ReadEvents(job.id, 5, 100);
  ASSERT_TRUE(tail.ok());
  ASSERT_EQ(tail->size(), 2u);
  EXPECT_TRUE((*tail)[1].event.has_finished());

  auto after = store_->GetJob(job.id);
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(after->state, JobState::kSucceeded);
  EXPECT_EQ(after->step, 3);
  EXPECT_DOUBLE_EQ(after->loss, 1.0 / 3);
  EXPECT_EQ(after->slot, -1);
  auto hp = store_->GetHyperparameters(job.id);
  EXPECT_EQ(hp->at("learning_rate"), "0.0002");  // effective value replaces submitted
  auto latest = store_->LatestState(job.id);
  ASSERT_TRUE(latest.ok() && latest->has_value());
  EXPECT_EQ((*latest)->path, "/x/state-3");
  EXPECT_TRUE(store_->IntegrityCheck().ok());
}

TEST_F(JobStoreTest, AppendEventsCommitsABatchWithConsecutiveSeqs) {
  JobRecord job = SubmitNamed("batch");
  std::vector<EventWrite> writes(5);
  for (int i = 0; i < 5; ++i) writes[i].event.mutable_progress()->set_step(i + 1);
  auto stored = store_->AppendEvents(job.id, writes);
  ASSERT_TRUE(stored.ok()) << stored.status();
  ASSERT_EQ(stored->size(), 5u);
  for (int i = 0; i < 5; ++i) EXPECT_EQ((*stored)[i].seq, 2 + i);
  EXPECT_EQ(store_->GetJob(job.id)->step, 5);
  EXPECT_EQ(store_->AppendEvents(job.id + 99, writes).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->ReadEvents(job.id, 0, 100)->size(), 6u);  // the failed batch left nothing
}

TEST_F(JobStoreTest, CancelQueuedIsImmediateRunningNeedsSignal) {
  JobRecord running = SubmitNamed("r");
  JobRecord queued = SubmitNamed("q");
  ASSERT_TRUE(store_->ClaimNext(0).ok());
  auto cq = store_->RequestCancel(queued.id, "");
  ASSERT_TRUE(cq.ok());
  EXPECT_EQ(cq->job.state, JobState::kCancelled);
  EXPECT_FALSE(cq->needs_signal);
  ASSERT_EQ(cq->events.size(), 1u);
  EXPECT_TRUE(cq->events[0].event.has_finished());
  auto cr = store_->RequestCancel(running.id, "user");
  ASSERT_TRUE(cr.ok());
  EXPECT_EQ(cr->job.state, JobState::kRunning);
  EXPECT_TRUE(cr->job.cancel_requested);
  EXPECT_TRUE(cr->needs_signal);
  EXPECT_EQ(store_->RequestCancel(424242, "").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(JobStoreTest, RequeueAndReopenKeepsEverything) {
  JobRecord job = SubmitNamed("survivor");
  ASSERT_TRUE(store_->ClaimNext(0).ok());
  store_.reset();
  auto reopened = JobStore::Open((dir_ / "lorad.db").string());
  ASSERT_TRUE(reopened.ok()) << reopened.status();
  store_ = std::move(*reopened);
  auto running = store_->RunningJobIds();
  ASSERT_TRUE(running.ok());
  ASSERT_EQ(*running, std::vector<int64_t>{job.id});
  auto event = store_->Requeue(job.id, "daemon restarted");
  ASSERT_TRUE(event.ok()) << event.status();
  EXPECT_EQ(event->seq, 2);
  auto again = store_->ClaimNext(1);
  ASSERT_TRUE(again.ok() && again->has_value());
  EXPECT_EQ((*again)->attempts, 2);
  EXPECT_EQ(store_->Requeue(job.id + 100, "x").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(JobStoreTest, ListFiltersAndPages) {
  for (int i = 0; i < 7; ++i) SubmitNamed(i % 2 ? "odd" : "even");
  JobFilter filter;
  filter.name_contains = "odd";
  auto odd = store_->ListJobs(filter);
  ASSERT_TRUE(odd.ok());
  EXPECT_EQ(odd->jobs.size(), 3u);
  JobFilter paged;
  paged.page_size = 3;
  std::vector<int64_t> seen;
  while (true) {
    auto page = store_->ListJobs(paged);
    ASSERT_TRUE(page.ok());
    for (const auto& j : page->jobs) seen.push_back(j.id);
    if (page->next_before_id == 0) break;
    paged.before_id = page->next_before_id;
  }
  EXPECT_EQ(seen.size(), 7u);
  EXPECT_TRUE(std::is_sorted(seen.rbegin(), seen.rend()));
  ASSERT_TRUE(store_->ClaimNext(0).ok());
  JobFilter by_state;
  by_state.states = {JobState::kRunning};
  EXPECT_EQ(store_->ListJobs(by_state)->jobs.size(), 1u);
}

TEST_F(JobStoreTest, DatasetsAreStoredOnceById) {
  DatasetRecord d{"abc123", "cats", "/data/datasets/abc123", 100, 4, 2, 0};
  ASSERT_TRUE(store_->PutDataset(d).ok());
  d.name = "cats-again";
  auto again = store_->PutDataset(d);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->name, "cats");
  EXPECT_EQ(store_->ListDatasets()->size(), 1u);
  EXPECT_EQ(store_->GetDataset("nope").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(JobStoreTest, DeleteDatasetRemovesOnlyThatRecord) {
  ASSERT_TRUE(store_->PutDataset({"abc123", "cats", "/data/datasets/abc123", 100, 4, 2, 0}).ok());
  ASSERT_TRUE(store_->PutDataset({"def456", "dogs", "/data/datasets/def456", 100, 4, 2, 0}).ok());
  ASSERT_TRUE(store_->DeleteDataset("abc123").ok());
  EXPECT_EQ(store_->GetDataset("abc123").status().code(), absl::StatusCode::kNotFound);
  ASSERT_EQ(store_->ListDatasets()->size(), 1u);
  EXPECT_EQ(store_->ListDatasets()->at(0).id, "def456");
  const absl::Status again = store_->DeleteDataset("abc123");
  EXPECT_EQ(again.code(), absl::StatusCode::kNotFound);
  EXPECT_NE(again.message().find("abc123"), std::string::npos) << again;
}

TEST_F(JobStoreTest, RefusesADatabaseFromTheFuture) {
  store_.reset();
  {
    auto db = Database::Open((dir_ / "lorad.db").string());
    ASSERT_TRUE(db.ok());
    ASSERT_TRUE(db->Exec("PRAGMA user_version = 999").ok());
  }
  auto store = JobStore::Open((dir_ / "lorad.db").string());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(JobStoreTest, SweepsRecordModeAndKeysAndGroupTheirJobs) {
  SweepRecord sweep;
  sweep.name = "night";
  sweep.mode = "zip";
  sweep.varied_keys = {"dataset", "learning_rate"};
  auto created = store_->CreateSweep(sweep, false);
  ASSERT_TRUE(created.ok()) << created.status();
  EXPECT_GT(created->id, 0);
  EXPECT_EQ(created->varied_keys, sweep.varied_keys);
  EXPECT_EQ(created->mode, "zip");
  // A second create with the same name is refused, unless it is a retry.
  EXPECT_EQ(store_->CreateSweep(sweep, false).status().code(), absl::StatusCode::kAlreadyExists);
  auto again = store_->CreateSweep(sweep, true);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->id, created->id);

  JobSpec spec;
  spec.name = "night/lr-1e-4";
  spec.sweep = "night";
  spec.config_toml = "learning_rate = 1e-4\n";
  ASSERT_TRUE(store_->Submit(spec).ok());
  SubmitNamed("unrelated");
  JobFilter filter;
  filter.sweep = "night";
  auto page = store_->ListJobs(filter);
  ASSERT_TRUE(page.ok());
  ASSERT_EQ(page->jobs.size(), 1u);
  EXPECT_EQ(page->jobs[0].sweep, "night");

  auto by_id = store_->GetSweep(created->id);
  ASSERT_TRUE(by_id.ok());
  EXPECT_EQ(by_id->name, "night");
  EXPECT_EQ(store_->GetSweep(999).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->GetSweepByName("nope").status().code(), absl::StatusCode::kNotFound);
  SweepRecord second;
  second.name = "later";
  ASSERT_TRUE(store_->CreateSweep(second, false).ok());
  auto all = store_->ListSweeps();
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), 2u);
  EXPECT_EQ((*all)[0].name, "later");  // newest first
  EXPECT_TRUE((*all)[0].varied_keys.empty());
}

// A store at `path` on `clock` with one job submitted, whose id goes to *id.
void OpenWithOneJob(const std::string& path, const Clock* clock, std::unique_ptr<JobStore>* store, int64_t* id) {
  auto opened = JobStore::Open(path, clock);
  ASSERT_TRUE(opened.ok()) << opened.status();
  *store = std::move(*opened);
  JobSpec spec;
  spec.name = "a";
  spec.config_toml = "learning_rate = 1e-4\n";
  auto submitted = (*store)->Submit(spec);
  ASSERT_TRUE(submitted.ok()) << submitted.status();
  *id = submitted->job.id;
}

// Issue 13: GPU time and cost of a job across attempts, on a fake clock. The
// box costs 3.00 an hour for 2 GPUs: 1.50 per GPU-hour.
TEST(JobUsageTest, CostArithmeticOnAFakeClock) {
  lorad::testing::ScopedTempDir dir("lorad_usage_test");
  lorad::testing::FakeClock clock;
  const std::string path = (dir.path() / "lorad.db").string();
  std::unique_ptr<JobStore> store;
  int64_t id = 0;
  ASSERT_NO_FATAL_FAILURE(OpenWithOneJob(path, &clock, &store, &id));

  clock.AdvanceMinutes(5);  // queued: not charged
  ASSERT_TRUE(store->ClaimNext(0, SlotCharge{1, 1.5}).ok());
  clock.AdvanceMinutes(30);
  ASSERT_TRUE(store->Requeue(id, "daemon stopping").ok());  // attempt 1: 30 min x 1 GPU
  auto job = store->GetJob(id);
  ASSERT_TRUE(job.ok());
  EXPECT_DOUBLE_EQ(job->usage.gpu_seconds, 1800);
  EXPECT_DOUBLE_EQ(job->usage.cost, 0.75);

  clock.AdvanceMinutes(10);  // queued again: not charged
  const int64_t second_start = clock.NowUnixMs();
  ASSERT_TRUE(store->ClaimNext(1, SlotCharge{2, 1.5}).ok());
  clock.AdvanceMinutes(15);  // running: counted up to now
  job = store->GetJob(id);
  ASSERT_TRUE(job.ok());
  EXPECT_DOUBLE_EQ(job->usage.gpu_seconds, 1800 + 900 * 2);
  EXPECT_DOUBLE_EQ(job->usage.cost, 0.75 + 0.75);

  clock.AdvanceMinutes(15);
  EventWrite end;
  end.event.mutable_finished()->set_status(lorad::v1::Finished::SUCCEEDED);
  end.end = JobEnd{JobState::kSucceeded, "", 0, 0};
  ASSERT_TRUE(store->AppendEvent(id, end).ok());
  clock.AdvanceMinutes(60);  // ended: nothing more
  job = store->GetJob(id);
  ASSERT_TRUE(job.ok());
  EXPECT_DOUBLE_EQ(job->usage.gpu_seconds, 5400);  // 1.5 GPU-hours
  EXPECT_DOUBLE_EQ(job->usage.cost, 2.25);
  auto attempts = store->ListAttempts(id);
  ASSERT_TRUE(attempts.ok());
  ASSERT_EQ(attempts->size(), 2u);
  EXPECT_EQ((*attempts)[1].slot, 1);
  EXPECT_EQ((*attempts)[1].gpus, 2);
  auto page = store->ListJobs({});
  ASSERT_TRUE(page.ok());
  ASSERT_EQ(page->jobs.size(), 1u);
  EXPECT_DOUBLE_EQ(page->jobs[0].usage.cost, 2.25);
  // Since the second attempt started: only it counts.
  auto since = store->UsageSince(second_start);
  ASSERT_TRUE(since.ok());
  EXPECT_DOUBLE_EQ(since->gpu_seconds, 3600);
  EXPECT_DOUBLE_EQ(since->cost, 1.5);
  // ... and from its middle, half of it.
  since = store->UsageSince(second_start + 15 * 60'000);
  ASSERT_TRUE(since.ok());
  EXPECT_DOUBLE_EQ(since->gpu_seconds, 1800);

  // A crash: the open attempt ends at the job's last event, not at the restart.
  JobSpec spec;
  spec.name = "b";
  spec.config_toml = "learning_rate = 1e-4\n";
  auto crashed = store->Submit(spec);
  ASSERT_TRUE(crashed.ok());
  ASSERT_TRUE(store->ClaimNext(0, SlotCharge{1, 1.5}).ok());
  clock.AdvanceMinutes(20);
  EventWrite log;
  log.event.mutable_log()->set_message("step 100");
  ASSERT_TRUE(store->AppendEvent(crashed->job.id, log).ok());  // stamped by the clock
  clock.AdvanceMinutes(40);  // the daemon is down
  store.reset();
  auto opened = JobStore::Open(path, &clock);  // the restart: what survives is in SQLite
  ASSERT_TRUE(opened.ok());
  store = std::move(*opened);
  ASSERT_TRUE(store->EndInterruptedAttempts().ok());
  auto crashed_job = store->GetJob(crashed->job.id);
  ASSERT_TRUE(crashed_job.ok());
  EXPECT_DOUBLE_EQ(crashed_job->usage.gpu_seconds, 1200);
  EXPECT_DOUBLE_EQ(crashed_job->usage.cost, 0.5);
  job = store->GetJob(id);
  ASSERT_TRUE(job.ok());
  EXPECT_DOUBLE_EQ(job->usage.cost, 2.25);

  auto event = store->AddServerEvent("idle_command", "ran `true`: exit status 0");
  ASSERT_TRUE(event.ok());
  EXPECT_EQ(event->time_ms, clock.NowUnixMs());
  auto events = store->ListServerEvents(10);
  ASSERT_TRUE(events.ok());
  ASSERT_EQ(events->size(), 1u);
  EXPECT_EQ((*events)[0].kind, "idle_command");
}

// A clock that moves one millisecond at every read: the job's end and its
// attempt's end must come from one read, or the GPU time outgrows the job's
// wall time (seen once as 0.604 s of GPU time in a 0.603 s job).
class TickingClock final : public Clock {
 public:
  int64_t NowUnixMs() const override { return now_.fetch_add(1) + 1; }

 private:
  mutable std::atomic<int64_t> now_{1'700'000'000'000};
};

TEST(JobUsageTest, GpuTimeNeverExceedsTheJobsWallTime) {
  lorad::testing::ScopedTempDir dir("lorad_usage_tick_test");
  TickingClock clock;
  std::unique_ptr<JobStore> store;
  int64_t id = 0;
  ASSERT_NO_FATAL_FAILURE(OpenWithOneJob((dir.path() / "lorad.db").string(), &clock, &store, &id));
  ASSERT_TRUE(store->ClaimNext(0, SlotCharge{1, 1.0}).ok());
  EventWrite end;
  end.event.mutable_finished()->set_status(lorad::v1::Finished::SUCCEEDED);
  end.end = JobEnd{JobState::kSucceeded, "", 0, 0};
  ASSERT_TRUE(store->AppendEvent(id, end).ok());
  auto job = store->GetJob(id);
  ASSERT_TRUE(job.ok());
  ASSERT_GT(job->finished_ms, job->started_ms);
  EXPECT_GT(job->usage.gpu_seconds, 0);
  EXPECT_DOUBLE_EQ(job->usage.gpu_seconds, static_cast<double>(job->finished_ms - job->started_ms) / 1000.0);
}

TEST(JobUsageTest, SumUsageClipsAndSkipsEmptySpans) {
  std::vector<AttemptRecord> attempts = {
      {1, 1, 0, 1, 2.0, 0, 3'600'000},          // 1 h ended
      {1, 2, 0, 4, 2.0, 7'200'000, 0},          // open: 4 GPUs until now
      {2, 1, 0, 1, 2.0, 5'000'000, 4'000'000},  // clock went back: ignored
  };
  const Usage all = SumUsage(attempts, 9'000'000);
  EXPECT_DOUBLE_EQ(all.gpu_seconds, 3600 + 1800 * 4);
  EXPECT_DOUBLE_EQ(all.cost, 2.0 + 0.5 * 4 * 2.0);
  const Usage late = SumUsage(attempts, 9'000'000, 8'100'000);
  EXPECT_DOUBLE_EQ(late.gpu_seconds, 900 * 4);
}

}  // namespace
}  // namespace lorad::storage
