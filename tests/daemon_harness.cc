#include "tests/daemon_harness.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <thread>

#include <gtest/gtest.h>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "absl/strings/str_cat.h"

namespace lorad::tests {
namespace fs = std::filesystem;

fs::path BuildDir() {
  const char* dir = std::getenv("LORAD_BUILD_DIR");
  return dir ? fs::path(dir) : fs::current_path();
}

fs::path FixturesDir() {
  if (const char* dir = std::getenv("LORAD_FIXTURES")) return dir;
  return fs::path(LORAD_SOURCE_DIR).parent_path() / "shared" / "fixtures";
}

fs::path WorkerBinary() {
  if (const char* worker = std::getenv("LORAD_TEST_WORKER")) return worker;
  return BuildDir() / "core" / "train" / "lorad-train";
}

bool IsTerminal(lorad::v1::JobState s) {
  return s == lorad::v1::JOB_STATE_SUCCEEDED || s == lorad::v1::JOB_STATE_FAILED ||
         s == lorad::v1::JOB_STATE_CANCELLED;
}

void MakeImageDataset(const fs::path& dir, int count, int size, int repeats) {
  const fs::path subject = dir / absl::StrCat(repeats, "_shape");
  fs::create_directories(subject);
  for (int i = 0; i < count; ++i) {
    cv::Mat image(size, size, CV_8UC3, cv::Scalar(40 * i % 255, 90, 200 - 30 * i % 200));
    cv::circle(image, {size / 2, size / 2}, size / 4 + i, cv::Scalar(250, 250 - 40 * i % 250, 30), -1);
    const std::string stem = absl::StrCat("img", i);
    ASSERT_TRUE(cv::imwrite((subject / (stem + ".png")).string(), image));
    std::ofstream(subject / (stem + ".txt")) << "a shape, circle " << i << ", plain background";
  }
}

Daemon::Daemon(fs::path root, DaemonOptions options) : data_dir_(std::move(root)), options_(std::move(options)) {
  fs::remove_all(data_dir_);
  fs::create_directories(data_dir_ / "models");
  // A real tiny SDXL checkpoint (+ its companion demo tokenizer) from lorad-mkmodel.
  const std::string mkmodel = absl::StrCat((BuildDir() / "core" / "models" / "lorad-mkmodel").string(),
                                           " --arch sdxl --size tiny --seed 3 '",
                                           (data_dir_ / "models" / "tiny_sdxl.safetensors").string(), "'");
  EXPECT_EQ(std::system(mkmodel.c_str()), 0) << mkmodel;
}

Daemon::~Daemon() {
  if (pid_ > 0) Kill9();
}

std::string Daemon::TinyConfig(int max_steps, int save_every_n_steps, const std::string& extra) {
  return absl::StrCat(
      "pretrained_model_name_or_path = \"tiny_sdxl.safetensors\"\n"
      "device = \"cpu\"\n"
      "output_name = \"tiny\"\n"
      "caption_extension = \".txt\"\n"
      "resolution = \"64\"\n"
      "network_module = \"networks.lora\"\n"
      "network_dim = 4\n"
      "network_alpha = 4\n"
      "network_train_unet_only = true\n"
      "learning_rate = 1e-3\n"
      "optimizer_type = \"AdamW\"\n"
      "train_batch_size = 1\n"
      "seed = 7\n",
      "max_train_steps = ", max_steps, "\n",
      save_every_n_steps > 0 ? absl::StrCat("save_every_n_steps = ", save_every_n_steps, "\n") : "",
      extra);
}

void Daemon::Start() {
  ASSERT_LT(pid_, 0) << "already running";
  fs::remove(data_dir_ / "lorad.port");
  fs::remove(data_dir_ / "lorad.http-port");
  std::vector<std::string> args = {(BuildDir() / "server" / "lorad").string(),
                                   "--listen", "127.0.0.1:0",
                                   "--http", "127.0.0.1:0",
                                   "--data-dir", data_dir_.string(),
                                   "--slots", std::to_string(options_.slots),
                                   "--grace-s", absl::StrCat(options_.grace_s),
                                   "--worker", WorkerBinary().string(),
                                   "--curate", (BuildDir() / "core" / "data" / "lorad-curate").string()};
  if (!options_.token.empty()) args.insert(args.end(), {"--token", options_.token});
  args.insert(args.end(), options_.extra_flags.begin(), options_.extra_flags.end());
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  const std::string log = (data_dir_ / "lorad.stderr").string();
  pid_ = fork();
  ASSERT_GE(pid_, 0);
  if (pid_ == 0) {
    FILE* out = std::freopen(log.c_str(), "a", stderr);
    (void)out;
    ::unsetenv("LORAD_TOKEN");
    execv(argv[0], argv.data());
    _exit(127);
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (!fs::exists(data_dir_ / "lorad.port")) {
    int status = 0;
    ASSERT_EQ(waitpid(pid_, &status, WNOHANG), 0) << "lorad exited at start; see " << log;
    ASSERT_LT(std::chrono::steady_clock::now(), deadline) << "lorad did not start; see " << log;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  std::ifstream(data_dir_ / "lorad.port") >> port_;
  ASSERT_GT(port_, 0);
  // Written before lorad.port (the dashboard starts first).
  std::ifstream(data_dir_ / "lorad.http-port") >> http_port_;
  ASSERT_GT(http_port_, 0) << "no dashboard port; see " << log;
  client_ = NewClient(options_.token);
  lorad::v1::ServerInfo info;
  auto ctx = client_->Context();
  ctx->set_wait_for_ready(true);
  ASSERT_TRUE(client_->stub()->GetServerInfo(ctx.get(), {}, &info).ok());
}

std::unique_ptr<client::Client> Daemon::NewClient(const std::string& token) const {
  client::Connection c;
  c.server = absl::StrCat("127.0.0.1:", port_);
  c.token = token;
  c.timeout = std::chrono::seconds(20);
  return std::make_unique<client::Client>(c);
}

int Daemon::Stop() {
  if (pid_ <= 0) return -1;
  kill(pid_, SIGTERM);
  int status = 0;
  waitpid(pid_, &status, 0);
  pid_ = -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

void Daemon::Kill9() {
  if (pid_ <= 0) return;
  kill(pid_, SIGKILL);
  int status = 0;
  waitpid(pid_, &status, 0);
  pid_ = -1;
}

int64_t Daemon::Submit(const std::string& config, const std::string& dataset, const std::string& name,
                       const std::string& request_id) {
  lorad::v1::SubmitJobRequest request;
  request.set_config_toml(config);
  request.set_dataset(dataset);
  request.set_name(name);
  request.set_request_id(request_id);
  lorad::v1::Job job;
  auto ctx = client_->Context();
  grpc::Status status = client_->stub()->SubmitJob(ctx.get(), request, &job);
  EXPECT_TRUE(status.ok()) << status.error_message();
  return job.id();
}

lorad::v1::Job Daemon::GetJob(int64_t job_id) {
  lorad::v1::GetJobRequest request;
  request.set_job_id(job_id);
  lorad::v1::Job job;
  auto ctx = client_->Context();
  grpc::Status status = client_->stub()->GetJob(ctx.get(), request, &job);
  EXPECT_TRUE(status.ok()) << status.error_message();
  return job;
}

lorad::v1::Job Daemon::WaitFor(int64_t job_id, const std::function<bool(const lorad::v1::Job&)>& pred,
                               double timeout_s) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(int64_t(timeout_s * 1000));
  lorad::v1::Job job;
  while (std::chrono::steady_clock::now() < deadline) {
    job = GetJob(job_id);
    if (pred(job)) return job;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ADD_FAILURE() << "timed out waiting on job " << job_id << " (state "
                << lorad::v1::JobState_Name(job.state()) << ", reason: " << job.reason() << ")";
  return job;
}

std::vector<lorad::v1::JobEvent> Daemon::ReadAllEvents(int64_t job_id, int64_t after_seq) {
  auto ctx = client_->Context(true);
  ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::minutes(5));
  lorad::v1::StreamEventsRequest request;
  request.set_job_id(job_id);
  request.set_after_seq(after_seq);
  auto reader = client_->stub()->StreamEvents(ctx.get(), request);
  std::vector<lorad::v1::JobEvent> events;
  lorad::v1::JobEvent event;
  while (reader->Read(&event)) events.push_back(event);
  grpc::Status status = reader->Finish();
  EXPECT_TRUE(status.ok()) << status.error_message();
  return events;
}

std::vector<lorad::v1::JobEvent> Daemon::ReadEventsUntil(
    int64_t job_id, const std::function<bool(const lorad::v1::Event&)>& stop) {
  auto ctx = client_->Context(true);
  ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::minutes(5));
  lorad::v1::StreamEventsRequest request;
  request.set_job_id(job_id);
  auto reader = client_->stub()->StreamEvents(ctx.get(), request);
  std::vector<lorad::v1::JobEvent> events;
  lorad::v1::JobEvent event;
  while (reader->Read(&event)) {
    events.push_back(event);
    if (stop(event.event()) || event.event().has_finished()) break;
  }
  ctx->TryCancel();
  reader->Finish();
  return events;
}

void ExpectContiguous(const std::vector<lorad::v1::JobEvent>& events, int64_t first, const std::string& what) {
  for (size_t i = 0; i < events.size(); ++i) {
    ASSERT_EQ(events[i].seq(), first + static_cast<int64_t>(i)) << what << ": gap or duplicate at index " << i;
  }
}

std::string Daemon::UploadTestDataset(int images) {
  const fs::path local = data_dir_.parent_path() / (data_dir_.filename().string() + "-local-dataset");
  fs::remove_all(local);
  MakeImageDataset(local, images);
  auto dataset = client_->UploadDataset(local, "shapes");
  EXPECT_TRUE(dataset.ok()) << dataset.status();
  fs::remove_all(local);  // the daemon keeps its own copy; /tmp keeps nothing of the test
  return dataset.ok() ? dataset->id() : "";
}

}  // namespace lorad::tests
