#include "server/local_executor.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "server/launch_plan.h"

namespace lorad::server {
namespace {

class LocalRun : public AttemptRun {
 public:
  LocalRun(std::vector<std::unique_ptr<WorkerProcess>> ranks, int master_port)
      : ranks_(std::move(ranks)), master_port_(master_port) {}

  std::string Describe() const override {
    std::vector<std::string> pids;
    for (const auto& rank : ranks_) pids.push_back(std::to_string(rank->pid()));
    if (ranks_.size() == 1) return absl::StrCat("pid ", pids[0]);
    return absl::StrCat("pids ", absl::StrJoin(pids, ", "), "; ", ranks_.size(), " ranks, rendezvous 127.0.0.1:",
                        master_port_);
  }

  WorkerReport Supervise(const WorkerSessionOptions& options) override {
    std::vector<WorkerProcess*> ranks;
    for (auto& rank : ranks_) ranks.push_back(rank.get());
    WorkerReport report = SuperviseWorkers(ranks, options);
    ranks_.clear();  // reaped; their pipes are closed with them
    return report;
  }

 private:
  std::vector<std::unique_ptr<WorkerProcess>> ranks_;
  int master_port_;
};

}  // namespace

absl::StatusOr<int> FreeLoopbackPort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::ResourceExhaustedError(absl::StrCat("socket: ", std::strerror(errno)));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    const int err = errno;
    ::close(fd);
    return absl::UnavailableError(absl::StrCat("no free port on 127.0.0.1 for the rendezvous: ", std::strerror(err)));
  }
  ::close(fd);
  return static_cast<int>(ntohs(addr.sin_port));
}

absl::StatusOr<std::unique_ptr<AttemptRun>> LocalExecutor::Launch(const AttemptSpec& spec) {
  int port = 0;
  if (spec.world_size > 1) {
    auto free_port = FreeLoopbackPort();
    if (!free_port.ok()) return free_port.status();
    port = *free_port;
  }
  std::vector<std::unique_ptr<WorkerProcess>> ranks;
  for (const WorkerLaunch& launch : PlanLocalRanks(spec.base, spec.world_size, port)) {
    auto worker = WorkerProcess::Start(launch);
    // Ranks already started are killed and reaped by their destructors.
    if (!worker.ok()) return worker.status();
    ranks.push_back(std::move(*worker));
  }
  return std::unique_ptr<AttemptRun>(new LocalRun(std::move(ranks), port));
}

absl::StatusOr<std::unique_ptr<AttemptRun>> LocalExecutor::Reattach(
    const storage::JobRecord&, const std::filesystem::path&, const std::function<int64_t(int64_t)>&) {
  return std::unique_ptr<AttemptRun>();
}

}  // namespace lorad::server
