// End-to-end tests of lorad: a real daemon on a loopback port, real SQLite, the
// real lorad-train training the tiny SDXL fixture on CPU for a few steps.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <thread>

#include <google/protobuf/util/message_differencer.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "storage/job_store.h"
#include "tests/daemon_harness.h"

namespace lorad::tests {
namespace {
namespace fs = std::filesystem;
using lorad::v1::JobEvent;
using lorad::v1::JobState;

fs::path TestRoot(const std::string& name) {
  return fs::temp_directory_path() / absl::StrCat("lorad_it_", getpid(), "_", name);
}

std::string ReadFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}


// One daemon with two slots shared by the tests that do not restart it.
class DaemonTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    daemon_ = new Daemon(TestRoot("shared"), DaemonOptions{2, 5, "test-token", {}});
    daemon_->Start();
    dataset_ = new std::string(daemon_->UploadTestDataset(3));
  }
  static void TearDownTestSuite() {
    if (daemon_) EXPECT_EQ(daemon_->Stop(), 0);
    fs::remove_all(daemon_->data_dir());
    delete daemon_;
    delete dataset_;
    daemon_ = nullptr;
  }
  static Daemon* daemon_;
  static std::string* dataset_;
};
Daemon* DaemonTest::daemon_ = nullptr;
std::string* DaemonTest::dataset_ = nullptr;

TEST_F(DaemonTest, SubmitRunSucceedStreamInOrderAndFetchVerifiedLora) {
  Daemon& d = *daemon_;
  const int64_t id = d.Submit(Daemon::TinyConfig(6, 3), *dataset_, "happy");
  ASSERT_GT(id, 0);
  std::set<JobState> seen;
  lorad::v1::Job job = d.WaitFor(id, [&](const lorad::v1::Job& j) {
    seen.insert(j.state());
    return IsTerminal(j.state());
  }, 240);
  ASSERT_EQ(job.state(), lorad::v1::JOB_STATE_SUCCEEDED) << job.reason();
  EXPECT_TRUE(seen.count(lorad::v1::JOB_STATE_RUNNING));
  EXPECT_EQ(job.step(), 6);

  auto events = d.ReadAllEvents(id);
  ASSERT_FALSE(events.empty());
  ExpectContiguous(events);
  EXPECT_EQ(events.back().seq(), job.last_seq());
  EXPECT_TRUE(events.back().event().has_finished());
  EXPECT_EQ(events.back().event().finished().status(), lorad::v1::Finished::SUCCEEDED);
  int64_t last_step = 0;
  bool started = false;
  for (const auto& e : events) {
    if (e.event().has_job_started()) started = true;
    if (e.event().has_progress()) {
      EXPECT_GT(e.event().progress().step(), last_step);
      last_step = e.event().progress().step();
    }
  }
  EXPECT_TRUE(started);
  EXPECT_EQ(last_step, 6);
  EXPECT_EQ(job.hyperparameters().at("network_dim"), "4");

  lorad::v1::ListArtifactsRequest list;
  list.set_job_id(id);
  list.set_kind(lorad::v1::ARTIFACT_KIND_LORA);
  lorad::v1::ListArtifactsResponse artifacts;
  auto ctx = d.client().Context();
  ASSERT_TRUE(d.client().stub()->ListArtifacts(ctx.get(), list, &artifacts).ok());
  const lorad::v1::Artifact* final_lora = nullptr;
  for (const auto& a : artifacts.artifacts()) {
    if (a.is_final()) final_lora = &a;
  }
  ASSERT_NE(final_lora, nullptr) << artifacts.DebugString();
  const fs::path out = TestRoot("fetch") / "tiny.safetensors";
  fs::remove_all(out.parent_path());
  ASSERT_TRUE(d.client().FetchArtifact(*final_lora, out).ok());
  EXPECT_EQ(ReadFile(out), ReadFile(job.final_lora_path()));
  fs::remove_all(out.parent_path());

  // Replay from the middle returns exactly the rest; no_follow ends at the tip.
  auto rest = d.ReadAllEvents(id, 3);
  ASSERT_EQ(rest.size(), events.size() - 3);
  ExpectContiguous(rest, 4);
}

// The config the guide's notebook (Lora_Easy_Training_Jupyter) writes, as it
// writes it: sections, CAME at 1e-4, REX through lr_scheduler_type with its
// args (and lr_scheduler = "rex", which kohya ignores then), text_encoder_lr 0
// with the text encoder not frozen, sdpa, max_token_length 225,
// cache_latents_to_disk, lowram, a logging_dir; plus its dataset TOML. It
// trains to the end with lorad-train alone and through the daemon.
std::string NotebookConfig(const std::string& model, const std::string& output_dir, const std::string& logging_dir) {
  return absl::StrCat(R"([network_arguments]
unet_lr = 0.0001
text_encoder_lr = 0
network_dim = 4
network_alpha = 2
network_module = "networks.lora"

[optimizer_arguments]
learning_rate = 0.0001
lr_scheduler = "rex"
optimizer_type = "Came"
optimizer_args = [ "weight_decay=0.04",]
lr_scheduler_type = "LoraEasyCustomOptimizer.RexAnnealingWarmRestarts.RexAnnealingWarmRestarts"
lr_scheduler_args = [ "min_lr=1e-9", "gamma=0.9", "d=0.9",]

[training_arguments]
lowram = true
pretrained_model_name_or_path = ")", model, R"("
max_train_epochs = 2
train_batch_size = 1
mixed_precision = "fp16"
save_precision = "fp16"
save_every_n_epochs = 1
save_last_n_epochs = 1
output_name = "notebook"
output_dir = ")", output_dir, R"("
logging_dir = ")", logging_dir, R"("
cache_latents = true
cache_latents_to_disk = true
cache_text_encoder_outputs = false
sdpa = true
max_token_length = 225
seed = 42
device = "cpu"
)");
}

// The TensorBoard event files under a logging_dir: <run>/network_train/events.out.tfevents.*.
std::vector<fs::path> TensorBoardEventFiles(const fs::path& logging_dir) {
  std::vector<fs::path> files;
  if (!fs::is_directory(logging_dir)) return files;
  for (const auto& run : fs::directory_iterator(logging_dir)) {
    if (!fs::is_directory(run.path() / "network_train")) continue;
    for (const auto& file : fs::directory_iterator(run.path() / "network_train")) {
      if (file.path().filename().string().starts_with("events.out.tfevents.")) files.push_back(file.path());
    }
  }
  return files;
}

