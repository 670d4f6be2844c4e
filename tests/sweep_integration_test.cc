// Issue 7 end to end: the real daemon runs a 2 datasets x 2 learning rates sweep
// (zip mode, so exactly one job gets a learning rate that diverges) with the
// real lorad-train on the tiny SDXL model, and loractl reads the morning view.
#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <fstream>
#include <map>
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
#include "core/planner/number_format.h"
#include "tests/daemon_harness.h"
#include "server/notify/test_http_server.h"

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

TEST(SweepIntegrationTest, FourJobSweepOneFailureTableCachePlotsGridAndWebhooks) {
  const fs::path root = fs::temp_directory_path() / absl::StrCat("lorad_sweep_it_", ::getpid());
  fs::remove_all(root);
  notify::testing::TestHttpServer hooks;
  ASSERT_TRUE(hooks.ok());
  DaemonOptions options;
  options.extra_flags = {"--webhook", hooks.url()};
  Daemon d(root / "daemon", options);
  d.Start();

  // Two datasets (3 and 4 images), each with a preview prompt file.
  const std::vector<int> image_counts = {3, 4};
  std::vector<std::string> dataset_ids;
  for (size_t i = 0; i < image_counts.size(); ++i) {
    const fs::path dir = root / absl::StrCat("dataset", i);
    MakeImageDataset(dir, image_counts[i], 64, 1);
    std::ofstream(dir / "prompts.txt") << "a shape, circle --w 64 --h 64 --s 2 --d 1\n";
    auto uploaded = d.client().UploadDataset(dir, absl::StrCat("shapes", i));
    ASSERT_TRUE(uploaded.ok()) << uploaded.status();
    dataset_ids.push_back(uploaded->id());
  }
  ASSERT_NE(dataset_ids[0], dataset_ids[1]);

  const std::string sweep_toml = absl::StrCat(
      Daemon::TinyConfig(4, 0, "sample_every_n_steps = 4\nsample_prompts = \"prompts.txt\"\n"),
      "[sweep]\nmode = \"zip\"\n",
      "dataset = [\"", dataset_ids[0], "\", \"", dataset_ids[0], "\", \"", dataset_ids[1], "\", \"",
      dataset_ids[1], "\"]\n",
      // 1e30 makes the weights overflow: lorad-train's divergence guard fails that job.
      "learning_rate = [1e-3, 5e-4, 1e-3, 1e30]\n");
  const fs::path sweep_file = root / "night.toml";
  std::ofstream(sweep_file) << sweep_toml;

  const CommandResult submitted = Loractl(d, absl::StrCat("sweep ", sweep_file.string(), " --name night"));
  ASSERT_EQ(submitted.exit_code, 0) << submitted.out;
  int64_t sweep_id = 0;
  ASSERT_TRUE(absl::SimpleAtoi(absl::StripAsciiWhitespace(submitted.out), &sweep_id)) << submitted.out;

  lorad::v1::Sweep sweep;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(400);
  while (true) {
    lorad::v1::GetSweepRequest request;
    request.set_sweep_id(sweep_id);
    auto ctx = d.client().Context();
    ASSERT_TRUE(d.client().stub()->GetSweep(ctx.get(), request, &sweep).ok());
    if (sweep.jobs_total() > 0 && sweep.jobs_active() == 0) break;
    ASSERT_LT(std::chrono::steady_clock::now(), deadline) << "sweep did not finish";
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  ASSERT_EQ(sweep.jobs_total(), 4);
  EXPECT_EQ(sweep.jobs_succeeded(), 3);
  EXPECT_EQ(sweep.jobs_failed(), 1);
  ASSERT_EQ(sweep.varied_keys_size(), 2);
  EXPECT_EQ(sweep.varied_keys(0), "dataset");
  EXPECT_EQ(sweep.varied_keys(1), "learning_rate");

  // Jobs in sweep order, named <sweep>/<job>, varied values as hyperparameters.
  const std::vector<std::pair<std::string, double>> expected = {
      {dataset_ids[0], 1e-3}, {dataset_ids[0], 5e-4}, {dataset_ids[1], 1e-3}, {dataset_ids[1], 1e30}};
  for (int i = 0; i < 4; ++i) {
    const auto& job = sweep.jobs(i);
    EXPECT_EQ(job.name().rfind("night/", 0), 0u) << job.name();
    EXPECT_EQ(job.hyperparameters().at("dataset"), expected[i].first);
    double lr = 0;
    ASSERT_TRUE(absl::SimpleAtod(job.hyperparameters().at("learning_rate"), &lr));
    EXPECT_DOUBLE_EQ(lr, expected[i].second);
    EXPECT_EQ(job.state(), i == 3 ? lorad::v1::JOB_STATE_FAILED : lorad::v1::JOB_STATE_SUCCEEDED)
        << job.name() << ": " << job.reason();
    if (i < 3) EXPECT_FALSE(job.final_lora_path().empty());
  }

  // The morning table: all 4 jobs with their varied values and states.
  const CommandResult table = Loractl(d, absl::StrCat("sweep show ", sweep_id));
  ASSERT_EQ(table.exit_code, 0);
  std::printf("%s", table.out.c_str());
  const CommandResult csv = Loractl(d, absl::StrCat("sweep show ", sweep_id, " --csv"));
  ASSERT_EQ(csv.exit_code, 0);
  std::vector<std::string> lines = absl::StrSplit(csv.out, '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 5u) << csv.out;
  for (int i = 0; i < 4; ++i) {
    const std::string& row = lines[i + 1];
    EXPECT_NE(row.find(absl::StrCat(sweep.jobs(i).id())), std::string::npos) << row;
    EXPECT_NE(row.find(expected[i].first), std::string::npos) << row;
    EXPECT_NE(row.find(absl::StrCat(",", planner::FormatNumber(expected[i].second), ",")), std::string::npos)
        << row;
    EXPECT_NE(row.find(i == 3 ? "FAILED" : "SUCCEEDED"), std::string::npos) << row;
  }

  // Latent cache: one shared folder per dataset, filled by the first job and
  // reused untouched by the second (no file newer than its start).
  const fs::path cache_root = d.data_dir() / "cache" / "latents";
  std::vector<fs::path> cache_dirs;
  for (const auto& entry : fs::directory_iterator(cache_root)) cache_dirs.push_back(entry.path());
  ASSERT_EQ(cache_dirs.size(), 2u);
  for (int ds = 0; ds < 2; ++ds) {
    const auto& first = sweep.jobs(2 * ds);
    const auto& second = sweep.jobs(2 * ds + 1);
    const fs::path link = d.data_dir() / "jobs" / std::to_string(first.id()) / "output" / "latent_cache";
    ASSERT_TRUE(fs::is_symlink(link)) << link;
    const fs::path shared = fs::read_symlink(link);
    EXPECT_EQ(fs::read_symlink(d.data_dir() / "jobs" / std::to_string(second.id()) / "output" / "latent_cache"),
              shared);
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
    EXPECT_EQ(files, image_counts[ds]);
  }

  // Loss plot and sample grid: expected size, real content.
  const fs::path loss_png = root / "loss.png";
  ASSERT_EQ(Loractl(d, absl::StrCat("plot --sweep ", sweep_id, " -o ", loss_png.string())).exit_code, 0);
  const cv::Mat plot = cv::imread(loss_png.string(), cv::IMREAD_COLOR);
  ASSERT_FALSE(plot.empty());
  const charts::LossPlotOptions plot_defaults;
  EXPECT_EQ(plot.cols, plot_defaults.width);
  EXPECT_EQ(plot.rows, plot_defaults.height);
  EXPECT_GT(NonBackgroundFraction(plot), 0.01);

  int jobs_with_samples = 0;
  for (const auto& job : sweep.jobs()) {
    bool has = false;
    for (const auto& e : d.ReadAllEvents(job.id())) has |= e.event().has_sample();
    jobs_with_samples += has ? 1 : 0;
  }
  EXPECT_GE(jobs_with_samples, 3);
  const fs::path grid_png = root / "samples.png";
  ASSERT_EQ(Loractl(d, absl::StrCat("grid ", sweep_id, " -o ", grid_png.string(), " --cache ",
                                    (root / "previews").string()))
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
  // Keep the pictures for a closing note / CI artifact when asked to.
  if (const char* keep = std::getenv("LORAD_TEST_ARTIFACTS"); keep != nullptr && *keep != '\0') {
    fs::create_directories(keep);
    fs::copy_file(loss_png, fs::path(keep) / "sweep_loss.png", fs::copy_options::overwrite_existing);
    fs::copy_file(grid_png, fs::path(keep) / "sweep_samples.png", fs::copy_options::overwrite_existing);
  }

  // Every LoRA home.
  const CommandResult fetched =
      Loractl(d, absl::StrCat("fetch --sweep ", sweep_id, " --out ", (root / "loras").string()));
  EXPECT_EQ(fetched.exit_code, 0);
  std::vector<std::string> fetched_files = absl::StrSplit(fetched.out, '\n', absl::SkipEmpty());
  EXPECT_EQ(fetched_files.size(), 3u) << fetched.out;
  for (const auto& f : fetched_files) EXPECT_GT(fs::file_size(f), 0u);

  // Webhooks: one post per job, one for the sweep when its last job ended.
  ASSERT_TRUE(hooks.WaitForPosts(5, 30)) << hooks.bodies().size() << " posts";
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // no extra posts trickle in
  int job_posts = 0, sweep_posts = 0;
  for (const auto& body : hooks.bodies()) {
    const auto json = nlohmann::json::parse(body);
    if (json.at("event") == "job") {
      ++job_posts;
      EXPECT_EQ(json.at("sweep_id"), std::to_string(sweep_id));
    } else if (json.at("event") == "sweep") {
      ++sweep_posts;
      EXPECT_EQ(json.at("jobs_total"), 4);
      EXPECT_EQ(json.at("jobs_succeeded"), 3);
      EXPECT_EQ(json.at("jobs_failed"), 1);
      EXPECT_FALSE(json.at("content").get<std::string>().empty());
    }
  }
  EXPECT_EQ(job_posts, 4);
  EXPECT_EQ(sweep_posts, 1);
  EXPECT_EQ(d.Stop(), 0);
  fs::remove_all(root);
}

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

TEST(SweepIntegrationTest, NeverRulesRefuseUnlessForcedAndCancelSweepStopsItsJobs) {
  const fs::path root = fs::temp_directory_path() / absl::StrCat("lorad_sweep_cancel_it_", ::getpid());
  fs::remove_all(root);
  Daemon d(root / "daemon", DaemonOptions{});
  d.Start();
  const std::string dataset = d.UploadTestDataset(3);

  // CAME at 5e-4: refused with the rule named; --force queues it with the finding attached.
  lorad::v1::SubmitJobRequest request;
  request.set_config_toml(Daemon::TinyConfig(100000, 0));
  request.set_dataset(dataset);
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

  // A sweep of three long jobs: cancelling it ends the running one and the queued ones.
  const fs::path sweep_file = root / "long.toml";
  std::ofstream(sweep_file) << absl::StrCat(Daemon::TinyConfig(100000, 0), "dataset = \"", dataset, "\"\n",
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
  EXPECT_EQ(d.Stop(), 0);
  fs::remove_all(root);
}

}  // namespace
}  // namespace lorad::tests
