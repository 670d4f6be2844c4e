// SlurmExecutor: every attempt is one `sbatch` job. lorad keeps its queue,
// records and API; Slurm places the ranks.
//
// For attempt A of job J the executor writes, under <job_dir>/slurm/:
//   attempt-A.sbatch   the batch script: --ntasks = the job's GPUs, --gres
//                      from the template, partition/account/time limit,
//                      --no-requeue (lorad re-queues, from its saved state),
//                      output to attempt-A.out; `srun` starts the ranks;
//   attempt-A.rank.sh  what srun runs per task: Slurm's variables become the
//                      rendezvous (SLURM_PROCID -> RANK, SLURM_NTASKS ->
//                      WORLD_SIZE, SLURM_LOCALID -> LOCAL_RANK; the batch
//                      script sets MASTER_ADDR to the first node of
//                      SLURM_JOB_NODELIST and MASTER_PORT from the job id);
//                      rank 0 alone gets --events-file attempt-A.events;
//   attempt-A.id       "<slurm job id> <first seq>", written once sbatch
//                      answers (the job is also named lorad-<dir hash>-J-aA,
//                      so a daemon killed before writing it still finds it).
// The daemon follows attempt-A.events (the pipe's framing, in a file) and
// records each event's end offset with it (Event.source_offset), so a
// restarted daemon re-attaches and reads on from exactly there. It polls the
// job with `scontrol show job` (`sacct` once the controller has forgotten it):
// CANCELLED without lorad asking ends the job CANCELLED with Slurm's words;
// NODE_FAIL / BOOT_FAIL / PREEMPTED re-queue it in lorad (it resumes from its
// last saved state); TIMEOUT / OUT_OF_MEMORY fail it saying so. Cancel is
// `scancel` (Slurm sends SIGTERM, then SIGKILL after its KillWait). The daemon
// stopping leaves the job running: the next start re-attaches.
#pragma once

#include <string>
#include <vector>

#include "server/executor.h"

namespace lorad::server {

struct SlurmOptions {
  std::string partition;     // --partition; empty: the cluster's default
  std::string account;       // --account; empty: the user's default
  // --gres per node; "{gpus}" becomes the GPUs per node. Empty: no --gres
  // (CPU partitions, or clusters that take --gpus in sbatch_args).
  std::string gres = "gpu:{gpus}";
  std::string time_limit;    // --time, e.g. "24:00:00"; empty: the partition's
  // Most GPUs per node: a job asking more spans ceil(gpus / this) nodes.
  // 0: every job on one node.
  int gpus_per_node = 0;
  int cpus_per_task = 0;     // --cpus-per-task; 0: the cluster's default
  std::vector<std::string> sbatch_args;  // more #SBATCH lines, verbatim ("--qos=high")
  // Where sbatch, scancel, scontrol and sacct are; empty: PATH.
  std::string bin_dir;
  double poll_s = 2;         // how often a running job's state is asked
  // Names this lorad's jobs apart from another lorad's on the same cluster.
  std::string name_prefix = "lorad";
};

// The two scripts of one attempt (pure; the executor writes them).
struct SlurmScripts {
  std::string sbatch;  // attempt-A.sbatch
  std::string rank;    // attempt-A.rank.sh
};
SlurmScripts RenderSlurmScripts(const SlurmOptions& options, const AttemptSpec& spec);

// Slurm's files for attempt `attempt` under `job_dir`.
std::filesystem::path SlurmFile(const std::filesystem::path& job_dir, int attempt, const std::string& suffix);

// What Slurm says about a job.
struct SlurmJobState {
  bool known = false;   // false: neither scontrol nor sacct knows it
  std::string state;    // RUNNING, COMPLETED, CANCELLED, NODE_FAIL, ...
  std::string reason;   // scontrol's Reason= ("None" dropped)
  int exit_code = 0;    // ExitCode=N:S
  int term_signal = 0;
  bool terminal() const;
};
// `scontrol show job -o ID` output -> state (known = false when it has no JobState).
SlurmJobState ParseScontrolJob(const std::string& text);
// `sacct -n -P -X -j ID -o State,ExitCode` output ("CANCELLED by 0|0:15").
SlurmJobState ParseSacctJob(const std::string& text);

// The report fields Slurm's final state decides (exit, external_cancel,
// lost_reason, first_failure); `lorad_cancelled`: lorad itself ran scancel.
void ApplySlurmEnd(const SlurmJobState& state, const std::string& slurm_id, bool lorad_cancelled,
                   WorkerReport* report);

class SlurmExecutor : public Executor {
 public:
  explicit SlurmExecutor(SlurmOptions options) : options_(std::move(options)) {}
  std::string name() const override { return "slurm"; }
  int SlotsFor(int) const override { return 1; }
  absl::StatusOr<std::unique_ptr<AttemptRun>> Launch(const AttemptSpec& spec) override;
  absl::StatusOr<std::unique_ptr<AttemptRun>> Reattach(
      const storage::JobRecord& job, const std::filesystem::path& job_dir,
      const std::function<int64_t(int64_t after_seq)>& committed_offset) override;

 private:
  std::string JobName(int64_t job_id, int attempt) const;
  SlurmOptions options_;
};

}  // namespace lorad::server