std::string NotebookDatasetConfig(const std::string& image_dir) {
  return absl::StrCat(R"([general]
resolution = 64
shuffle_caption = true
keep_tokens = 0
flip_aug = false
caption_extension = ".txt"
enable_bucket = true
bucket_no_upscale = false
bucket_reso_steps = 64
min_bucket_reso = 64
max_bucket_reso = 128

[[datasets]]
[[datasets.subsets]]
num_repeats = 2
image_dir = ")", image_dir, R"("
)");
}

TEST_F(DaemonTest, NotebookSectionedConfigTrainsStandaloneAndInTheDaemon) {
  Daemon& d = *daemon_;
  const fs::path root = TestRoot("notebook");
  fs::remove_all(root);
  MakeImageDataset(root / "images", 3);
  {
    // lorad-train alone, as the notebook runs sdxl_train_network.py.
    std::ofstream(root / "config.toml")
        << NotebookConfig((d.data_dir() / "models" / "tiny_sdxl.safetensors").string(), (root / "output").string(),
                          (root / "logs").string());
    std::ofstream(root / "dataset.toml") << NotebookDatasetConfig((root / "images" / "1_shape").string());
    const std::string command =
        absl::StrCat("'", WorkerBinary().string(), "' --config_file '", (root / "config.toml").string(),
                     "' --dataset_config '", (root / "dataset.toml").string(), "' > '", (root / "train.log").string(),
                     "' 2>&1");
    ASSERT_EQ(std::system(command.c_str()), 0) << ReadFile(root / "train.log");
    const std::string log = ReadFile(root / "train.log");
    EXPECT_TRUE(fs::exists(root / "output" / "notebook.safetensors")) << log;
    // What lorad had to say about it: the dropped text-encoder group and REX's one-step cycles.
    EXPECT_NE(log.find("text_encoder_lr is 0"), std::string::npos) << log;
    EXPECT_NE(log.find("first_cycle_max_steps"), std::string::npos) << log;
    EXPECT_EQ(log.find("unknown config key"), std::string::npos) << log;
    // logging_dir alone writes kohya's TensorBoard log (tests/tensorboard reads one back).
    EXPECT_EQ(TensorBoardEventFiles(root / "logs").size(), 1u) << log;
  }
  {
    // The same files through the daemon: the model by name, the images in an upload.
    lorad::v1::SubmitJobRequest request;
    request.set_config_toml(NotebookConfig("tiny_sdxl.safetensors", "/content/output", "/content/logs"));
    request.set_dataset_config_toml(NotebookDatasetConfig("1_shape"));
    request.set_dataset(*dataset_);
    request.set_name("notebook");
    lorad::v1::Job job;
    auto ctx = d.client().Context();
    grpc::Status status = d.client().stub()->SubmitJob(ctx.get(), request, &job);
    ASSERT_TRUE(status.ok()) << status.error_message();
    lorad::v1::Job done = d.WaitFor(job.id(), [](const lorad::v1::Job& j) { return IsTerminal(j.state()); }, 300);
    ASSERT_EQ(done.state(), lorad::v1::JOB_STATE_SUCCEEDED) << done.reason();
    EXPECT_EQ(done.hyperparameters().at("lr_scheduler_type"),
              "LoraEasyCustomOptimizer.RexAnnealingWarmRestarts.RexAnnealingWarmRestarts");
    EXPECT_TRUE(fs::exists(done.final_lora_path()));
    // The daemon points logging_dir at the job's own folder: one run, one event file.
    const fs::path job_dir = fs::path(done.final_lora_path()).parent_path().parent_path();
    EXPECT_EQ(TensorBoardEventFiles(job_dir / "logs").size(), 1u) << job_dir;
  }
  fs::remove_all(root);
}

TEST_F(DaemonTest, TailDisconnectAndResumeLosesNothing) {
  Daemon& d = *daemon_;
  const int64_t id = d.Submit(Daemon::TinyConfig(8, 0), *dataset_, "tail");
  std::vector<JobEvent> collected;
  {
    auto ctx = d.client().Context(true);
    lorad::v1::StreamEventsRequest request;
    request.set_job_id(id);
    auto reader = d.client().stub()->StreamEvents(ctx.get(), request);
    JobEvent e;
    while (reader->Read(&e)) {
      collected.push_back(e);
      if (e.event().has_progress() && e.event().progress().step() >= 2) break;  // mid-run
    }
    ctx->TryCancel();
    reader->Finish();
  }
  ASSERT_FALSE(collected.empty());
  ASSERT_FALSE(collected.back().event().has_finished()) << "disconnected too late to test resume";
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // events keep coming meanwhile
  auto rest = d.ReadAllEvents(id, collected.back().seq());
  collected.insert(collected.end(), rest.begin(), rest.end());
  ExpectContiguous(collected);
  ASSERT_TRUE(collected.back().event().has_finished());
  EXPECT_EQ(collected.back().seq(), d.GetJob(id).last_seq());
}

TEST_F(DaemonTest, InterruptedFetchResumesToAnIdenticalFile) {
  Daemon& d = *daemon_;
  const int64_t id = d.Submit(Daemon::TinyConfig(2, 0), *dataset_, "fetch");
  d.WaitFor(id, [](const lorad::v1::Job& j) { return IsTerminal(j.state()); }, 240);
  lorad::v1::ListArtifactsRequest list;
  list.set_job_id(id);
  list.set_kind(lorad::v1::ARTIFACT_KIND_LORA);
  lorad::v1::ListArtifactsResponse artifacts;
  auto ctx = d.client().Context();
  ASSERT_TRUE(d.client().stub()->ListArtifacts(ctx.get(), list, &artifacts).ok());
  ASSERT_FALSE(artifacts.artifacts().empty());
  const auto& lora = artifacts.artifacts(0);
  ASSERT_GT(lora.bytes(), 8 << 10);
  const fs::path out = TestRoot("resume") / "lora.safetensors";
  fs::remove_all(out.parent_path());
  // 4 KiB chunks so "half" is a real mid-stream point.
  absl::Status first = d.client().FetchArtifact(lora, out, lora.bytes() / 2, nullptr, 4096);
  EXPECT_EQ(first.code(), absl::StatusCode::kAborted) << first;
  const fs::path part = out.string() + ".part";
  ASSERT_TRUE(fs::exists(part));
  const auto partial = fs::file_size(part);
  EXPECT_GT(partial, 0u);
  EXPECT_LT(partial, static_cast<uintmax_t>(lora.bytes()));
  ASSERT_TRUE(d.client().FetchArtifact(lora, out).ok());
  EXPECT_FALSE(fs::exists(part));
  const fs::path server_file = d.data_dir() / "jobs" / std::to_string(id) / "output" / lora.name();
  EXPECT_EQ(ReadFile(out), ReadFile(server_file));
  fs::remove_all(out.parent_path());
}

