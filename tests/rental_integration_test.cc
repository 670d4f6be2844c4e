// Issue 13 end to end on the real daemon: a sweep of local dataset folders
// from "the laptop" (uploaded once, run), loractl profiles, cost per job and
// sweep, and the idle switch (runs its command once per drained queue, posts
// the webhook over https to a receiver with a test CA).
#include <sys/stat.h>
#include <sys/wait.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>
#include <thread>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "core/base/testing/scoped_temp_dir.h"
#include "server/net/test_server.h"
#include "tests/daemon_harness.h"

namespace lorad::tests {
namespace {

namespace fs = std::filesystem;

struct CommandResult {
  int exit_code = -1;
  std::string out;  // stdout and stderr
};

// Runs a shell command line; stdout and stderr captured together.
CommandResult Shell(const std::string& command_line) {
  CommandResult result;
  FILE* pipe = ::popen(absl::StrCat(command_line, " 2>&1").c_str(), "r");
  if (pipe == nullptr) return result;
  char buffer[4096];
  size_t n;
  while ((n = std::fread(buffer, 1, sizeof(buffer), pipe)) > 0) result.out.append(buffer, n);
  const int status = ::pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

std::string Loractl() { return (BuildDir() / "client" / "loractl").string(); }

int CountLines(const fs::path& path) {
  std::ifstream in(path);
  int lines = 0;
  for (std::string line; std::getline(in, line);) lines += line.empty() ? 0 : 1;
  return lines;
}

int64_t MtimeMs(const fs::path& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return -1;
  return int64_t{st.st_mtim.tv_sec} * 1000 + st.st_mtim.tv_nsec / 1000000;
}

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

void SleepMs(int ms) { std::this_thread::sleep_for(std::chrono::milliseconds(ms)); }

// A sweep naming two local folders runs, uploaded once: a second `loractl
// sweep` of the same file sends nothing. loractl reaches the daemon through a
// profile (token in a 0600 file), and prices come out of the daemon's
// price_per_hour.
TEST(RentalTest, SweepOfLocalFoldersUploadsOnceAndRunsWithCosts) {
  lorad::testing::ScopedTempDir root("lorad_rental_sweep");
  DaemonOptions options;
  options.extra_flags = {"--price-per-hour", "3.6"};
  Daemon d(root.path() / "daemon", options);
  d.Start();
  ASSERT_TRUE(d.running());

  // The laptop: two dataset folders next to the sweep file, and a profile.
  const fs::path laptop = root.path() / "laptop";
  MakeImageDataset(laptop / "cats", 2);
  MakeImageDataset(laptop / "dogs", 3);
  std::ofstream(laptop / "night.toml") << Daemon::TinyConfig(2, 0)
                                        << "[sweep]\ndataset = [\"cats\", \"./dogs\"]\n";
  const fs::path xdg = root.path() / "xdg";
  fs::create_directories(xdg / "lorad");
  std::ofstream(xdg / "lorad" / "box.token") << "test-token\n";
  ::chmod((xdg / "lorad" / "box.token").c_str(), 0600);
  std::ofstream(xdg / "lorad" / "config.toml")
      << "default = \"box\"\n[profiles.box]\naddress = \"127.0.0.1:" << d.port()
      << "\"\ntoken_file = \"box.token\"\n[profiles.other]\naddress = \"127.0.0.1:1\"\n";
  const std::string env = absl::StrCat("env -u LORAD_SERVER -u LORAD_TOKEN XDG_CONFIG_HOME=", xdg.string(), " ");
  const std::string loractl = absl::StrCat(env, Loractl(), " --profile box ");

  CommandResult first = Shell(absl::StrCat(loractl, "sweep ", (laptop / "night.toml").string(), " --name first"));
  ASSERT_EQ(first.exit_code, 0) << first.out;
  EXPECT_NE(first.out.find("cats -> dataset "), std::string::npos) << first.out;
  int uploaded = 0;
  for (absl::string_view line : absl::StrSplit(first.out, '\n')) uploaded += absl::StrContains(line, "(uploaded,");
  EXPECT_EQ(uploaded, 2) << first.out;
  EXPECT_EQ(first.out.find("warning"), std::string::npos) << first.out;  // the token file is 0600

  auto datasets = [&] {
    lorad::v1::ListDatasetsResponse response;
    auto ctx = d.client().Context();
    EXPECT_TRUE(d.client().stub()->ListDatasets(ctx.get(), {}, &response).ok());
    return response;
  };
  ASSERT_EQ(datasets().datasets_size(), 2);
  const int64_t stored_ms = std::max(datasets().datasets(0).created_unix_ms(), datasets().datasets(1).created_unix_ms());

  // Every job of the sweep runs, on the uploaded copies, named after the folders.
  lorad::v1::ListJobsRequest list;
  list.set_sweep("first");
  lorad::v1::ListJobsResponse jobs;
  {
    auto ctx = d.client().Context();
    ASSERT_TRUE(d.client().stub()->ListJobs(ctx.get(), list, &jobs).ok());
  }
  ASSERT_EQ(jobs.jobs_size(), 2);
  std::vector<std::string> names;
  for (const auto& job : jobs.jobs()) {
    names.push_back(job.name());
    const auto done = d.WaitFor(job.id(), [](const lorad::v1::Job& j) { return IsTerminal(j.state()); }, 300);
    EXPECT_EQ(done.state(), lorad::v1::JOB_STATE_SUCCEEDED) << done.reason();
    EXPECT_EQ(done.dataset().size(), 32u) << done.dataset();  // an uploaded dataset's id
    // Cost: its GPU time (one CPU slot: one unit) at 3.6 an hour.
    EXPECT_GT(done.gpu_seconds(), 0);
    EXPECT_NEAR(done.cost(), done.gpu_seconds() / 3600 * 3.6, 1e-9);
    EXPECT_LE(done.gpu_seconds(), (done.finished_unix_ms() - done.started_unix_ms()) / 1000.0 + 1e-9);
  }
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"first/ds-cats", "first/ds-dogs"}));

