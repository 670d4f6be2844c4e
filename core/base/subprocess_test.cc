// Tests of RunSubprocess with real children (/bin/sh, sleep): output capture,
// exit codes, argv passed verbatim, timeouts and stop requests that kill, and
// clear errors for programs that are missing or not executable.
#include "core/base/subprocess.h"
#include "core/base/testing/scoped_temp_dir.h"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include <gtest/gtest.h>

namespace lorad {
namespace {

using Clock = std::chrono::steady_clock;

SubprocessOptions Sh(const std::string& script) {
  SubprocessOptions options;
  options.argv = {"/bin/sh", "-c", script};
  return options;
}

TEST(SubprocessTest, CapturesStdoutStderrAndExitCode) {
  auto result = RunSubprocess(Sh("printf 'hello\\nworld'; echo oops >&2; exit 3"));
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->stdout_text, "hello\nworld");
  EXPECT_EQ(result->stderr_tail, "oops\n");
  EXPECT_EQ(result->exit_code, 3);
  EXPECT_EQ(result->term_signal, 0);
  EXPECT_FALSE(result->succeeded());
  EXPECT_EQ(result->Describe(), "exit status 3");
}

TEST(SubprocessTest, ArgumentsArePassedVerbatimWithoutAShell) {
  SubprocessOptions options;
  options.argv = {"/bin/sh", "-c", "printf '%s|' \"$@\"", "sh", "a b", "'; exit 9", "$HOME", "*"};
  auto result = RunSubprocess(options);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->stdout_text, "a b|'; exit 9|$HOME|*|");
  EXPECT_TRUE(result->succeeded());
}

TEST(SubprocessTest, FindsAProgramOnPathAndRunsInTheWorkingDir) {
  SubprocessOptions options;
  options.argv = {"sh", "-c", "pwd"};
  options.working_dir = "/";
  auto result = RunSubprocess(options);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->stdout_text, "/\n");
}

TEST(SubprocessTest, KeepsOnlyTheEndOfStderr) {
  SubprocessOptions options = Sh("i=0; while [ $i -lt 2000 ]; do echo line$i >&2; i=$((i+1)); done");
  options.stderr_tail_bytes = 64;
  auto result = RunSubprocess(options);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->stderr_tail.size(), 64u);
  EXPECT_TRUE(result->stderr_tail.ends_with("line1999\n")) << result->stderr_tail;
}

TEST(SubprocessTest, TimeoutKillsTheChild) {
  SubprocessOptions options;
  options.argv = {"sleep", "30"};
  options.timeout = absl::Milliseconds(200);
  const auto start = Clock::now();
  auto result = RunSubprocess(options);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kDeadlineExceeded) << result.status();
  EXPECT_NE(result.status().message().find("sleep ran longer than 200ms"), std::string::npos)
      << result.status();
  EXPECT_LT(Clock::now() - start, std::chrono::seconds(5));
}

TEST(SubprocessTest, StopRequestTerminatesAndThenKillsAChildThatIgnoresSigterm) {
  std::atomic<bool> stop{false};
  SubprocessOptions options = Sh("trap '' TERM; echo ready; while :; do :; done");
  options.should_stop = [&stop] { return stop.load(); };
  options.kill_grace = absl::Milliseconds(200);
  std::thread stopper([&stop] {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    stop = true;
  });
  const auto start = Clock::now();
  auto result = RunSubprocess(options);
  stopper.join();
  EXPECT_EQ(result.status().code(), absl::StatusCode::kCancelled) << result.status();
  EXPECT_NE(result.status().message().find("killed by signal 9 (SIGKILL)"), std::string::npos)
      << result.status();
  EXPECT_LT(Clock::now() - start, std::chrono::seconds(5));
}

TEST(SubprocessTest, TooMuchStdoutKillsTheChild) {
  SubprocessOptions options;
  options.argv = {"yes"};
  options.max_stdout_bytes = 4096;
  auto result = RunSubprocess(options);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kResourceExhausted) << result.status();
  EXPECT_NE(result.status().message().find("more than 4096 bytes"), std::string::npos) << result.status();
}

TEST(SubprocessTest, MissingProgramIsNotFound) {
  SubprocessOptions options;
  options.argv = {"/nonexistent/lorad-curate", "--json"};
  auto missing = RunSubprocess(options);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound) << missing.status();
  EXPECT_NE(missing.status().message().find("/nonexistent/lorad-curate"), std::string::npos);

  options.argv = {"lorad-no-such-program-here"};
  auto not_on_path = RunSubprocess(options);
  EXPECT_EQ(not_on_path.status().code(), absl::StatusCode::kNotFound) << not_on_path.status();
  EXPECT_NE(not_on_path.status().message().find("not found on PATH"), std::string::npos);

  EXPECT_EQ(RunSubprocess(SubprocessOptions{}).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(SubprocessTest, NonExecutableFileIsPermissionDenied) {
  const lorad::testing::ScopedTempDir dir("lorad_subprocess_test");
  const std::filesystem::path file = dir / "not_executable.sh";
  std::ofstream(file) << "#!/bin/sh\necho hi\n";
  SubprocessOptions options;
  options.argv = {file.string()};
  auto result = RunSubprocess(options);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kPermissionDenied) << result.status();
}

TEST(SubprocessTest, DescribesSignals) {
  EXPECT_EQ(DescribeExit(-1, 15), "killed by signal 15 (SIGTERM)");
  EXPECT_EQ(DescribeExit(8, 0), "exit status 8");
}

}  // namespace
}  // namespace lorad