TEST_F(DaemonTest, DuplicateRequestIdMakesOneJob) {
  Daemon& d = *daemon_;
  lorad::v1::ListJobsRequest before_request;
  before_request.set_name_contains("dedup");
  const int64_t a = d.Submit(Daemon::TinyConfig(1, 0), *dataset_, "dedup", "same-request-id");
  const int64_t b = d.Submit(Daemon::TinyConfig(1, 0), *dataset_, "dedup", "same-request-id");
  EXPECT_EQ(a, b);
  lorad::v1::ListJobsResponse response;
  auto ctx = d.client().Context();
  ASSERT_TRUE(d.client().stub()->ListJobs(ctx.get(), before_request, &response).ok());
  EXPECT_EQ(response.jobs_size(), 1);
  d.WaitFor(a, [](const lorad::v1::Job& j) { return IsTerminal(j.state()); }, 240);
}

TEST_F(DaemonTest, CancelRunningJobEndsCancelledWithinGraceAndChildIsGone) {
  Daemon& d = *daemon_;
  const int64_t id = d.Submit(Daemon::TinyConfig(100000, 0), *dataset_, "cancel-me");
  d.WaitFor(id, [](const lorad::v1::Job& j) { return j.step() >= 1 || IsTerminal(j.state()); }, 240);
  // The worker's pid is in the "attempt started" event.
  pid_t pid = 0;
  {
    auto ctx = d.client().Context(true);
    lorad::v1::StreamEventsRequest request;
    request.set_job_id(id);
    request.set_no_follow(true);
    auto reader = d.client().stub()->StreamEvents(ctx.get(), request);
    JobEvent e;
    while (reader->Read(&e)) {
      const std::string& message = e.event().log().message();
      if (auto at = message.find("(pid "); at != std::string::npos) pid = std::stoi(message.substr(at + 5));
    }
    ASSERT_TRUE(reader->Finish().ok());
  }
  ASSERT_GT(pid, 0);
  const auto asked = std::chrono::steady_clock::now();
  lorad::v1::CancelJobRequest cancel;
  cancel.set_job_id(id);
  cancel.set_reason("test cancel");
  lorad::v1::Job after;
  auto ctx = d.client().Context();
  ASSERT_TRUE(d.client().stub()->CancelJob(ctx.get(), cancel, &after).ok());
  lorad::v1::Job job = d.WaitFor(id, [](const lorad::v1::Job& j) { return IsTerminal(j.state()); }, 30);
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - asked).count();
  EXPECT_EQ(job.state(), lorad::v1::JOB_STATE_CANCELLED);
  EXPECT_LT(took, 5 + 2.0) << "grace is 5 s";
  EXPECT_TRUE(absl::StrContains(job.reason(), "test cancel")) << job.reason();
  EXPECT_EQ(kill(pid, 0), -1);
  EXPECT_EQ(errno, ESRCH) << "worker " << pid << " still exists";
}

TEST_F(DaemonTest, CrashingWorkerFailsWithReasonAndDaemonKeepsServing) {
  Daemon& d = *daemon_;
  std::ofstream(d.data_dir() / "models" / "corrupt.safetensors") << "this is not a safetensors file";
  std::string config = Daemon::TinyConfig(2, 0);
  config.replace(config.find("tiny_sdxl.safetensors"), std::string("tiny_sdxl.safetensors").size(),
                 "corrupt.safetensors");
  const int64_t id = d.Submit(config, *dataset_, "corrupt");
  lorad::v1::Job job = d.WaitFor(id, [](const lorad::v1::Job& j) { return IsTerminal(j.state()); }, 120);
  EXPECT_EQ(job.state(), lorad::v1::JOB_STATE_FAILED);
  EXPECT_TRUE(absl::StrContains(job.reason(), "exit status") || absl::StrContains(job.reason(), "signal"))
      << job.reason();
  EXPECT_TRUE(absl::StrContains(job.reason(), "corrupt.safetensors")) << job.reason();
  EXPECT_NE(job.exit_code(), 0);
  lorad::v1::ServerInfo info;
  auto ctx = d.client().Context();
  EXPECT_TRUE(d.client().stub()->GetServerInfo(ctx.get(), {}, &info).ok());
}