  // The same file again: both folders are on the daemon already; nothing is sent.
  CommandResult second = Shell(absl::StrCat(loractl, "sweep ", (laptop / "night.toml").string(), " --name second"));
  ASSERT_EQ(second.exit_code, 0) << second.out;
  EXPECT_EQ(second.out.find("(uploaded,"), std::string::npos) << second.out;
  int already = 0;
  for (absl::string_view line : absl::StrSplit(second.out, '\n')) {
    already += absl::StrContains(line, "(already on the daemon,");
  }
  EXPECT_EQ(already, 2) << second.out;
  ASSERT_EQ(datasets().datasets_size(), 2);
  EXPECT_EQ(std::max(datasets().datasets(0).created_unix_ms(), datasets().datasets(1).created_unix_ms()), stored_ms);
  int incoming = 0;  // no upload reached the daemon's datasets root either
  for (const auto& entry : fs::directory_iterator(d.data_dir() / "datasets")) incoming += entry.is_directory();
  EXPECT_EQ(incoming, 2);

  // The sweep's cost is the sum of its jobs'; loractl shows both.
  CommandResult show = Shell(absl::StrCat(loractl, "sweep show first"));
  ASSERT_EQ(show.exit_code, 0) << show.out;
  EXPECT_NE(show.out.find("GPU-h, cost "), std::string::npos) << show.out;
  CommandResult job = Shell(absl::StrCat(loractl, "show ", jobs.jobs(0).id()));
  EXPECT_NE(job.out.find("gpu time "), std::string::npos) << job.out;
  CommandResult info = Shell(absl::StrCat(loractl, "info"));
  ASSERT_EQ(info.exit_code, 0) << info.out;
  EXPECT_NE(info.out.find("cost since start "), std::string::npos) << info.out;

  // Flags override the profile: --profile other names a closed port, --server fixes it.
  CommandResult other = Shell(absl::StrCat(env, Loractl(), " --profile other --timeout 2 info"));
  EXPECT_EQ(other.exit_code, 3) << other.out;  // unreachable
  CommandResult fixed = Shell(absl::StrCat(env, Loractl(), " --profile other --server 127.0.0.1:", d.port(),
                                         " --token test-token info"));
  EXPECT_EQ(fixed.exit_code, 0) << fixed.out;
  // A token file others can read: loractl warns, naming it and the chmod.
  ::chmod((xdg / "lorad" / "box.token").c_str(), 0644);
  CommandResult warned = Shell(absl::StrCat(loractl, "info"));
  EXPECT_EQ(warned.exit_code, 0) << warned.out;
  EXPECT_NE(warned.out.find(absl::StrCat("chmod 600 ", (xdg / "lorad" / "box.token").string())), std::string::npos)
      << warned.out;
  EXPECT_EQ(d.Stop(), 0);
}

