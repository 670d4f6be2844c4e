// Models as records through a real daemon (issue 13): pulls from a loopback
// HTTP(S) server that drops the connection halfway, serves wrong bytes or
// stalls across a daemon restart; two jobs waiting on one download; uploads
// interrupted halfway and resumed; the free-space reserve.
#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "core/base/sha256.h"
#include "server/net/test_server.h"
#include "tests/daemon_harness.h"

namespace lorad::tests {
namespace {

namespace fs = std::filesystem;
using net::testing::ServeBytes;
using net::testing::TestRequest;
using net::testing::TestResponse;
using net::testing::TestServer;

std::string ReadAll(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream out;
  out << in.rdbuf();
  return out.str();
}

// lorad-mkmodel's demo tokenizer beside the harness's tiny checkpoint (a
// pulled file has no companion folder of its own).
constexpr char kTokenizer[] = "tokenizer_path = \"tiny_sdxl.tokenizer\"\n";

fs::path TestRoot() {
  return fs::temp_directory_path() /
         absl::StrCat("lorad_models_", ::getpid(), "_", ::testing::UnitTest::GetInstance()->current_test_info()->name());
}

lorad::v1::Model GetModel(Daemon& daemon, const std::string& reference) {
  lorad::v1::GetModelRequest request;
  request.set_model(reference);
  lorad::v1::Model model;
  auto ctx = daemon.client().Context();
  grpc::Status status = daemon.client().stub()->GetModel(ctx.get(), request, &model);
  EXPECT_TRUE(status.ok()) << status.error_message();
  return model;
}

lorad::v1::Model Pull(Daemon& daemon, const std::string& url, const std::string& sha256, const std::string& name,
                      grpc::Status* status_out = nullptr) {
  lorad::v1::PullModelRequest request;
  request.set_url(url);
  request.set_sha256(sha256);
  request.set_name(name);
  lorad::v1::Model model;
  auto ctx = daemon.client().Context();
  grpc::Status status = daemon.client().stub()->PullModel(ctx.get(), request, &model);
  if (status_out != nullptr) {
    *status_out = status;
  } else {
    EXPECT_TRUE(status.ok()) << status.error_message();
  }
  return model;
}

// Follows WatchModel until READY or FAILED; the records seen.
std::vector<lorad::v1::Model> Watch(Daemon& daemon, const std::string& reference) {
  lorad::v1::GetModelRequest request;
  request.set_model(reference);
  auto ctx = daemon.client().Context(true);
  ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  auto reader = daemon.client().stub()->WatchModel(ctx.get(), request);
  std::vector<lorad::v1::Model> seen;
  lorad::v1::Model model;
  while (reader->Read(&model)) seen.push_back(model);
  grpc::Status status = reader->Finish();
  EXPECT_TRUE(status.ok()) << status.error_message();
  return seen;
}

class ModelsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = TestRoot();
    fs::remove_all(root_);
  }
  void TearDown() override {
    daemon_.reset();
    fs::remove_all(root_);
  }
  // A daemon with no free-space reserve (the tests' disks are small) plus `flags`.
  Daemon& StartDaemon(std::vector<std::string> flags = {}) {
    DaemonOptions options;
    options.extra_flags = {"--models-free-reserve-gb", "0"};
    options.extra_flags.insert(options.extra_flags.end(), flags.begin(), flags.end());
    daemon_ = std::make_unique<Daemon>(root_ / "data", options);
    model_bytes_ = ReadAll(root_ / "data" / "models" / "tiny_sdxl.safetensors");
    model_sha_ = Sha256Hex(model_bytes_);
    daemon_->Start();
    return *daemon_;
  }

  fs::path root_;
  std::unique_ptr<Daemon> daemon_;
  std::string model_bytes_;
  std::string model_sha_;
};