TEST_F(DaemonTest, TwoSlotsRunTwoJobsAtOnce) {
  Daemon& d = *daemon_;
  const int64_t a = d.Submit(Daemon::TinyConfig(100000, 0), *dataset_, "slot-a");
  const int64_t b = d.Submit(Daemon::TinyConfig(100000, 0), *dataset_, "slot-b");
  bool both = false;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (!both && std::chrono::steady_clock::now() < deadline) {
    const auto ja = d.GetJob(a), jb = d.GetJob(b);
    both = ja.state() == lorad::v1::JOB_STATE_RUNNING && jb.state() == lorad::v1::JOB_STATE_RUNNING &&
           ja.slot() != jb.slot();
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_TRUE(both);
  for (int64_t id : {a, b}) {
    lorad::v1::CancelJobRequest cancel;
    cancel.set_job_id(id);
    lorad::v1::Job job;
    auto ctx = d.client().Context();
    ASSERT_TRUE(d.client().stub()->CancelJob(ctx.get(), cancel, &job).ok());
  }
  for (int64_t id : {a, b}) {
    EXPECT_EQ(d.WaitFor(id, [](const lorad::v1::Job& j) { return IsTerminal(j.state()); }, 30).state(),
              lorad::v1::JOB_STATE_CANCELLED);
  }
}

TEST_F(DaemonTest, EveryRpcNeedsTheTokenAndPathsStayInsideTheRoots) {
  Daemon& d = *daemon_;
  for (const std::string token : {"", "wrong-token"}) {
    auto c = d.NewClient(token);
    auto* s = c->stub();
    std::vector<grpc::Status> statuses;
    { auto ctx = c->Context(); lorad::v1::Job r; statuses.push_back(s->SubmitJob(ctx.get(), {}, &r)); }
    { auto ctx = c->Context(); lorad::v1::Job r; statuses.push_back(s->GetJob(ctx.get(), {}, &r)); }
    { auto ctx = c->Context(); lorad::v1::ListJobsResponse r; statuses.push_back(s->ListJobs(ctx.get(), {}, &r)); }
    { auto ctx = c->Context(); lorad::v1::Job r; statuses.push_back(s->CancelJob(ctx.get(), {}, &r)); }
    { auto ctx = c->Context(); lorad::v1::ListArtifactsResponse r; statuses.push_back(s->ListArtifacts(ctx.get(), {}, &r)); }
    { auto ctx = c->Context(); lorad::v1::ListDatasetsResponse r; statuses.push_back(s->ListDatasets(ctx.get(), {}, &r)); }
    { auto ctx = c->Context(); lorad::v1::InspectDatasetResponse r; statuses.push_back(s->InspectDataset(ctx.get(), {}, &r)); }
    {
      auto ctx = c->Context();
      lorad::v1::DeleteDatasetRequest request;
      request.set_dataset(*dataset_);
      lorad::v1::DeleteDatasetResponse r;
      statuses.push_back(s->DeleteDataset(ctx.get(), request, &r));
    }
    { auto ctx = c->Context(); lorad::v1::ServerInfo r; statuses.push_back(s->GetServerInfo(ctx.get(), {}, &r)); }
    {
      auto ctx = c->Context();
      auto reader = s->StreamEvents(ctx.get(), {});
      JobEvent e;
      while (reader->Read(&e)) {}
      statuses.push_back(reader->Finish());
    }
    {
      auto ctx = c->Context();
      auto reader = s->FetchArtifact(ctx.get(), {});
      lorad::v1::ArtifactChunk chunk;
      while (reader->Read(&chunk)) {}
      statuses.push_back(reader->Finish());
    }
    {
      auto ctx = c->Context();
      lorad::v1::Dataset r;
      auto writer = s->UploadDataset(ctx.get(), &r);
      writer->WritesDone();
      statuses.push_back(writer->Finish());
    }
    ASSERT_EQ(statuses.size(), 12u);
    for (size_t i = 0; i < statuses.size(); ++i) {
      EXPECT_EQ(statuses[i].error_code(), grpc::StatusCode::UNAUTHENTICATED) << "rpc #" << i << " token '" << token << "'";
    }
  }
  // A config path outside the roots is refused at submit.
  lorad::v1::SubmitJobRequest request;
  request.set_config_toml("pretrained_model_name_or_path = \"/etc/passwd\"\n");
  lorad::v1::Job job;
  auto ctx = d.client().Context();
  grpc::Status refused = d.client().stub()->SubmitJob(ctx.get(), request, &job);
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::PERMISSION_DENIED) << refused.error_message();
  // A bad value is refused at submit with the trainer's own message.
  request.set_config_toml(Daemon::TinyConfig(2, 0, "min_snr_gamma = \"abc\"\n"));
  request.set_dataset(*dataset_);
  auto ctx_value = d.client().Context();
  refused = d.client().stub()->SubmitJob(ctx_value.get(), request, &job);
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << refused.error_message();
  EXPECT_EQ(refused.error_message(), "config key 'min_snr_gamma': bad value \"abc\"; expected a number");
  // An upload path with ".." is refused and nothing escapes the datasets folder.
  auto ctx2 = d.client().Context();
  lorad::v1::Dataset dataset;
  auto writer = d.client().stub()->UploadDataset(ctx2.get(), &dataset);
  lorad::v1::UploadDatasetRequest chunk;
  chunk.mutable_chunk()->set_path("../../escaped.txt");
  chunk.mutable_chunk()->set_data("x");
  writer->Write(chunk);
  writer->WritesDone();
  grpc::Status upload = writer->Finish();
  EXPECT_EQ(upload.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << upload.error_message();
  EXPECT_FALSE(fs::exists(d.data_dir() / "escaped.txt"));
  EXPECT_FALSE(fs::exists(d.data_dir().parent_path() / "escaped.txt"));
}

TEST_F(DaemonTest, UploadIsContentAddressedAndInspectRunsTheCurationReport) {
  Daemon& d = *daemon_;
  // The suite's dataset again: same files, same id, stored once.
  EXPECT_EQ(d.UploadTestDataset(3), *dataset_);
  lorad::v1::ListDatasetsResponse datasets;
  auto ctx = d.client().Context();
  ASSERT_TRUE(d.client().stub()->ListDatasets(ctx.get(), {}, &datasets).ok());
  ASSERT_EQ(datasets.datasets_size(), 1);
  EXPECT_EQ(datasets.datasets(0).images(), 3);
  EXPECT_EQ(datasets.datasets(0).files(), 6);
  lorad::v1::InspectDatasetRequest request;
  request.set_dataset_id(*dataset_);
  lorad::v1::InspectDatasetResponse report;
  auto ctx2 = d.client().Context();
  grpc::Status status = d.client().stub()->InspectDataset(ctx2.get(), request, &report);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_TRUE(absl::StrContains(report.report_json(), "\"missing_captions\"")) << report.report_json();
  EXPECT_TRUE(absl::StrContains(report.report_json(), "\"images\"")) << report.report_json();
  lorad::v1::InspectDatasetResponse missing;
  request.set_dataset_id("no-such-dataset");
  auto ctx3 = d.client().Context();
  EXPECT_EQ(d.client().stub()->InspectDataset(ctx3.get(), request, &missing).error_code(),
            grpc::StatusCode::NOT_FOUND);
}

// Issue 12: SubmitJob reads the whole job with the trainer's parsers (a bad
// value is INVALID_ARGUMENT naming the key, before any worker starts) and
// advises on the uploaded dataset's curation report, for the job's kind.
TEST_F(DaemonTest, SubmitParsesTheWholeJobAndAdvisesOnTheCurationReport) {
  Daemon& d = *daemon_;
  auto submit = [&](const std::string& config, const std::string& kind, lorad::v1::Job* job) {
    lorad::v1::SubmitJobRequest request;
    request.set_config_toml(config);
    request.set_dataset(*dataset_);
    request.set_name("advised");
    request.set_kind(kind);
    auto ctx = d.client().Context();
    return d.client().stub()->SubmitJob(ctx.get(), request, job);
  };
  lorad::v1::Job job;
  grpc::Status refused = submit(Daemon::TinyConfig(1, 0, "lr_scheduler = \"bogus\"\n"), "style", &job);
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(absl::StrContains(refused.error_message(), "lr_scheduler")) << refused.error_message();
  refused = submit(Daemon::TinyConfig(1, 0, "network_args = [\"dora_wd=maybe\"]\n"), "style", &job);
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(absl::StrContains(refused.error_message(), "dora_wd")) << refused.error_message();
  refused = submit(Daemon::TinyConfig(1, 0), "landscape", &job);
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(absl::StrContains(refused.error_message(), "character, style, concept")) << refused.error_message();

  const grpc::Status status = submit(Daemon::TinyConfig(1, 0), "style", &job);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_TRUE(fs::exists(d.data_dir() / "curation" / (*dataset_ + ".json")));  // kept for the next submit
  std::set<std::string> codes;
  for (const auto& e : d.ReadEventsUntil(job.id(), [](const lorad::v1::Event& e) { return e.has_finished(); })) {
    if (e.event().has_warning()) codes.insert(e.event().warning().code());
  }
  // 64 px images: only the curation report knows their size; "style": the kind reached the rules.
  EXPECT_TRUE(codes.contains("advisor.dataset-low-res")) << absl::StrJoin(codes, ", ");
  EXPECT_TRUE(codes.contains("advisor.style-steps")) << absl::StrJoin(codes, ", ");
}

// kill -9 mid-training, restart: the job resumes from its saved state and
// succeeds; history is intact; the database passes integrity_check.
TEST_F(DaemonTest, ASecondLoradOnTheSameDataDirExitsNamingTheHolder) {
  // `timeout`: without the lock the second daemon would serve (SO_REUSEPORT) and never exit.
  const std::string command = absl::StrCat(
      "timeout 30 ", (BuildDir() / "server" / "lorad").string(), " --listen 127.0.0.1:0 --data-dir ",
      daemon_->data_dir().string(), " --worker ", WorkerBinary().string(), " 2>&1; echo \"exit=$?\"");
  FILE* pipe = popen(command.c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  std::string output;
  char buffer[4096];
  while (size_t n = fread(buffer, 1, sizeof(buffer), pipe)) output.append(buffer, n);
  pclose(pipe);
  EXPECT_TRUE(absl::StrContains(output, "exit=13")) << output;  // kExitStorage
  EXPECT_TRUE(absl::StrContains(output, absl::StrCat("data dir ", daemon_->data_dir().string(),
                                                     " is in use by another lorad (pid ")))
      << output;
  // The first daemon still serves.
  auto ctx = daemon_->client().Context();
  lorad::v1::ServerInfo info;
  EXPECT_TRUE(daemon_->client().stub()->GetServerInfo(ctx.get(), lorad::v1::GetServerInfoRequest(), &info).ok());
}

// One raw call of `method` (one request message, the replies read to the end)
// through a generic stub: the reflection client library is not installed.
struct RawReply {
  grpc::Status status;
  std::string bytes;  // every reply message, concatenated
};
RawReply RawCall(int port, const std::string& method, const std::string& request, const std::string& token) {
  auto channel = grpc::CreateChannel(absl::StrCat("127.0.0.1:", port), grpc::InsecureChannelCredentials());
  grpc::GenericStub stub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  if (!token.empty()) ctx.AddMetadata("authorization", "Bearer " + token);
  grpc::CompletionQueue cq;
  void* tag = nullptr;
  bool ok = false;
  auto call = stub.PrepareCall(&ctx, method, &cq);
  call->StartCall(reinterpret_cast<void*>(1));
  cq.Next(&tag, &ok);
  RawReply reply;
  if (ok) {
    grpc::Slice slice(request);
    call->WriteLast(grpc::ByteBuffer(&slice, 1), grpc::WriteOptions(), reinterpret_cast<void*>(2));
    cq.Next(&tag, &ok);
    for (;;) {
      grpc::ByteBuffer buffer;
      call->Read(&buffer, reinterpret_cast<void*>(3));
      cq.Next(&tag, &ok);
      if (!ok) break;
      std::vector<grpc::Slice> slices;
      EXPECT_TRUE(buffer.Dump(&slices).ok());
      for (const auto& s : slices) reply.bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
    }
  }
  call->Finish(&reply.status, reinterpret_cast<void*>(4));
  cq.Next(&tag, &ok);
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
  return reply;
}

TEST_F(DaemonTest, ReflectionNeedsTheTokenAndHealthStaysOpen) {
  const std::string reflection = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo";
  const std::string list_services("\x3a\x01*", 3);  // ServerReflectionRequest{list_services: "*"}
  RawReply with_token = RawCall(daemon_->port(), reflection, list_services, "test-token");
  EXPECT_TRUE(with_token.status.ok()) << with_token.status.error_message();
  EXPECT_TRUE(absl::StrContains(with_token.bytes, "lorad.v1.Lorad")) << with_token.bytes;
  for (const std::string token : {"", "wrong-token"}) {
    RawReply denied = RawCall(daemon_->port(), reflection, list_services, token);
    EXPECT_EQ(denied.status.error_code(), grpc::StatusCode::UNAUTHENTICATED) << token;
    EXPECT_FALSE(absl::StrContains(denied.bytes, "lorad.v1")) << denied.bytes;
    EXPECT_TRUE(absl::StrContains(denied.bytes, "bearer token")) << denied.bytes;  // the error_response
  }
  // grpc.health.v1.Health/Check with an empty request: open without a token.
  RawReply health = RawCall(daemon_->port(), "/grpc.health.v1.Health/Check", "", "");
  EXPECT_TRUE(health.status.ok()) << health.status.error_message();
  EXPECT_EQ(health.bytes, std::string("\x08\x01", 2));  // SERVING
}

// Starts an upload of one `bytes`-byte file; the caller ends it.
std::unique_ptr<grpc::ClientWriter<lorad::v1::UploadDatasetRequest>> StartUpload(
    Daemon& d, grpc::ClientContext* ctx, lorad::v1::Dataset* response, const std::string& file, int64_t bytes) {
  auto writer = d.client().stub()->UploadDataset(ctx, response);
  lorad::v1::UploadDatasetRequest header;
  header.mutable_header()->set_name(file);
  header.mutable_header()->set_total_bytes(bytes);
  header.mutable_header()->set_file_count(1);
  writer->Write(header);
  lorad::v1::UploadDatasetRequest chunk;
  chunk.mutable_chunk()->set_path(file);
  chunk.mutable_chunk()->set_data(std::string(static_cast<size_t>(bytes), file[0]));
  writer->Write(chunk);
  return writer;
}

TEST(DaemonDiskTest, ConcurrentUploadsShareTheLimitAndInterruptedUploadsGoAtStart) {
  Daemon d(TestRoot("disk"), DaemonOptions{1, 5, "test-token",
                                           {"--max-upload-bytes", "100000", "--min-free-bytes", "0"}});
  // What a kill -9 mid-upload leaves behind.
  const fs::path partial = d.data_dir() / "datasets" / ".incoming-1234";
  fs::create_directories(partial / "1_cat");
  std::ofstream(partial / "1_cat" / "a.png") << "half an image";
  d.Start();
  EXPECT_FALSE(fs::exists(partial));
  EXPECT_TRUE(absl::StrContains(ReadFile(d.data_dir() / "logs" / "lorad.log"), partial.string()));

  auto ctx1 = d.client().Context(true);
  lorad::v1::Dataset first;
  auto held = StartUpload(d, ctx1.get(), &first, "a.bin", 60000);
  // Each upload is under the limit; both together are not.
  std::this_thread::sleep_for(std::chrono::milliseconds(500));  // the first chunk reaches the daemon
  auto ctx2 = d.client().Context(true);
  lorad::v1::Dataset second;
  auto refused = StartUpload(d, ctx2.get(), &second, "b.bin", 50000);
  refused->WritesDone();
  grpc::Status status = refused->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << status.error_message();
  EXPECT_TRUE(absl::StrContains(status.error_message(), "max_upload_bytes")) << status.error_message();
  EXPECT_TRUE(absl::StrContains(status.error_message(), "concurrent")) << status.error_message();

  held->WritesDone();
  status = held->Finish();
  EXPECT_TRUE(status.ok()) << status.error_message();
  // Its share is given back: the same 50 KB now lands.
  auto ctx3 = d.client().Context(true);
  lorad::v1::Dataset third;
  auto later = StartUpload(d, ctx3.get(), &third, "b.bin", 50000);
  later->WritesDone();
  status = later->Finish();
  EXPECT_TRUE(status.ok()) << status.error_message();
  for (const auto& entry : fs::directory_iterator(d.data_dir() / "datasets")) {
    EXPECT_FALSE(absl::StartsWith(entry.path().filename().string(), ".incoming-")) << entry.path();
  }
  EXPECT_EQ(d.Stop(), 0);
  fs::remove_all(d.data_dir());
}

grpc::Status DeleteDataset(Daemon& d, const std::string& name, lorad::v1::DeleteDatasetResponse* response) {
  auto ctx = d.client().Context();
  lorad::v1::DeleteDatasetRequest request;
  request.set_dataset(name);
  return d.client().stub()->DeleteDataset(ctx.get(), request, response);
}

std::vector<std::string> ListedDatasetIds(Daemon& d) {
  lorad::v1::ListDatasetsResponse datasets;
  auto ctx = d.client().Context();
  EXPECT_TRUE(d.client().stub()->ListDatasets(ctx.get(), {}, &datasets).ok());
  std::vector<std::string> ids;
  for (const auto& dataset : datasets.datasets()) ids.push_back(dataset.id());
  return ids;
}

// Entries of the datasets root whose names start with `prefix`.
std::vector<fs::path> EntriesNamed(const fs::path& root, const std::string& prefix) {
  std::vector<fs::path> found;
  for (const auto& entry : fs::directory_iterator(root)) {
    if (absl::StartsWith(entry.path().filename().string(), prefix)) found.push_back(entry.path());
  }
  return found;
}

struct LoractlResult {
  int exit_code = -1;
  std::string output;  // stdout and stderr
};

LoractlResult RunLoractl(const Daemon& d, const std::string& arguments) {
  const std::string command = absl::StrCat((BuildDir() / "client" / "loractl").string(), " --server 127.0.0.1:",
                                           d.port(), " --token test-token ", arguments, " 2>&1");
  LoractlResult result;
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return result;
  char buffer[4096];
  while (size_t n = fread(buffer, 1, sizeof(buffer), pipe)) result.output.append(buffer, n);
  const int status = pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

TEST(DaemonDatasetDeleteTest, DeleteRefusesTraversalAndDatasetsInUseAndLeftoversGoAtStart) {
  Daemon d(TestRoot("delete"), DaemonOptions{1, 5, "test-token", {}});
  const fs::path datasets_root = d.data_dir() / "datasets";
  // What a daemon stopped mid-removal leaves behind.
  const fs::path leftover = datasets_root / ".deleting-0123-x";
  fs::create_directories(leftover / "1_cat");
  std::ofstream(leftover / "1_cat" / "a.png") << "half removed";
  // Outside the datasets root, and a link to it from inside.
  const fs::path outside = d.data_dir().parent_path() / (d.data_dir().filename().string() + "-outside");
  fs::remove_all(outside);
  fs::create_directories(outside / "x");
  std::ofstream(outside / "sentinel.txt") << "keep me";
  fs::create_directory_symlink(outside, datasets_root / "escape");
  d.Start();
  EXPECT_FALSE(fs::exists(leftover));
  EXPECT_TRUE(absl::StrContains(ReadFile(d.data_dir() / "logs" / "lorad.log"), leftover.string()));

  const std::string used = d.UploadTestDataset(3);
  const std::string spare = d.UploadTestDataset(2);
  ASSERT_NE(used, spare);
  lorad::v1::DeleteDatasetResponse response;

  grpc::Status status = DeleteDataset(d, "no-such-dataset", &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND) << status.error_message();
  EXPECT_TRUE(absl::StrContains(status.error_message(), "no-such-dataset")) << status.error_message();
  for (const std::string& name : std::vector<std::string>{
           "..", "../" + outside.filename().string(), "a/../../x", (outside / "x").string(), outside.string(),
           absl::StrCat(used, "/../../", outside.filename().string()), "escape"}) {
    status = DeleteDataset(d, name, &response);
    EXPECT_TRUE(status.error_code() == grpc::StatusCode::INVALID_ARGUMENT ||
                status.error_code() == grpc::StatusCode::PERMISSION_DENIED)
        << name << ": " << status.error_code() << " " << status.error_message();
  }
  EXPECT_EQ(ReadFile(outside / "sentinel.txt"), "keep me");
  EXPECT_TRUE(fs::is_directory(outside / "x"));
  EXPECT_TRUE(fs::is_symlink(datasets_root / "escape"));
  EXPECT_EQ(ListedDatasetIds(d).size(), 2u);

  // A job on it (queued or already running) holds the dataset.
  const int64_t job = d.Submit(Daemon::TinyConfig(100000, 0), used, "holds-it");
  status = DeleteDataset(d, used, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << status.error_message();
  EXPECT_TRUE(absl::StrContains(status.error_message(), absl::StrCat("job ", job, " 'holds-it'")))
      << status.error_message();
  EXPECT_TRUE(fs::is_directory(datasets_root / used));
  lorad::v1::CancelJobRequest cancel;
  cancel.set_job_id(job);
  lorad::v1::Job cancelled;
  {
    auto ctx = d.client().Context();
    ASSERT_TRUE(d.client().stub()->CancelJob(ctx.get(), cancel, &cancelled).ok());
  }
  d.WaitFor(job, [](const lorad::v1::Job& j) { return IsTerminal(j.state()); }, 60);

  status = DeleteDataset(d, used, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.dataset().id(), used);
  EXPECT_TRUE(response.folder_deleted());
  EXPECT_EQ(ListedDatasetIds(d), std::vector<std::string>{spare});
  EXPECT_FALSE(fs::exists(datasets_root / used));
  // The hidden folder goes in the background.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (!EntriesNamed(datasets_root, ".deleting-").empty() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_TRUE(EntriesNamed(datasets_root, ".deleting-").empty());
  // A job on a deleted dataset is refused at submit, naming it.
  lorad::v1::SubmitJobRequest submit;
  submit.set_config_toml(Daemon::TinyConfig(2, 0));
  submit.set_dataset(used);
  lorad::v1::Job refused;
  {
    auto ctx = d.client().Context();
    status = d.client().stub()->SubmitJob(ctx.get(), submit, &refused);
  }
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND) << status.error_message();

  // loractl: deleted, then unknown (exit 5), then refused (exit 6).
  LoractlResult rm = RunLoractl(d, absl::StrCat("datasets rm ", spare));
  EXPECT_EQ(rm.exit_code, 0) << rm.output;
  EXPECT_TRUE(absl::StrContains(rm.output, absl::StrCat("deleted dataset ", spare))) << rm.output;
  EXPECT_TRUE(ListedDatasetIds(d).empty());
  rm = RunLoractl(d, absl::StrCat("datasets rm ", spare));
  EXPECT_EQ(rm.exit_code, 5) << rm.output;
  EXPECT_TRUE(absl::StrContains(rm.output, spare)) << rm.output;
  rm = RunLoractl(d, "datasets rm ../x");
  EXPECT_EQ(rm.exit_code, 6) << rm.output;
  rm = RunLoractl(d, "datasets rm");
  EXPECT_EQ(rm.exit_code, 2) << rm.output;

  EXPECT_EQ(ReadFile(outside / "sentinel.txt"), "keep me");
  EXPECT_EQ(d.Stop(), 0);
  fs::remove_all(d.data_dir());
  fs::remove_all(outside);
}

TEST(DaemonRestartTest, Kill9MidTrainingResumesFromLastState) {
  Daemon d(TestRoot("restart"), DaemonOptions{1, 5, "t", {}});
  d.Start();
  const std::string dataset = d.UploadTestDataset(3);
  const int64_t id = d.Submit(Daemon::TinyConfig(16, 4), dataset, "survivor");
  // Wait for a saved state past step 4, then pull the plug.
  const std::vector<JobEvent> before = d.ReadEventsUntil(id, [](const lorad::v1::Event& e) {
    return e.has_checkpoint() && e.checkpoint().kind() == lorad::v1::ARTIFACT_KIND_STATE;
  });
  d.Kill9();
  ASSERT_FALSE(before.empty());
  ASSERT_FALSE(before.back().event().has_finished()) << "job ended before a state was saved";
  ASSERT_GE(before.back().event().checkpoint().step(), 4);
  d.Start();
  lorad::v1::Job job = d.WaitFor(id, [](const lorad::v1::Job& j) { return IsTerminal(j.state()); }, 240);
  ASSERT_EQ(job.state(), lorad::v1::JOB_STATE_SUCCEEDED) << job.reason();
  EXPECT_EQ(job.attempts(), 2);
  auto all = d.ReadAllEvents(id);
  // The newest state recorded before the restart (the worker may have saved
  // another one between our read and the kill) is what the job resumes from.
  int64_t saved_step = 0;
  for (const auto& e : all) {
    if (e.event().has_job_started() && e.event().job_started().resumed_from_step() > 0) break;
    if (e.event().has_checkpoint() && e.event().checkpoint().kind() == lorad::v1::ARTIFACT_KIND_STATE) {
      saved_step = e.event().checkpoint().step();
    }
  }
  ASSERT_GE(saved_step, 4);
  EXPECT_EQ(job.resumed_from_step(), saved_step);
  ExpectContiguous(all);
  // Everything streamed before the crash is still there, unchanged.
  ASSERT_GE(all.size(), before.size());
  for (size_t i = 0; i < before.size(); ++i) {
    EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(all[i], before[i])) << "event " << i;
  }
  // The second run starts at the saved step: its first progress step continues.
  int started_runs = 0;
  int64_t first_step_after_resume = 0;
  for (const auto& e : all) {
    if (e.event().has_job_started()) ++started_runs;
    if (started_runs == 2 && e.event().has_progress() && first_step_after_resume == 0) {
      first_step_after_resume = e.event().progress().step();
    }
  }
  EXPECT_EQ(started_runs, 2);
  EXPECT_EQ(first_step_after_resume, saved_step + 1);
  std::fprintf(stderr, "restart timeline (job %lld):\n", static_cast<long long>(id));
  for (const auto& e : all) {
    const auto& ev = e.event();
    std::string what = ev.has_progress()     ? absl::StrCat("progress step ", ev.progress().step())
                       : ev.has_checkpoint() ? absl::StrCat("checkpoint step ", ev.checkpoint().step(), " ",
                                                            lorad::v1::ArtifactKind_Name(ev.checkpoint().kind()))
                       : ev.has_job_started() ? absl::StrCat("job_started resumed_from_step ",
                                                             ev.job_started().resumed_from_step())
                       : ev.has_log()        ? absl::StrCat("log: ", ev.log().message())
                       : ev.has_finished()   ? absl::StrCat("finished ", lorad::v1::Finished::Status_Name(ev.finished().status()))
                       : ev.has_warning()    ? absl::StrCat("warning: ", ev.warning().message())
                                             : "other";
    std::fprintf(stderr, "  seq %3lld  %s\n", static_cast<long long>(e.seq()), what.c_str());
  }
  EXPECT_EQ(d.Stop(), 0);
  auto store = storage::JobStore::Open((d.data_dir() / "lorad.db").string());
  ASSERT_TRUE(store.ok());
  EXPECT_TRUE((*store)->IntegrityCheck().ok());
  fs::remove_all(d.data_dir());
}

grpc::Status TagDataset(Daemon& d, const lorad::v1::TagDatasetRequest& request,
                        lorad::v1::TagDatasetResponse* response) {
  auto ctx = d.client().Context();
  ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::minutes(5));
  return d.client().stub()->TagDataset(ctx.get(), request, response);
}

// TagDataset end to end: upload, tag with the tiny WD14 tagger in the models
// root, read the captions back; the source dataset stays as it was; tagger
// paths outside the models root, symlinks and a corrupt model are refused.
TEST_F(DaemonTest, TagDatasetWritesWd14CaptionsIntoANewDataset) {
  const fs::path fixtures = fs::path(LORAD_REPO_FIXTURES) / "tagger";
  const fs::path models = daemon_->data_dir() / "models";
  fs::create_directories(models / "wd14");
  fs::copy_file(fixtures / "tiny_tagger.onnx", models / "wd14" / "model.onnx", fs::copy_options::overwrite_existing);
  fs::copy_file(fixtures / "selected_tags.csv", models / "wd14" / "selected_tags.csv",
                fs::copy_options::overwrite_existing);
  const fs::path local = daemon_->data_dir().parent_path() / "tag-local-dataset";
  fs::remove_all(local);
  fs::create_directories(local / "10_mychar");
  for (const char* name : {"wide_rgb.png", "tall_rgba.png", "small_gray.png"}) {
    fs::copy_file(fixtures / name, local / "10_mychar" / name);
  }
  std::ofstream(local / "10_mychar" / "tall_rgba.txt") << "mychar, solo, handmade tag\n";
  auto source = daemon_->client().UploadDataset(local, "anime");
  ASSERT_TRUE(source.ok()) << source.status();

  lorad::v1::TagDatasetRequest request;
  request.set_dataset("anime");  // by name
  request.set_model("wd14/model.onnx");  // selected_tags.csv beside it
  request.set_trigger("mychar");
  request.set_keep_tokens(1);
  request.set_threshold(0.5f);
  lorad::v1::TagDatasetResponse response;
  grpc::Status status = TagDataset(*daemon_, request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.source_id(), source->id());
  EXPECT_NE(response.dataset().id(), source->id());
  EXPECT_EQ(response.dataset().name(), "anime-tagged");
  EXPECT_EQ(response.images(), 3);
  EXPECT_EQ(response.written(), 3);
  EXPECT_EQ(response.caption_extension(), ".txt");
  EXPECT_EQ(response.dataset().images(), 3);
  EXPECT_EQ(response.dataset().files(), 6);
  std::map<std::string, std::string> captions;
  for (const auto& c : response.captions()) captions[c.path()] = c.caption();
  const std::string wide = "mychar, 1girl, solo, long hair, smile, ^_^, looking at viewer, kaname madoka (magical girl)";
  EXPECT_EQ(captions["10_mychar/wide_rgb.png"], wide);
  EXPECT_EQ(captions["10_mychar/tall_rgba.png"],
            "mychar, solo, handmade tag, 1girl, smile, ^_^, looking at viewer, kaname madoka (magical girl)");
  // The files of the stored dataset say the same; the source is untouched.
  const fs::path tagged(response.dataset().path());
  EXPECT_EQ(ReadFile(tagged / "10_mychar" / "wide_rgb.txt"), wide + "\n");
  const fs::path source_dir(source->path());
  EXPECT_FALSE(fs::exists(source_dir / "10_mychar" / "wide_rgb.txt"));
  EXPECT_EQ(ReadFile(source_dir / "10_mychar" / "tall_rgba.txt"), "mychar, solo, handmade tag\n");
  lorad::v1::ListDatasetsResponse listed;
  auto ctx = daemon_->client().Context();
  ASSERT_TRUE(daemon_->client().stub()->ListDatasets(ctx.get(), {}, &listed).ok());
  bool found = false;
  for (const auto& d : listed.datasets()) found |= d.id() == response.dataset().id();
  EXPECT_TRUE(found);

  // Tagging the same way again stores nothing new: the same content, the same id.
  request.set_dataset(source->id());
  lorad::v1::TagDatasetResponse again;
  ASSERT_TRUE(TagDataset(*daemon_, request, &again).ok());
  EXPECT_EQ(again.dataset().id(), response.dataset().id());

  // Refusals name the cause.
  auto refused = [&](const std::string& model, grpc::StatusCode code, const std::string& says) {
    lorad::v1::TagDatasetRequest bad = request;
    bad.set_model(model);
    bad.set_tags_csv("wd14/selected_tags.csv");
    lorad::v1::TagDatasetResponse r;
    grpc::Status s = TagDataset(*daemon_, bad, &r);
    EXPECT_EQ(s.error_code(), code) << model << ": " << s.error_message();
    EXPECT_NE(s.error_message().find(says), std::string::npos) << s.error_message();
  };
  refused("../lorad.db", grpc::StatusCode::INVALID_ARGUMENT, "relative to the daemon's models root");
  refused("/etc/passwd", grpc::StatusCode::INVALID_ARGUMENT, "relative to the daemon's models root");
  refused("wd14/absent.onnx", grpc::StatusCode::NOT_FOUND, "absent.onnx");
  fs::create_symlink(fixtures / "tiny_tagger.onnx", models / "wd14" / "link.onnx");
  refused("wd14/link.onnx", grpc::StatusCode::PERMISSION_DENIED, "symbolic link");
  std::ofstream(models / "wd14" / "corrupt.onnx") << "not a model";
  refused("wd14/corrupt.onnx", grpc::StatusCode::INVALID_ARGUMENT, "corrupt.onnx");
  lorad::v1::TagDatasetRequest unknown = request;
  unknown.set_dataset("no-such-dataset");
  lorad::v1::TagDatasetResponse r;
  EXPECT_EQ(TagDataset(*daemon_, unknown, &r).error_code(), grpc::StatusCode::NOT_FOUND);
  // Nothing staged is left behind.
  for (const auto& entry : fs::directory_iterator(daemon_->data_dir() / "datasets")) {
    EXPECT_NE(entry.path().filename().string().rfind(".incoming-", 0), 0u) << entry.path();
  }
  fs::remove_all(local);
}

}  // namespace
}  // namespace lorad::tests
