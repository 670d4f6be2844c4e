#include "core/base/subprocess.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

namespace lorad {
namespace {

class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() { Close(); }
  void Reset(int fd) {
    Close();
    fd_ = fd;
  }
  int get() const { return fd_; }
  bool open() const { return fd_ >= 0; }
  void Close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

absl::Status MakePipe(Fd* read_end, Fd* write_end) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) {
    return absl::ResourceExhaustedError(absl::StrCat("pipe: ", std::strerror(errno)));
  }
  read_end->Reset(fds[0]);
  write_end->Reset(fds[1]);
  return absl::OkStatus();
}

bool IsExecutableFile(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) && ::access(path.c_str(), X_OK) == 0;
}

// The program to execve: argv[0] itself when it names a path, else the first
// executable of that name on PATH (looked up here, not after fork).
absl::StatusOr<std::string> ResolveProgram(const std::string& program) {
  if (program.find('/') != std::string::npos) {
    if (::access(program.c_str(), F_OK) != 0) {
      return absl::NotFoundError(absl::StrCat("cannot run ", program, ": no such file"));
    }
    if (!IsExecutableFile(program)) {
      return absl::PermissionDeniedError(absl::StrCat("cannot run ", program, ": not an executable file"));
    }
    return program;
  }
  const char* path_env = std::getenv("PATH");
  const std::string search = path_env != nullptr ? path_env : "/usr/local/bin:/usr/bin:/bin";
  for (absl::string_view dir : absl::StrSplit(search, ':', absl::SkipEmpty())) {
    std::string candidate = absl::StrCat(dir, "/", program);
    if (IsExecutableFile(candidate)) return candidate;
  }
  return absl::NotFoundError(absl::StrCat("cannot run ", program, ": not found on PATH (", search, ")"));
}

// Only async-signal-safe calls between fork and exec; `error_fd` receives errno
// when exec fails (it closes on a successful exec).
[[noreturn]] void ExecChild(const std::string& program, const std::vector<char*>& argv,
                            const std::string& working_dir, pid_t parent, int out_fd, int err_fd,
                            int error_fd) {
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (::getppid() != parent) ::_exit(127);  // the parent died before prctl
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);  // lorad blocks SIGTERM/SIGINT in its threads
  ::signal(SIGPIPE, SIG_DFL);
  const int devnull = ::open("/dev/null", O_RDONLY);
  if (devnull >= 0) ::dup2(devnull, 0);
  ::dup2(out_fd, 1);
  ::dup2(err_fd, 2);
  // Whatever else the parent had open closes at exec (error_fd included).
  ::syscall(SYS_close_range, 3U, ~0U, CLOSE_RANGE_CLOEXEC);
  int error = 0;
  if (!working_dir.empty() && ::chdir(working_dir.c_str()) != 0) {
    error = errno;
  } else {
    ::execv(program.c_str(), argv.data());
    error = errno;
  }
  const char* bytes = reinterpret_cast<const char*>(&error);
  size_t left = sizeof(error);
  while (left > 0) {
    const ssize_t w = ::write(error_fd, bytes, left);
    if (w <= 0) break;
    bytes += w;
    left -= static_cast<size_t>(w);
  }
  ::_exit(127);
}

// Reads what is available now; false at EOF (or a read error).
bool Drain(int fd, const std::function<void(const char*, size_t)>& sink) {
  char buffer[65536];
  while (true) {
    const ssize_t r = ::read(fd, buffer, sizeof(buffer));
    if (r > 0) {
      sink(buffer, static_cast<size_t>(r));
      continue;
    }
    if (r < 0 && (errno == EAGAIN || errno == EINTR)) return true;
    return false;
  }
}

std::string WithStderr(std::string message, const std::string& stderr_tail) {
  if (!stderr_tail.empty()) absl::StrAppend(&message, "; its stderr ends with:\n", stderr_tail);
  return message;
}

enum class KillReason { kNone, kTimeout, kStopped, kTooMuchOutput };

}  // namespace

std::string DescribeExit(int exit_code, int term_signal) {
  if (term_signal != 0) {
    const char* name = sigabbrev_np(term_signal);
    return absl::StrCat("killed by signal ", term_signal, " (SIG", name ? name : "?", ")");
  }
  return absl::StrCat("exit status ", exit_code);
}

std::string SubprocessResult::Describe() const { return DescribeExit(exit_code, term_signal); }

