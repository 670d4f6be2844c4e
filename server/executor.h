// Executor: where one attempt of a job runs. The scheduler keeps the queue,
// the slots and the job's records; an Executor only starts an attempt's ranks
// and supervises them until they end, through one interface for both kinds:
//   - LocalExecutor (local_executor.h): `lorad-train` ranks as child
//     processes of the daemon, one per GPU slot the job holds;
//   - SlurmExecutor (slurm_executor.h): one `sbatch` job per attempt, `srun`
//     starting the ranks wherever Slurm places them.
// Both report through the same WorkerReport, so ClassifyJobEnd decides every
// job's end the same way.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "server/job_outcome.h"
#include "server/worker_process.h"
#include "server/worker_session.h"
#include "storage/job_store.h"

namespace lorad::server {

// One attempt of a job, as the executor needs it.
struct AttemptSpec {
  int64_t job_id = 0;
  int attempt = 0;  // JobRecord::attempts after the claim (1 for the first start)
  std::filesystem::path job_dir;
  // Ranks to start: one per GPU (data-parallel lorad-train, torchrun's
  // WORLD_SIZE). 1: a plain single-process run, as before.
  int world_size = 1;
  // lorad-train's command line and environment without the events
  // destination (each executor adds rank 0's own: a pipe or a file).
  WorkerLaunch base;
  // The job's last event seq before this attempt (Slurm: where a re-attached
  // follower starts looking for its offset).
  int64_t first_seq = 0;
};

// An attempt that runs (or ran while lorad was away).
class AttemptRun {
 public:
  virtual ~AttemptRun() = default;
  // "pid 123" / "pids 123, 124; 2 ranks, rendezvous 127.0.0.1:40211" / "Slurm job 57".
  virtual std::string Describe() const = 0;
  // Blocks until the attempt has ended (or, for an executor whose attempts
  // outlive the daemon, until the daemon stops: report.detached). Must run on
  // the thread that launched it (local children die with that thread).
  virtual WorkerReport Supervise(const WorkerSessionOptions& options) = 0;
};

class Executor {
 public:
  virtual ~Executor() = default;
  virtual std::string name() const = 0;  // "local" | "slurm"
  // The scheduler slots a job of `gpus` GPUs holds while it runs. Local: one
  // slot per GPU (each slot is a GPU). Slurm: one, whatever its GPUs (Slurm
  // places them; lorad's slots only cap the jobs it keeps submitted).
  virtual int SlotsFor(int gpus) const = 0;
  virtual absl::StatusOr<std::unique_ptr<AttemptRun>> Launch(const AttemptSpec& spec) = 0;
  // After a restart, the attempt a previous daemon left RUNNING when it still
  // runs or its end can still be read; nullptr when nothing can be re-attached
  // (the job is then re-queued). `committed_offset(after_seq)`: the highest
  // events-file offset recorded among the job's events after `after_seq`.
  virtual absl::StatusOr<std::unique_ptr<AttemptRun>> Reattach(
      const storage::JobRecord& job, const std::filesystem::path& job_dir,
      const std::function<int64_t(int64_t after_seq)>& committed_offset) = 0;
};

}  // namespace lorad::server
