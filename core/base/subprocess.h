// RunSubprocess: the one way lorad programs run a helper program to completion
// (lorad-curate, nvidia-smi). argv only, never a shell, so no argument is ever
// re-parsed. Captures stdout (bounded) and the tail of stderr; stdin is
// /dev/null. Kills the child on timeout or when the caller asks.
// Linux only (prctl). Thread-safe: each call owns its child and pipes.
//
// The long-running lorad-train workers do not use it: they stream events over
// an extra pipe while they run (server/worker_process.h).
#pragma once

#include <cstddef>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace lorad {

struct SubprocessOptions {
  // argv[0] is the program: a path (with a '/'), or a name looked up on PATH.
  std::vector<std::string> argv;
  // The child's working directory; empty: the caller's.
  std::string working_dir;
  // More stdout than this kills the child and fails with RESOURCE_EXHAUSTED.
  size_t max_stdout_bytes = size_t{64} << 20;
  // How much of the end of stderr is kept.
  size_t stderr_tail_bytes = 8192;
  // Past this the child is killed and the call fails with DEADLINE_EXCEEDED.
  absl::Duration timeout = absl::InfiniteDuration();
  // Polled about every 50 ms while the child runs; once it returns true the
  // child gets SIGTERM, then SIGKILL after `kill_grace`, and the call fails
  // with CANCELLED. Empty: never.
  std::function<bool()> should_stop;
  absl::Duration kill_grace = absl::Seconds(2);
};

struct SubprocessResult {
  int exit_code = 0;    // -1 when killed by a signal
  int term_signal = 0;  // 0 when it exited
  std::string stdout_text;
  std::string stderr_tail;  // the last `stderr_tail_bytes` bytes of stderr
  bool succeeded() const { return exit_code == 0 && term_signal == 0; }
  // "exit status 3" / "killed by signal 9 (SIGKILL)".
  std::string Describe() const;
};

// Runs argv[0] with argv and waits for it. A child that runs and exits
// non-zero is an OK result (the caller reads exit_code and stderr_tail).
// Errors: INVALID_ARGUMENT (empty argv), NOT_FOUND (no such program, or not
// on PATH), PERMISSION_DENIED (not executable), DEADLINE_EXCEEDED (timeout),
// CANCELLED (should_stop), RESOURCE_EXHAUSTED (stdout over the bound, or no
// pipe/fork); their messages name the program and end with its stderr tail.
absl::StatusOr<SubprocessResult> RunSubprocess(const SubprocessOptions& options);

// "exit status N" or "killed by signal N (SIGNAME)".
std::string DescribeExit(int exit_code, int term_signal);

}  // namespace lorad