TEST_F(ModelsTest, PullDroppedHalfwayResumesWithRangeAndIsVerified) {
  Daemon& daemon = StartDaemon();
  const std::string* bytes = &model_bytes_;
  TestServer server([bytes](const TestRequest& request) {
    TestResponse response = ServeBytes(request, *bytes);
    if (request.index == 0) response.drop_after = static_cast<int64_t>(bytes->size() / 2);
    return response;
  });
  const lorad::v1::Model queued = Pull(daemon, server.url("/files/tiny_sdxl.safetensors"), model_sha_, "");
  EXPECT_EQ(queued.name(), "tiny_sdxl");  // from the file name
  EXPECT_EQ(queued.state(), lorad::v1::MODEL_DOWNLOADING);
  const std::vector<lorad::v1::Model> seen = Watch(daemon, "tiny_sdxl");
  ASSERT_FALSE(seen.empty());
  const lorad::v1::Model& ready = seen.back();
  ASSERT_EQ(ready.state(), lorad::v1::MODEL_READY) << ready.reason();
  EXPECT_EQ(ready.sha256(), model_sha_);
  EXPECT_EQ(ready.bytes(), static_cast<int64_t>(model_bytes_.size()));
  EXPECT_EQ(ready.family(), "sdxl");
  EXPECT_EQ(ready.prediction(), "epsilon");
  const fs::path stored = daemon.data_dir() / "models" / "sha256" / absl::StrCat(model_sha_, ".safetensors");
  EXPECT_EQ(ready.path(), stored.string());
  EXPECT_EQ(ReadAll(stored), model_bytes_);
  const auto requests = server.requests();
  ASSERT_EQ(requests.size(), 2u);
  EXPECT_EQ(requests[1].Header("Range"), absl::StrCat("bytes=", model_bytes_.size() / 2, "-"));

  // The same pull again: the record, no second download.
  const lorad::v1::Model again = Pull(daemon, server.url("/files/tiny_sdxl.safetensors"), model_sha_, "");
  EXPECT_EQ(again.id(), ready.id());
  EXPECT_EQ(again.state(), lorad::v1::MODEL_READY);
  EXPECT_EQ(server.request_count(), 2u);

  // rm removes the record and the file.
  lorad::v1::DeleteModelRequest rm;
  rm.set_model(absl::StrCat("sha256:", model_sha_.substr(0, 12)));
  lorad::v1::DeleteModelResponse removed;
  auto ctx = daemon.client().Context();
  ASSERT_TRUE(daemon.client().stub()->DeleteModel(ctx.get(), rm, &removed).ok());
  EXPECT_EQ(removed.model().name(), "tiny_sdxl");
  EXPECT_FALSE(fs::exists(stored));
}

TEST_F(ModelsTest, WrongBytesAreCaughtBySha256) {
  Daemon& daemon = StartDaemon();
  std::string wrong = model_bytes_;
  wrong[wrong.size() - 10] ^= 0x5a;
  TestServer server([&wrong](const TestRequest& request) { return ServeBytes(request, wrong); });
  Pull(daemon, server.url("/m.safetensors"), model_sha_, "tampered");
  const lorad::v1::Model failed = Watch(daemon, "tampered").back();
  ASSERT_EQ(failed.state(), lorad::v1::MODEL_FAILED);
  EXPECT_NE(failed.reason().find("sha256 mismatch"), std::string::npos) << failed.reason();
  EXPECT_NE(failed.reason().find(model_sha_), std::string::npos) << failed.reason();
  EXPECT_TRUE(fs::is_empty(daemon.data_dir() / "models" / ".partial"));
  EXPECT_FALSE(fs::exists(daemon.data_dir() / "models" / "sha256" / absl::StrCat(model_sha_, ".safetensors")));

  // A job naming the failed model is refused with the reason.
  lorad::v1::SubmitJobRequest submit;
  submit.set_config_toml(absl::StrReplaceAll(Daemon::TinyConfig(2, 0), {{"tiny_sdxl.safetensors", "tampered"}}));
  lorad::v1::Job job;
  auto ctx = daemon.client().Context();
  grpc::Status status = daemon.client().stub()->SubmitJob(ctx.get(), submit, &job);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << status.error_message();
  EXPECT_NE(status.error_message().find("sha256 mismatch"), std::string::npos) << status.error_message();
}

