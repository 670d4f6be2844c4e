// LocalExecutor: an attempt's lorad-train ranks as children of the daemon.
// N ranks for a job of N GPUs, each its own WorkerProcess (own process group,
// death signal), rather than one launcher that spawns them: the daemon then
// sees every rank's exit and stderr itself, stops them all on cancel, and ends
// the others within the grace period when one dies (SuperviseWorkers). The
// rendezvous is on 127.0.0.1 at a port free when the attempt starts.
// Attempts die with the daemon (PR_SET_PDEATHSIG): nothing to re-attach.
#pragma once

#include "server/executor.h"

namespace lorad::server {

class LocalExecutor : public Executor {
 public:
  std::string name() const override { return "local"; }
  int SlotsFor(int gpus) const override { return gpus < 1 ? 1 : gpus; }
  absl::StatusOr<std::unique_ptr<AttemptRun>> Launch(const AttemptSpec& spec) override;
  absl::StatusOr<std::unique_ptr<AttemptRun>> Reattach(
      const storage::JobRecord& job, const std::filesystem::path& job_dir,
      const std::function<int64_t(int64_t after_seq)>& committed_offset) override;
};

// A TCP port on 127.0.0.1 that is free now (bound to port 0, then released).
absl::StatusOr<int> FreeLoopbackPort();

}  // namespace lorad::server