// The idle switch on a 3-second window: a job that arrives inside the window
// postpones it, the command runs once a full window after the queue drains,
// not again while nothing happens, and once more after the next job drains.
// Each run is a server event and an https webhook post (test CA).
TEST(RentalTest, IdleSwitchRunsItsCommandOncePerDrainedQueue) {
  lorad::testing::ScopedTempDir root("lorad_rental_idle");
  auto ca = net::testing::MakeTestCa(root.path() / "ca");
  ASSERT_TRUE(ca.ok()) << ca.status();
  net::testing::TestServer receiver([](const net::testing::TestRequest&) { return net::testing::TestResponse{}; },
                                    &*ca);
  ASSERT_TRUE(receiver.ok());
  const fs::path ran = root.path() / "idle.log";
  const fs::path config = root.path() / "lorad.toml";
  constexpr int kWindowMs = 3000;
  std::ofstream(config) << "price_per_hour = 2.0\n"
                        << "webhook_urls = [\"" << receiver.url("/hook") << "\"]\n"
                        << "webhook_ca_file = \"" << ca->ca_cert.string() << "\"\n"
                        << "on_idle = { after_seconds = 3, command = \"echo ran >> '" << ran.string()
                        << "'\", timeout_s = 10 }\n";
  DaemonOptions options;
  options.extra_flags = {"--config", config.string()};
  Daemon d(root.path() / "daemon", options);
  d.Start();
  ASSERT_TRUE(d.running());
  const std::string dataset = d.UploadTestDataset(2);

  // A job right after the start, inside the first window: no command while it runs.
  const int64_t first = d.Submit(Daemon::TinyConfig(4, 0), dataset, "first");
  const auto first_done = d.WaitFor(first, [](const lorad::v1::Job& j) { return IsTerminal(j.state()); }, 300);
  ASSERT_EQ(first_done.state(), lorad::v1::JOB_STATE_SUCCEEDED) << first_done.reason();
  EXPECT_FALSE(fs::exists(ran)) << "the idle command ran while a job was queued or running";

  // A full window after the job ended: once.
  for (int i = 0; i < 100 && CountLines(ran) < 1; ++i) SleepMs(100);
  ASSERT_EQ(CountLines(ran), 1);
  EXPECT_GE(MtimeMs(ran) - first_done.finished_unix_ms(), kWindowMs - 250);
  SleepMs(2 * kWindowMs);
  EXPECT_EQ(CountLines(ran), 1) << "ran again without a new job";

  // The next job re-arms it; it runs again only a full window after that job.
  const int64_t second = d.Submit(Daemon::TinyConfig(2, 0), dataset, "second");
  const auto second_done = d.WaitFor(second, [](const lorad::v1::Job& j) { return IsTerminal(j.state()); }, 300);
  ASSERT_EQ(second_done.state(), lorad::v1::JOB_STATE_SUCCEEDED) << second_done.reason();
  for (int i = 0; i < 100 && CountLines(ran) < 2; ++i) SleepMs(100);
  ASSERT_EQ(CountLines(ran), 2);
  EXPECT_GE(MtimeMs(ran) - second_done.finished_unix_ms(), kWindowMs - 250);
  SleepMs(2 * kWindowMs);
  EXPECT_EQ(CountLines(ran), 2);

  // Recorded as server events (loractl info shows them) ...
  lorad::v1::ServerInfo info;
  {
    auto ctx = d.client().Context();
    ASSERT_TRUE(d.client().stub()->GetServerInfo(ctx.get(), {}, &info).ok());
  }
  ASSERT_EQ(info.recent_events_size(), 2);
  EXPECT_EQ(info.recent_events(0).kind(), "idle_command");
  EXPECT_NE(info.recent_events(0).message().find("exit status 0"), std::string::npos) << info.recent_events(0).message();
  EXPECT_EQ(info.on_idle_after_s(), 3);
  EXPECT_GT(info.idle_for_s(), 2);
  EXPECT_DOUBLE_EQ(info.price_per_hour(), 2.0);
  EXPECT_NEAR(info.jobs_cost_since_start(), info.jobs_gpu_seconds_since_start() / 3600 * 2.0, 1e-9);
  EXPECT_GT(info.jobs_gpu_seconds_since_start(), 0);
  CommandResult shown = Shell(absl::StrCat(Loractl(), " --server 127.0.0.1:", d.port(), " --token test-token info"));
  EXPECT_NE(shown.out.find("idle_command: idle for"), std::string::npos) << shown.out;

  // ... and posted over https: two job posts with their cost, two idle posts.
  for (int i = 0; i < 50 && receiver.request_count() < 4; ++i) SleepMs(100);
  int idle_posts = 0, job_posts = 0;
  for (const auto& request : receiver.requests()) {
    const auto body = nlohmann::json::parse(request.body);
    if (body.at("event") == "server") {
      ++idle_posts;
      EXPECT_EQ(body.at("name"), "idle_command");
    } else if (body.at("event") == "job") {
      ++job_posts;
      EXPECT_GT(body.at("cost").get<double>(), 0);
    }
  }
  EXPECT_EQ(idle_posts, 2);
  EXPECT_EQ(job_posts, 2);
  EXPECT_EQ(d.Stop(), 0);
}

}  // namespace
}  // namespace lorad::tests
