// WorkerProcess: one `lorad-train` child with its events pipe (fd 3 in the
// child) and stderr pipe. Started in its own process group with
// PR_SET_PDEATHSIG=SIGKILL, so a daemon killed with -9 takes its workers along
// (the restarted daemon resumes them from their saved state).
// Not thread-safe; the thread that Start()s it must outlive the child (the
// death signal follows the forking thread) and owns Wait().
//
// Not built on lorad::RunSubprocess (core/base/subprocess.h): that helper runs
// a program to completion and hands back its output, while a worker streams
// events on an extra pipe (fd 3) that the scheduler reads as they come, lives
// in its own process group (a cancel signals what it spawned too) and gets
// per-slot environment. The exit is described the same way (DescribeExit).
#pragma once

#include <sys/types.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace lorad::server {

struct WorkerLaunch {
  std::vector<std::string> argv;  // argv[0]: the binary
  std::vector<std::pair<std::string, std::string>> env;  // set/overridden in the child
  std::string working_dir;
};

struct ExitInfo {
  int exit_code = 0;    // -1 when killed by a signal
  int term_signal = 0;  // 0 when it exited
  std::string Describe() const;  // "exit status 3" / "killed by signal 9 (SIGKILL)"
};

class WorkerProcess {
 public:
  // The child's fd 3 is the write end of the events pipe ("--events-fd 3").
  static constexpr int kChildEventsFd = 3;
  static absl::StatusOr<std::unique_ptr<WorkerProcess>> Start(const WorkerLaunch& launch);
  ~WorkerProcess();  // closes the pipes; kills and reaps a still-running child

  pid_t pid() const { return pid_; }
  int events_fd() const { return events_fd_; }  // read end, non-blocking
  int stderr_fd() const { return stderr_fd_; }  // read end, non-blocking (stdout too)
  void CloseEvents();
  void CloseStderr();
  // Signals the whole process group (the worker and anything it spawned).
  void Signal(int sig);
  // Non-blocking reap; true once the child has exited (then `info` is set).
  bool TryWait(ExitInfo* info);
  ExitInfo Wait();

 private:
  WorkerProcess() = default;
  pid_t pid_ = -1;
  int events_fd_ = -1;
  int stderr_fd_ = -1;
  bool reaped_ = false;
  ExitInfo exit_;
};

}  // namespace lorad::server