absl::StatusOr<SubprocessResult> RunSubprocess(const SubprocessOptions& options) {
  if (options.argv.empty() || options.argv[0].empty()) {
    return absl::InvalidArgumentError("RunSubprocess: empty command");
  }
  const std::string& name = options.argv[0];
  auto program = ResolveProgram(name);
  if (!program.ok()) return program.status();
  // Everything the child needs is built before fork (no allocation after it).
  std::vector<std::string> argv_storage = options.argv;
  std::vector<char*> argv;
  for (auto& a : argv_storage) argv.push_back(a.data());
  argv.push_back(nullptr);

  Fd out_read, out_write, err_read, err_write, exec_read, exec_write;
  if (auto s = MakePipe(&out_read, &out_write); !s.ok()) return s;
  if (auto s = MakePipe(&err_read, &err_write); !s.ok()) return s;
  if (auto s = MakePipe(&exec_read, &exec_write); !s.ok()) return s;
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) return absl::ResourceExhaustedError(absl::StrCat("fork: ", std::strerror(errno)));
  if (pid == 0) {
    ExecChild(*program, argv, options.working_dir, parent, out_write.get(), err_write.get(), exec_write.get());
  }
  out_write.Close();
  err_write.Close();
  exec_write.Close();

  auto reap = [pid] {
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    return status;
  };
  // A successful exec closes the error pipe: EOF. Otherwise the child's errno.
  int exec_errno = 0;
  ssize_t got;
  while ((got = ::read(exec_read.get(), &exec_errno, sizeof(exec_errno))) < 0 && errno == EINTR) {
  }
  if (got == static_cast<ssize_t>(sizeof(exec_errno))) {
    reap();
    const std::string message = absl::StrCat("cannot run ", name, ": ", std::strerror(exec_errno));
    if (exec_errno == ENOENT) return absl::NotFoundError(message);
    if (exec_errno == EACCES || exec_errno == EPERM) return absl::PermissionDeniedError(message);
    return absl::InternalError(message);
  }

  ::fcntl(out_read.get(), F_SETFL, O_NONBLOCK);
  ::fcntl(err_read.get(), F_SETFL, O_NONBLOCK);
  SubprocessResult result;
  KillReason kill_reason = KillReason::kNone;
  const absl::Time deadline = absl::Now() + options.timeout;
  absl::Time kill_at = absl::InfiniteFuture();
  bool hard_killed = false;
  auto on_stdout = [&](const char* data, size_t n) {
    if (kill_reason == KillReason::kTooMuchOutput) return;
    if (result.stdout_text.size() + n > options.max_stdout_bytes) {
      kill_reason = KillReason::kTooMuchOutput;
      ::kill(pid, SIGKILL);
      hard_killed = true;
      return;
    }
    result.stdout_text.append(data, n);
  };
  auto on_stderr = [&](const char* data, size_t n) {
    result.stderr_tail.append(data, n);
    if (result.stderr_tail.size() > 2 * options.stderr_tail_bytes) {
      result.stderr_tail.erase(0, result.stderr_tail.size() - options.stderr_tail_bytes);
    }
  };

  int status = 0;
  bool reaped = false;
  while (!reaped) {
    pollfd fds[2];
    nfds_t n = 0;
    if (out_read.open()) fds[n++] = {out_read.get(), POLLIN, 0};
    if (err_read.open()) fds[n++] = {err_read.get(), POLLIN, 0};
    ::poll(fds, n, 50);
    if (out_read.open() && !Drain(out_read.get(), on_stdout)) out_read.Close();
    if (err_read.open() && !Drain(err_read.get(), on_stderr)) err_read.Close();
    if (kill_reason == KillReason::kNone) {
      if (absl::Now() >= deadline) {
        kill_reason = KillReason::kTimeout;
      } else if (options.should_stop && options.should_stop()) {
        kill_reason = KillReason::kStopped;
      }
      if (kill_reason != KillReason::kNone) {
        ::kill(pid, SIGTERM);
        kill_at = absl::Now() + options.kill_grace;
      }
    }
    if (!hard_killed && absl::Now() >= kill_at) {
      ::kill(pid, SIGKILL);
      hard_killed = true;
    }
    const pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid) {
      reaped = true;
    } else if (r < 0 && errno != EINTR) {
      return absl::InternalError(absl::StrCat("waitpid(", name, "): ", std::strerror(errno)));
    }
  }
  // What the child wrote before exiting is in the pipes; a grandchild holding
  // them open does not keep this call waiting.
  if (out_read.open()) Drain(out_read.get(), on_stdout);
  if (err_read.open()) Drain(err_read.get(), on_stderr);
  if (result.stderr_tail.size() > options.stderr_tail_bytes) {
    result.stderr_tail.erase(0, result.stderr_tail.size() - options.stderr_tail_bytes);
  }
  if (WIFSIGNALED(status)) {
    result.exit_code = -1;
    result.term_signal = WTERMSIG(status);
  } else {
    result.exit_code = WEXITSTATUS(status);
  }
  switch (kill_reason) {
    case KillReason::kNone:
      return result;
    case KillReason::kTimeout:
      return absl::DeadlineExceededError(WithStderr(
          absl::StrCat(name, " ran longer than ", absl::FormatDuration(options.timeout), " and was stopped (",
                       result.Describe(), ")"),
          result.stderr_tail));
    case KillReason::kStopped:
      return absl::CancelledError(
          WithStderr(absl::StrCat(name, " was stopped on request (", result.Describe(), ")"), result.stderr_tail));
    case KillReason::kTooMuchOutput:
      return absl::ResourceExhaustedError(WithStderr(
          absl::StrCat(name, " wrote more than ", options.max_stdout_bytes, " bytes to stdout and was killed"),
          result.stderr_tail));
  }
  return result;
}

}  // namespace lorad
