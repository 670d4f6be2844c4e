#include "core/train/launcher.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <iostream>
#include <optional>
#include <thread>

#include "absl/strings/str_cat.h"
#include "core/base/exit_codes.h"
#include "core/base/logging.h"

namespace lorad::train {
namespace {

constexpr int kMaxLocalRanks = 64;
std::atomic<pid_t> g_children[kMaxLocalRanks];
std::atomic<int> g_num_children{0};

extern "C" void ForwardSignal(int sig) {
  const int n = g_num_children.load();
  for (int i = 0; i < n; ++i) {
    const pid_t pid = g_children[i].load();
    if (pid > 0) ::kill(pid, sig);
  }
}

bool IsEventsFlag(const std::string& a) {
  for (const char* name : {"--events-fd", "--events_fd", "--events-file", "--events_file"}) {
    if (a == name || a.starts_with(std::string(name) + "=")) return true;
  }
  return false;
}

}  // namespace

std::vector<std::string> WithoutEventsFlags(const std::vector<std::string>& args) {
  std::vector<std::string> out;
  for (size_t i = 0; i < args.size(); ++i) {
    if (IsEventsFlag(args[i])) {
      if (args[i].find('=') == std::string::npos) ++i;  // and its value
      continue;
    }
    out.push_back(args[i]);
  }
  return out;
}

int LaunchLocalRanks(const DistributedSpec& spec, const std::vector<std::string>& args) {
  auto log = Logger("train");
  const int n = spec.local_world_size;
  if (n > kMaxLocalRanks) {
    std::cerr << "num_processes / num_machines = " << n << " local ranks; at most " << kMaxLocalRanks << "\n";
    return kExitUsage;
  }
  log->info("launching {} local ranks ({} to {} of {}); rendezvous at {}:{}; placed by the {}", n, spec.rank,
            spec.rank + n - 1, spec.world_size, spec.master_addr, spec.master_port, spec.source);
  const std::vector<std::string> others = WithoutEventsFlags(args);
  std::vector<pid_t> pids;
  for (int i = 0; i < n; ++i) {
    const int rank = spec.rank + i;
    const std::vector<std::string>& child_args = rank == 0 ? args : others;
    std::vector<std::string> env = {
        absl::StrCat("WORLD_SIZE=", spec.world_size), absl::StrCat("RANK=", rank),
        absl::StrCat("LOCAL_RANK=", i), absl::StrCat("LOCAL_WORLD_SIZE=", n),
        absl::StrCat("MASTER_ADDR=", spec.master_addr), absl::StrCat("MASTER_PORT=", spec.master_port)};
    // Everything exec needs is built before fork (the child only calls async-signal-safe functions).
    std::vector<std::string> argv_strings = {"lorad-train"};
    argv_strings.insert(argv_strings.end(), child_args.begin(), child_args.end());
    std::vector<char*> argv;
    for (auto& a : argv_strings) argv.push_back(a.data());
    argv.push_back(nullptr);
    std::vector<char*> envp;
    for (char** e = environ; *e != nullptr; ++e) {
      bool replaced = false;
      for (const auto& v : env) {
        const size_t eq = v.find('=');
        if (std::strncmp(*e, v.c_str(), eq + 1) == 0) replaced = true;
      }
      if (!replaced) envp.push_back(*e);
    }
    for (auto& v : env) envp.push_back(v.data());
    envp.push_back(nullptr);
    const pid_t pid = ::fork();
    if (pid < 0) {
      std::cerr << "cannot start rank " << rank << ": " << std::strerror(errno) << "\n";
      ForwardSignal(SIGTERM);
      return kExitError;
    }
    if (pid == 0) {
      ::execve("/proc/self/exe", argv.data(), envp.data());
      _exit(127);
    }
    g_children[i].store(pid);
    g_num_children.store(i + 1);
    pids.push_back(pid);
  }
  ::signal(SIGTERM, ForwardSignal);
  ::signal(SIGINT, ForwardSignal);

  std::vector<int> codes(static_cast<size_t>(n), -1);
  int remaining = n;
  std::optional<std::chrono::steady_clock::time_point> kill_at;
  while (remaining > 0) {
    int status = 0;
    const pid_t pid = ::waitpid(-1, &status, WNOHANG);
    if (pid > 0) {
      for (int i = 0; i < n; ++i) {
        if (pids[static_cast<size_t>(i)] != pid) continue;
        const int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        codes[static_cast<size_t>(i)] = code;
        g_children[i].store(0);
        --remaining;
        if (code != 0) {
          log->warn("rank {} exited with {}", spec.rank + i,
                    WIFEXITED(status) ? absl::StrCat("code ", code) : absl::StrCat("signal ", WTERMSIG(status)));
          if (!kill_at) kill_at = std::chrono::steady_clock::now() + spec.timeout + std::chrono::seconds(30);
        }
      }
      continue;
    }
    if (kill_at && std::chrono::steady_clock::now() > *kill_at) {
      log->error("ranks still running {} s after another failed: killing them",
                 std::chrono::duration_cast<std::chrono::seconds>(spec.timeout).count() + 30);
      ForwardSignal(SIGKILL);
      kill_at.reset();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  if (spec.rank == 0) {
    // Rank 0 reported the job's end (a dead peer included); a rank 0 killed by a signal reported nothing.
    return codes[0] >= 128 ? kExitError : codes[0];
  }
  for (int code : codes) {
    if (code != 0) return code >= 128 ? kExitPeerFailed : code;
  }
  return kExitOk;
}

}  // namespace lorad::train
