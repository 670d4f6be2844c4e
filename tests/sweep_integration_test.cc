// Issue 7 end to end: the real daemon runs a 2 datasets x 2 learning rates sweep
// (zip mode, so exactly one job gets a learning rate that diverges) with the
// real lorad-train on the tiny SDXL model, and loractl reads the morning view.
// The sweep runs once per suite (NightSweepTest); each test checks one
// behaviour of it. SweepControlTest covers refusal and cancellation.
#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "client/charts/charts.h"
#include "core/base/testing/scoped_temp_dir.h"
#include "core/planner/number_format.h"
#include "tests/daemon_harness.h"
#include "server/net/test_server.h"

namespace lorad::tests {
namespace {

namespace fs = std::filesystem;

struct CommandResult {
  int exit_code = -1;
  std::string out;
};

// Runs loractl against the daemon; stdout captured, stderr to the test log.
CommandResult Loractl(const Daemon& d, const std::string& arguments) {
  const std::string command = absl::StrCat((BuildDir() / "client" / "loractl").string(),
                                           " --server 127.0.0.1:", d.port(), " --token test-token ", arguments);
  CommandResult result;
  FILE* pipe = ::popen(command.c_str(), "r");
  if (pipe == nullptr) return result;
  char buffer[4096];
  size_t n;
  while ((n = std::fread(buffer, 1, sizeof(buffer), pipe)) > 0) result.out.append(buffer, n);
  const int status = ::pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

int64_t MtimeMs(const fs::path& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return -1;
  return int64_t{st.st_mtim.tv_sec} * 1000 + st.st_mtim.tv_nsec / 1000000;
}

// Pixels that differ from the image's most common (background) colour.
double NonBackgroundFraction(const cv::Mat& image) {
  std::map<std::tuple<int, int, int>, int> counts;
  for (int y = 0; y < image.rows; ++y) {
    for (int x = 0; x < image.cols; ++x) {
      const auto& p = image.at<cv::Vec3b>(y, x);
      ++counts[{p[0], p[1], p[2]}];
    }
  }
  int most = 0;
  for (const auto& [colour, count] : counts) most = std::max(most, count);
  return 1.0 - static_cast<double>(most) / (image.rows * image.cols);
}

// Polls GetSweep until `done` or the timeout; returns the last sweep seen.
lorad::v1::Sweep WaitForSweep(Daemon& d, int64_t sweep_id, const std::function<bool(const lorad::v1::Sweep&)>& done,
                              double timeout_s) {
  lorad::v1::Sweep sweep;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
  while (std::chrono::steady_clock::now() < deadline) {
    lorad::v1::GetSweepRequest request;
    request.set_sweep_id(sweep_id);
    auto ctx = d.client().Context();
    if (d.client().stub()->GetSweep(ctx.get(), request, &sweep).ok() && done(sweep)) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return sweep;
}

// The night sweep, run once for the suite (it trains four jobs: minutes), then
// checked one behaviour per test.
class NightSweepTest : public ::testing::Test {
 protected:
  struct Night {
    lorad::testing::ScopedTempDir root{"lorad_sweep_it"};
    net::testing::TestServer hooks{[](const net::testing::TestRequest&) { return net::testing::TestResponse{}; }};
    std::unique_ptr<Daemon> daemon;
    std::vector<int> image_counts = {3, 4};  // two datasets
    std::vector<std::string> dataset_ids;
    int64_t sweep_id = 0;
    lorad::v1::Sweep sweep;  // as it stood when its last job ended
    std::string error;       // why the suite could not be set up
  };

  static void SetUpTestSuite() {
    night_ = std::make_unique<Night>();
    night_->error = RunNight(*night_);
  }
  static void TearDownTestSuite() {
    if (night_->daemon != nullptr && night_->daemon->running()) {
      EXPECT_EQ(night_->daemon->Stop(), 0);
    }
    night_.reset();  // the daemon stops before its temp dir goes
  }
  void SetUp() override {
    if (!night_->error.empty()) GTEST_FAIL() << "night sweep setup: " << night_->error;
  }

  // Starts the daemon with a webhook, uploads two datasets (each with a preview
  // prompt file), submits a zip sweep of 4 jobs in which learning rate 1000 diverges, and
  // waits for it to end. Returns an error message, empty on success.
  static std::string RunNight(Night& n) {
    if (!n.hooks.ok()) return "the webhook test server did not start";
    DaemonOptions options;
    options.extra_flags = {"--webhook", n.hooks.url("/hook")};
    n.daemon = std::make_unique<Daemon>(n.root / "daemon", options);
    Daemon& d = *n.daemon;
    d.Start();
    if (!d.running() || d.port() <= 0) return "lorad did not start";
    for (size_t i = 0; i < n.image_counts.size(); ++i) {
      const fs::path dir = n.root / absl::StrCat("dataset", i);
      MakeImageDataset(dir, n.image_counts[i], 64, 1);
      std::ofstream(dir / "prompts.txt") << "a shape, circle --w 64 --h 64 --s 2 --d 1\n";
      auto uploaded = d.client().UploadDataset(dir, absl::StrCat("shapes", i));
      if (!uploaded.ok()) return absl::StrCat("upload: ", uploaded.status().ToString());
      n.dataset_ids.push_back(uploaded->id());
    }
    if (n.dataset_ids[0] == n.dataset_ids[1]) return "the two datasets got the same id";

    const std::string sweep_toml = absl::StrCat(
        Daemon::TinyConfig(4, 0, "sample_every_n_steps = 4\nsample_prompts = \"prompts.txt\"\n"),
        "[sweep]\nmode = \"zip\"\n",
        "dataset = [\"", n.dataset_ids[0], "\", \"", n.dataset_ids[0], "\", \"", n.dataset_ids[1], "\", \"",
        n.dataset_ids[1], "\"]\n",
        // 1000 (the largest learning rate SubmitJob accepts) makes the weights
        // overflow: lorad-train's divergence guard fails that job.
        "learning_rate = [1e-3, 5e-4, 1e-3, 1000]\n");
    const fs::path sweep_file = n.root / "night.toml";
    std::ofstream(sweep_file) << sweep_toml;
    const CommandResult submitted = Loractl(d, absl::StrCat("sweep ", sweep_file.string(), " --name night"));
    if (submitted.exit_code != 0) return absl::StrCat("loractl sweep: ", submitted.out);
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(submitted.out), &n.sweep_id)) {
      return absl::StrCat("loractl sweep printed no id: ", submitted.out);
    }
    n.sweep = WaitForSweep(
        d, n.sweep_id, [](const lorad::v1::Sweep& s) { return s.jobs_total() > 0 && s.jobs_active() == 0; }, 400);
    if (n.sweep.jobs_total() == 0 || n.sweep.jobs_active() != 0) return "sweep did not finish";
    return "";
  }

  static Daemon& daemon() { return *night_->daemon; }
  static const lorad::v1::Sweep& sweep() { return night_->sweep; }
  static int64_t sweep_id() { return night_->sweep_id; }
  static const fs::path& root() { return night_->root.path(); }
  // Sweep order: dataset and learning rate of each job.
  static std::vector<std::pair<std::string, double>> Expected() {
    const auto& ids = night_->dataset_ids;
    return {{ids[0], 1e-3}, {ids[0], 5e-4}, {ids[1], 1e-3}, {ids[1], 1000}};
  }
  // Jobs that wrote at least one preview (sample event).
  static int JobsWithSamples() {
    int jobs_with_samples = 0;
    for (const auto& job : sweep().jobs()) {
      bool has = false;
      for (const auto& e : daemon().ReadAllEvents(job.id())) has |= e.event().has_sample();
      jobs_with_samples += has ? 1 : 0;
    }
    return jobs_with_samples;
  }

  static inline std::unique_ptr<Night> night_;
};

TEST_F(NightSweepTest, ThreeJobsSucceedAndTheDivergingOneFails) {
  ASSERT_EQ(sweep().jobs_total(), 4);
  EXPECT_EQ(sweep().jobs_succeeded(), 3);
  EXPECT_EQ(sweep().jobs_failed(), 1);
  ASSERT_EQ(sweep().varied_keys_size(), 2);
  EXPECT_EQ(sweep().varied_keys(0), "dataset");
  EXPECT_EQ(sweep().varied_keys(1), "learning_rate");
}

TEST_F(NightSweepTest, JobsAreInSweepOrderNamedAfterItWithTheirVariedValues) {
  ASSERT_EQ(sweep().jobs_size(), 4);
  const auto expected = Expected();
  for (int i = 0; i < 4; ++i) {
    const auto& job = sweep().jobs(i);
    EXPECT_EQ(job.name().rfind("night/", 0), 0u) << job.name();
    EXPECT_EQ(job.hyperparameters().at("dataset"), expected[i].first);
    double lr = 0;
    ASSERT_TRUE(absl::SimpleAtod(job.hyperparameters().at("learning_rate"), &lr));
    EXPECT_DOUBLE_EQ(lr, expected[i].second);
    EXPECT_EQ(job.state(), i == 3 ? lorad::v1::JOB_STATE_FAILED : lorad::v1::JOB_STATE_SUCCEEDED)
        << job.name() << ": " << job.reason();
    if (i < 3) EXPECT_FALSE(job.final_lora_path().empty());
  }
}

TEST_F(NightSweepTest, TableAndCsvListEveryJobWithItsValuesAndState) {
  ASSERT_EQ(sweep().jobs_size(), 4);
  const CommandResult table = Loractl(daemon(), absl::StrCat("sweep show ", sweep_id()));
  ASSERT_EQ(table.exit_code, 0);
  std::printf("%s", table.out.c_str());
  const CommandResult csv = Loractl(daemon(), absl::StrCat("sweep show ", sweep_id(), " --csv"));
  ASSERT_EQ(csv.exit_code, 0);
  std::vector<std::string> lines = absl::StrSplit(csv.out, '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 5u) << csv.out;
  const auto expected = Expected();
  for (int i = 0; i < 4; ++i) {
    const std::string& row = lines[i + 1];
    EXPECT_NE(row.find(absl::StrCat(sweep().jobs(i).id())), std::string::npos) << row;
    EXPECT_NE(row.find(expected[i].first), std::string::npos) << row;
    EXPECT_NE(row.find(absl::StrCat(",", planner::FormatNumber(expected[i].second), ",")), std::string::npos)
        << row;
    EXPECT_NE(row.find(i == 3 ? "FAILED" : "SUCCEEDED"), std::string::npos) << row;
  }
}

// One shared folder per dataset, filled by the first job and reused untouched
// by the second (no file newer than its start).
TEST_F(NightSweepTest, LatentCacheIsSharedPerDatasetAndNotRewritten) {
  ASSERT_EQ(sweep().jobs_size(), 4);
  const fs::path data_dir = daemon().data_dir();
  std::vector<fs::path> cache_dirs;
  for (const auto& entry : fs::directory_iterator(data_dir / "cache" / "latents")) cache_dirs.push_back(entry.path());
  ASSERT_EQ(cache_dirs.size(), 2u);
  for (int ds = 0; ds < 2; ++ds) {
    const auto& first = sweep().jobs(2 * ds);
    const auto& second = sweep().jobs(2 * ds + 1);
    const fs::path link = data_dir / "jobs" / std::to_string(first.id()) / "output" / "latent_cache";
    ASSERT_TRUE(fs::is_symlink(link)) << link;
    const fs::path shared = fs::read_symlink(link);
    EXPECT_EQ(fs::read_symlink(data_dir / "jobs" / std::to_string(second.id()) / "output" / "latent_cache"), shared);
    int files = 0;
    for (const auto& entry : fs::directory_iterator(shared)) {
      if (entry.path().extension() != ".safetensors") continue;
      ++files;
      EXPECT_LT(MtimeMs(entry.path()), second.started_unix_ms()) << entry.path() << " rewritten by job "
                                                                   << second.id();
    }
    std::printf("dataset %d: %d latents cached in %s, shared by jobs %lld and %lld\n", ds, files,
                shared.filename().c_str(), static_cast<long long>(first.id()),
                static_cast<long long>(second.id()));
    EXPECT_EQ(files, night_->image_counts[ds]);
  }
}

// Keeps a picture for a closing note / CI artifact when LORAD_TEST_ARTIFACTS is set.
void KeepArtifact(const fs::path& picture, const std::string& name) {
  if (const char* keep = std::getenv("LORAD_TEST_ARTIFACTS"); keep != nullptr && *keep != '\0') {
    fs::create_directories(keep);
    fs::copy_file(picture, fs::path(keep) / name, fs::copy_options::overwrite_existing);
  }
}

TEST_F(NightSweepTest, LossPlotHasTheDefaultSizeAndRealContent) {
  const fs::path loss_png = root() / "loss.png";
  ASSERT_EQ(Loractl(daemon(), absl::StrCat("plot --sweep ", sweep_id(), " -o ", loss_png.string())).exit_code, 0);
  const cv::Mat plot = cv::imread(loss_png.string(), cv::IMREAD_COLOR);
  ASSERT_FALSE(plot.empty());
  const charts::LossPlotOptions plot_defaults;
  EXPECT_EQ(plot.cols, plot_defaults.width);
  EXPECT_EQ(plot.rows, plot_defaults.height);
  EXPECT_GT(NonBackgroundFraction(plot), 0.01);
  KeepArtifact(loss_png, "sweep_loss.png");
}

TEST_F(NightSweepTest, SampleGridHasARowPerJobWithPreviews) {
  const int jobs_with_samples = JobsWithSamples();
  EXPECT_GE(jobs_with_samples, 3);
  const fs::path grid_png = root() / "samples.png";
  ASSERT_EQ(Loractl(daemon(), absl::StrCat("grid ", sweep_id(), " -o ", grid_png.string(), " --cache ",
                                           (root() / "previews").string()))
                .exit_code,
            0);
  const cv::Mat grid = cv::imread(grid_png.string(), cv::IMREAD_COLOR);
  ASSERT_FALSE(grid.empty());
  charts::SampleGrid shape;
  shape.row_labels.assign(jobs_with_samples, "");
  shape.column_labels = {"a shape, circle"};
  shape.image_paths.assign(jobs_with_samples, std::vector<std::string>(1));
  const cv::Size expected_grid = charts::SampleGridSize(shape);
  EXPECT_EQ(grid.cols, expected_grid.width);
  EXPECT_EQ(grid.rows, expected_grid.height);
  EXPECT_GT(NonBackgroundFraction(grid), 0.05);
  KeepArtifact(grid_png, "sweep_samples.png");
}

TEST_F(NightSweepTest, FetchSweepBringsEverySucceededLoraHome) {
  const CommandResult fetched =
      Loractl(daemon(), absl::StrCat("fetch --sweep ", sweep_id(), " --out ", (root() / "loras").string()));
  EXPECT_EQ(fetched.exit_code, 0);
  std::vector<std::string> fetched_files = absl::StrSplit(fetched.out, '\n', absl::SkipEmpty());
  EXPECT_EQ(fetched_files.size(), 3u) << fetched.out;
  for (const auto& f : fetched_files) EXPECT_GT(fs::file_size(f), 0u);
}

// One post per job, one for the sweep when its last job ended.
TEST_F(NightSweepTest, WebhooksPostOncePerJobAndOnceForTheSweep) {
  auto& hooks = night_->hooks;
  for (int i = 0; i < 300 && hooks.request_count() < 5; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_GE(hooks.request_count(), 5u) << hooks.request_count() << " posts";
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // no extra posts trickle in
  int job_posts = 0, sweep_posts = 0;
  double job_gpu_seconds = 0, sweep_gpu_seconds = 0;
  for (const auto& request : hooks.requests()) {
    const auto json = nlohmann::json::parse(request.body);
    if (json.at("event") == "job") {
      ++job_posts;
      EXPECT_EQ(json.at("sweep_id"), std::to_string(sweep_id()));
      // GPU time of every job (issue 13); no price_per_hour: no cost.
      EXPECT_GT(json.at("gpu_seconds").get<double>(), 0);
      EXPECT_TRUE(json.at("cost").is_null());
      job_gpu_seconds += json.at("gpu_seconds").get<double>();
    } else if (json.at("event") == "sweep") {
      ++sweep_posts;
      EXPECT_EQ(json.at("jobs_total"), 4);
      EXPECT_EQ(json.at("jobs_succeeded"), 3);
      EXPECT_EQ(json.at("jobs_failed"), 1);
      sweep_gpu_seconds = json.at("gpu_seconds").get<double>();
      EXPECT_FALSE(json.at("content").get<std::string>().empty());
    }
  }
  EXPECT_EQ(job_posts, 4);
  EXPECT_EQ(sweep_posts, 1);
  // The sweep's GPU time is its jobs' (all ended when it was posted).
  EXPECT_GT(sweep_gpu_seconds, 0);
  EXPECT_NEAR(sweep_gpu_seconds, job_gpu_seconds, 1e-6);
}

// A daemon of its own per test: these tests start and cancel long jobs.
class SweepControlTest : public ::testing::Test {
 protected:
  void SetUp() override {
    daemon_ = std::make_unique<Daemon>(root_ / "daemon", DaemonOptions{});
    daemon_->Start();
    ASSERT_TRUE(daemon_->running());
    dataset_ = daemon_->UploadTestDataset(3);
  }
  void TearDown() override {
    if (daemon_ != nullptr && daemon_->running()) EXPECT_EQ(daemon_->Stop(), 0);
  }

  lorad::testing::ScopedTempDir root_{"lorad_sweep_control_it"};  // outlives the daemon
  std::unique_ptr<Daemon> daemon_;
  std::string dataset_;
};

// CAME at 5e-4: refused with the rule named; --force queues it with the finding attached.
TEST_F(SweepControlTest, NeverRuleRefusesUnlessForced) {
  Daemon& d = *daemon_;
  lorad::v1::SubmitJobRequest request;
  request.set_config_toml(Daemon::TinyConfig(100000, 0));
  request.set_dataset(dataset_);
  request.set_name("came-high");
  (*request.mutable_overrides())["optimizer_type"] = "\"came_pytorch.CAME\"";
  (*request.mutable_overrides())["learning_rate"] = "5e-4";
  lorad::v1::Job job;
  {
    auto ctx = d.client().Context();
    const grpc::Status refused = d.client().stub()->SubmitJob(ctx.get(), request, &job);
    EXPECT_EQ(refused.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
    EXPECT_NE(refused.error_message().find("never-came-high-lr"), std::string::npos) << refused.error_message();
  }
  request.set_force(true);
  {
    auto ctx = d.client().Context();
    ASSERT_TRUE(d.client().stub()->SubmitJob(ctx.get(), request, &job).ok());
  }
  const CommandResult shown = Loractl(d, absl::StrCat("show ", job.id()));
  EXPECT_EQ(shown.exit_code, 0);
  EXPECT_NE(shown.out.find("advisor.never-came-high-lr"), std::string::npos) << shown.out;
  EXPECT_EQ(Loractl(d, absl::StrCat("cancel ", job.id())).exit_code, 0);
  d.WaitFor(job.id(), [](const lorad::v1::Job& j) { return IsTerminal(j.state()); }, 60);
}

// A sweep of three long jobs: cancelling it ends the running one and the queued ones.
TEST_F(SweepControlTest, CancelSweepStopsTheRunningAndTheQueuedJobs) {
  Daemon& d = *daemon_;
  const fs::path sweep_file = root_ / "long.toml";
  std::ofstream(sweep_file) << absl::StrCat(Daemon::TinyConfig(100000, 0), "dataset = \"", dataset_, "\"\n",
                                            "[sweep]\nlearning_rate = [1e-4, 2e-4, 3e-4]\n");
  const CommandResult submitted = Loractl(d, absl::StrCat("sweep ", sweep_file.string(), " --name long"));
  ASSERT_EQ(submitted.exit_code, 0);
  int64_t sweep_id = 0;
  ASSERT_TRUE(absl::SimpleAtoi(absl::StripAsciiWhitespace(submitted.out), &sweep_id)) << submitted.out;
  lorad::v1::Sweep sweep = WaitForSweep(
      d, sweep_id,
      [](const lorad::v1::Sweep& s) {
        return s.jobs_size() > 0 && s.jobs(0).state() == lorad::v1::JOB_STATE_RUNNING && s.jobs(0).step() > 0;
      },
      120);
  ASSERT_EQ(sweep.jobs_total(), 3);
  ASSERT_EQ(sweep.jobs(0).state(), lorad::v1::JOB_STATE_RUNNING);
  EXPECT_EQ(Loractl(d, absl::StrCat("sweep cancel ", sweep_id)).exit_code, 0);
  sweep = WaitForSweep(d, sweep_id, [](const lorad::v1::Sweep& s) { return s.jobs_active() == 0; }, 60);
  EXPECT_EQ(sweep.jobs_active(), 0);
  EXPECT_EQ(sweep.jobs_cancelled(), 3);
  const CommandResult listed = Loractl(d, "sweep ls");
  EXPECT_NE(listed.out.find("long"), std::string::npos) << listed.out;
}

}  // namespace
}  // namespace lorad::tests