TEST_F(ModelsTest, APullInterruptedByADaemonRestartResumes) {
  Daemon& daemon = StartDaemon();
  const std::string* bytes = &model_bytes_;
  const int64_t half = static_cast<int64_t>(model_bytes_.size() / 2);
  TestServer server([bytes, half](const TestRequest& request) {
    TestResponse response = ServeBytes(request, *bytes);
    if (request.index == 0) response.stall_after = half;  // then the daemon goes away
    return response;
  });
  const lorad::v1::Model queued = Pull(daemon, server.url("/tiny.safetensors"), "", "restart");
  EXPECT_TRUE(queued.sha256().empty());
  // Wait until the first half is on disk.
  const fs::path partial = daemon.data_dir() / "models" / ".partial" / absl::StrCat(queued.id(), ".part");
  for (int i = 0; i < 500 && !(fs::exists(partial) && static_cast<int64_t>(fs::file_size(partial)) == half); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_EQ(static_cast<int64_t>(fs::file_size(partial)), half);
  daemon.Kill9();
  daemon.Start();
  const lorad::v1::Model ready = Watch(daemon, "restart").back();
  ASSERT_EQ(ready.state(), lorad::v1::MODEL_READY) << ready.reason();
  EXPECT_EQ(ready.sha256(), model_sha_);  // computed: no hash was given
  const auto requests = server.requests();
  ASSERT_EQ(requests.size(), 2u);
  EXPECT_EQ(requests[1].Header("Range"), absl::StrCat("bytes=", half, "-"));
}

TEST_F(ModelsTest, TwoJobsWaitOnOneDownloadThenBothRun) {
  Daemon& daemon = StartDaemon();
  std::atomic<bool> open{false};
  const std::string* bytes = &model_bytes_;
  TestServer server([bytes, &open](const TestRequest& request) {
    while (!open.load()) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    return ServeBytes(request, *bytes);
  });
  Pull(daemon, server.url("/base.safetensors"), model_sha_, "base");
  const std::string dataset = daemon.UploadTestDataset(2);
  const std::string config =
      absl::StrReplaceAll(Daemon::TinyConfig(2, 0, kTokenizer), {{"tiny_sdxl.safetensors", "base"}});
  const int64_t first = daemon.Submit(config, dataset, "first");
  const int64_t second = daemon.Submit(
      absl::StrReplaceAll(config, {{"\"base\"", absl::StrCat("\"sha256:", model_sha_, "\"")}}), dataset, "second");
  std::this_thread::sleep_for(std::chrono::seconds(2));
  EXPECT_EQ(daemon.GetJob(first).state(), lorad::v1::JOB_STATE_QUEUED);
  EXPECT_EQ(daemon.GetJob(second).state(), lorad::v1::JOB_STATE_QUEUED);
  // A model in use by a queued job cannot be deleted.
  {
    lorad::v1::DeleteModelRequest rm;
    rm.set_model("base");
    lorad::v1::DeleteModelResponse response;
    auto ctx = daemon.client().Context();
    grpc::Status status = daemon.client().stub()->DeleteModel(ctx.get(), rm, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << status.error_message();
  }
  open = true;
  for (int64_t job : {first, second}) {
    const lorad::v1::Job done = daemon.WaitFor(job, [](const lorad::v1::Job& j) { return IsTerminal(j.state()); }, 300);
    EXPECT_EQ(done.state(), lorad::v1::JOB_STATE_SUCCEEDED) << done.reason();
  }
  EXPECT_EQ(server.request_count(), 1u);  // one download for both
  const std::string stored =
      (daemon.data_dir() / "models" / "sha256" / absl::StrCat(model_sha_, ".safetensors")).string();
  const std::string job_config = ReadAll(daemon.data_dir() / "jobs" / std::to_string(first) / "config.toml");
  EXPECT_NE(job_config.find(stored), std::string::npos) << job_config;
}

TEST_F(ModelsTest, AFailedDownloadFailsTheWaitingJobs) {
  Daemon& daemon = StartDaemon();
  std::atomic<bool> answer{false};
  TestServer server([&answer](const TestRequest&) {
    while (!answer.load()) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    TestResponse response;
    response.status = 404;
    return response;
  });
  const std::string dataset = daemon.UploadTestDataset(1);
  Pull(daemon, server.url("/gone.safetensors"), "", "gone");
  const int64_t job = daemon.Submit(
      absl::StrReplaceAll(Daemon::TinyConfig(2, 0, kTokenizer), {{"tiny_sdxl.safetensors", "gone"}}), dataset, "waits");
  answer = true;
  const lorad::v1::Job failed = daemon.WaitFor(job, [](const lorad::v1::Job& j) { return IsTerminal(j.state()); }, 60);
  EXPECT_EQ(failed.state(), lorad::v1::JOB_STATE_FAILED);
  EXPECT_NE(failed.reason().find("base model 'gone' failed"), std::string::npos) << failed.reason();
  EXPECT_NE(failed.reason().find("HTTP 404"), std::string::npos) << failed.reason();
}

TEST_F(ModelsTest, HuggingFaceUrlsOverHttpsWithTheTestCaAndAToken) {
  auto ca = net::testing::MakeTestCa(root_ / "ca");
  ASSERT_TRUE(ca.ok()) << ca.status();
  std::string served;
  TestServer server(
      [&served](const TestRequest& request) {
        if (request.target != "/org/repo/resolve/main/unet/tiny.safetensors" ||
            request.Header("Authorization") != "Bearer hf_test_secret") {
          TestResponse response;
          response.status = 401;
          return response;
        }
        return ServeBytes(request, served);
      },
      &*ca);
  ::setenv("HF_TOKEN", "hf_test_secret", 1);
  Daemon& daemon = StartDaemon({"--models-ca", ca->ca_cert.string(), "--hf-base-url", server.url("")});
  ::unsetenv("HF_TOKEN");
  served = model_bytes_;
  Pull(daemon, "hf://org/repo/unet/tiny.safetensors", model_sha_, "");
  const lorad::v1::Model ready = Watch(daemon, "tiny").back();
  ASSERT_EQ(ready.state(), lorad::v1::MODEL_READY) << ready.reason();
  EXPECT_EQ(ready.source_url(), "hf://org/repo/unet/tiny.safetensors");

  // Plain http to another machine is refused up front.
  grpc::Status refused;
  Pull(daemon, "http://example.com/x.safetensors", "", "x", &refused);
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(ModelsTest, UploadInterruptedAtHalfThenResumed) {
  Daemon& daemon = StartDaemon();
  const fs::path file = daemon.data_dir() / "models" / "tiny_sdxl.safetensors";
  const int64_t size = static_cast<int64_t>(model_bytes_.size());
  // 1 MiB chunks: stop after half (at least one chunk). The client cancels as
  // soon as gRPC has taken the chunks; on a loaded machine the daemon can see
  // the cancellation before it reads any (a dropped connection can too) and
  // then keeps nothing, so the interruption is repeated until it kept some.
  lorad::v1::Model partial;
  for (int attempt = 0; attempt < 5 && partial.bytes_done() == 0; ++attempt) {
    auto stopped = daemon.client().UploadModel(file, "uploaded", std::max<int64_t>(size / 2, 1));
    ASSERT_EQ(stopped.status().code(), absl::StatusCode::kAborted) << stopped.status();
    // The daemon records what it kept when the cancelled call ends.
    int64_t previous = -1;
    for (int i = 0; i < 30; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      lorad::v1::GetModelRequest request;
      request.set_model("uploaded");
      auto ctx = daemon.client().Context();
      if (!daemon.client().stub()->GetModel(ctx.get(), request, &partial).ok()) continue;  // not recorded yet
      if (partial.bytes_done() > 0 && partial.bytes_done() == previous) break;
      previous = partial.bytes_done();
    }
  }
  ASSERT_EQ(partial.state(), lorad::v1::MODEL_UPLOADING);
  EXPECT_GT(partial.bytes_done(), 0);
  EXPECT_LT(partial.bytes_done(), size);
  const int64_t kept = partial.bytes_done();

  int64_t first_sent = -1;
  auto resumed = daemon.client().UploadModel(file, "uploaded", 0, [&](int64_t sent, int64_t) {
    if (first_sent < 0) first_sent = sent;
  });
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  EXPECT_EQ(resumed->state(), lorad::v1::MODEL_READY);
  EXPECT_EQ(resumed->sha256(), model_sha_);
  EXPECT_EQ(resumed->family(), "sdxl");
  EXPECT_GT(first_sent, kept);  // the first chunk sent continued after the kept bytes
  EXPECT_LE(first_sent, kept + (1 << 20));
  EXPECT_EQ(ReadAll(resumed->path()), model_bytes_);

  // Uploading it again sends nothing: it is there.
  auto again = daemon.client().UploadModel(file, "other-name");
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->id(), resumed->id());
}

TEST_F(ModelsTest, TheFreeSpaceReserveRefusesAnUpload) {
  Daemon& daemon = StartDaemon({"--models-free-reserve-gb", "1000000"});  // a petabyte: never free
  auto refused = daemon.client().UploadModel(daemon.data_dir() / "models" / "tiny_sdxl.safetensors", "big");
  ASSERT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted) << refused.status();
  EXPECT_NE(refused.status().message().find("models_free_reserve_gb"), std::string::npos) << refused.status();
  lorad::v1::ListModelsResponse models;
  auto ctx = daemon.client().Context();
  ASSERT_TRUE(daemon.client().stub()->ListModels(ctx.get(), {}, &models).ok());
  EXPECT_EQ(models.models_size(), 0);  // nothing recorded
}

}  // namespace
}  // namespace lorad::tests
