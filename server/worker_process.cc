#include "server/worker_process.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "core/base/subprocess.h"

extern char** environ;

namespace lorad::server {
namespace {

void CloseFd(int* fd) {
  if (*fd >= 0) ::close(*fd);
  *fd = -1;
}

// Only async-signal-safe calls between fork and exec.
void WriteAll(int fd, const char* text) {
  size_t n = std::strlen(text);
  while (n > 0) {
    ssize_t w = ::write(fd, text, n);
    if (w <= 0) return;
    text += w;
    n -= static_cast<size_t>(w);
  }
}

}  // namespace

std::string ExitInfo::Describe() const { return DescribeExit(exit_code, term_signal); }

absl::StatusOr<std::unique_ptr<WorkerProcess>> WorkerProcess::Start(const WorkerLaunch& launch) {
  if (launch.argv.empty()) return absl::InvalidArgumentError("worker command is empty");
  // Everything the child needs is built before fork (no allocation after it).
  std::vector<std::string> env_storage;
  for (char** e = environ; *e != nullptr; ++e) {
    std::string entry(*e);
    bool overridden = false;
    for (const auto& [key, value] : launch.env) {
      if (entry.rfind(key + "=", 0) == 0) overridden = true;
    }
    if (!overridden) env_storage.push_back(std::move(entry));
  }
  for (const auto& [key, value] : launch.env) env_storage.push_back(key + "=" + value);
  std::vector<char*> envp;
  for (auto& e : env_storage) envp.push_back(e.data());
  envp.push_back(nullptr);
  std::vector<std::string> argv_storage = launch.argv;
  std::vector<char*> argv;
  for (auto& a : argv_storage) argv.push_back(a.data());
  argv.push_back(nullptr);
  const std::string exec_error = absl::StrCat("lorad: cannot execute worker ", launch.argv[0], ": ");

  int events[2], errors[2];
  if (::pipe2(events, O_CLOEXEC) != 0) {
    return absl::ResourceExhaustedError(absl::StrCat("pipe: ", std::strerror(errno)));
  }
  if (::pipe2(errors, O_CLOEXEC) != 0) {
    ::close(events[0]);
    ::close(events[1]);
    return absl::ResourceExhaustedError(absl::StrCat("pipe: ", std::strerror(errno)));
  }
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) {
    for (int fd : {events[0], events[1], errors[0], errors[1]}) ::close(fd);
    return absl::ResourceExhaustedError(absl::StrCat("fork: ", std::strerror(errno)));
  }
  if (pid == 0) {
    ::setpgid(0, 0);
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(126);  // the daemon died before prctl
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);  // the daemon blocks SIGTERM/SIGINT
    ::signal(SIGPIPE, SIG_DFL);
    const int devnull = ::open("/dev/null", O_RDONLY);
    ::dup2(devnull, 0);
    ::dup2(errors[1], 1);
    ::dup2(errors[1], 2);
    ::dup2(events[1], kChildEventsFd);  // dup2 clears CLOEXEC on the copy
    ::syscall(SYS_close_range, kChildEventsFd + 1, ~0U, 0);
    if (!launch.working_dir.empty() && ::chdir(launch.working_dir.c_str()) != 0) {
      WriteAll(2, "lorad: cannot enter the job folder\n");
      ::_exit(127);
    }
    ::execve(argv[0], argv.data(), envp.data());
    WriteAll(2, exec_error.c_str());
    WriteAll(2, std::strerror(errno));
    WriteAll(2, "\n");
    ::_exit(127);
  }
  ::setpgid(pid, pid);  // also from the parent: no race with Signal()
  ::close(events[1]);
  ::close(errors[1]);
  ::fcntl(events[0], F_SETFL, O_NONBLOCK);
  ::fcntl(errors[0], F_SETFL, O_NONBLOCK);
  auto worker = std::unique_ptr<WorkerProcess>(new WorkerProcess());
  worker->pid_ = pid;
  worker->events_fd_ = events[0];
  worker->stderr_fd_ = errors[0];
  return worker;
}

WorkerProcess::~WorkerProcess() {
  CloseEvents();
  CloseStderr();
  if (!reaped_ && pid_ > 0) {
    Signal(SIGKILL);
    Wait();
  }
}

void WorkerProcess::CloseEvents() { CloseFd(&events_fd_); }
void WorkerProcess::CloseStderr() { CloseFd(&stderr_fd_); }

void WorkerProcess::Signal(int sig) {
  if (pid_ > 0 && !reaped_) ::kill(-pid_, sig);
}

bool WorkerProcess::TryWait(ExitInfo* info) {
  if (!reaped_) {
    int status = 0;
    const pid_t r = ::waitpid(pid_, &status, WNOHANG);
    if (r != pid_) return false;
    reaped_ = true;
    if (WIFSIGNALED(status)) {
      exit_ = ExitInfo{-1, WTERMSIG(status)};
    } else {
      exit_ = ExitInfo{WEXITSTATUS(status), 0};
    }
    // Anything the worker left in its group goes with it.
    ::kill(-pid_, SIGKILL);
  }
  *info = exit_;
  return true;
}

ExitInfo WorkerProcess::Wait() {
  if (!reaped_) {
    int status = 0;
    while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
    reaped_ = true;
    exit_ = WIFSIGNALED(status) ? ExitInfo{-1, WTERMSIG(status)} : ExitInfo{WEXITSTATUS(status), 0};
    ::kill(-pid_, SIGKILL);
  }
  return exit_;
}

}  // namespace lorad::server
