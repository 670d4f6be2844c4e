// Data-parallel training over PyTorch's c10d: the rendezvous (rank 0 hosts a
// c10d::TCPStore), the process group (Gloo on CPU, NCCL on CUDA where the build
// has its headers), the bucketed gradient all-reduce overlapped with backward,
// and the diagnosis of a failed peer.
//
// How a job is laid out (the contract with the daemon and with launchers):
// - Every rank is one `lorad-train` process with the same config. Its place
//   comes from the torchrun environment (WORLD_SIZE, RANK, LOCAL_RANK,
//   LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT), which wins over accelerate's
//   keys (num_processes, num_machines, machine_rank, main_process_ip,
//   main_process_port). Without the environment and with num_processes > 1,
//   lorad-train itself is the launcher: it starts num_processes / num_machines
//   local ranks with that environment (see launcher.h) and exits with rank 0's
//   exit code. A log line says which source was used.
// - Only rank 0 gets `--events-fd`; only rank 0 writes LoRAs, states, previews
//   and events. Other ranks print errors on stderr only.
// - A rank that dies, fails or stalls makes every other rank's next collective
//   fail within ddp_timeout (a dead process: at once, its sockets close). Each
//   rank that fails on its own writes its reason into the store; rank 0 names
//   the rank and the reason ("rank 1 died: no heartbeat for 2 s" / "rank 1
//   failed: out of memory ...") in its Failed event and exits with
//   kExitPeerFailed (16, status ABORTED). Nothing hangs past ddp_timeout.
// - World size 1 creates none of this: the single-process loop is unchanged.
//
// Data (core/data's DatasetArgs rank/world_size): an epoch is planned in global
// batches of train_batch_size x world size from the seed, identical on every
// rank; rank r loads its contiguous share of each global batch (a balanced
// split, so a bucket's last, short batch gives some ranks fewer or no samples:
// they still join the all-reduce). Gradients are weighted by each rank's share
// of the planned global batch, so the update equals the single-process update
// on the global batch. Noise and timesteps are drawn for the whole global batch
// on every rank and each takes its rows: the RNG streams stay identical across
// ranks and equal to a single process with the global batch size.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/config/config.h"

namespace lorad::train {

struct DistributedSpec {
  int world_size = 1;
  int rank = 0;
  int local_rank = 0;
  int local_world_size = 1;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  std::chrono::milliseconds timeout{std::chrono::minutes(30)};
  // "torchrun environment", "config keys", or "single process": for the log line.
  std::string source = "single process";
  // Config keys asked for several local ranks and no environment placed this
  // process: it launches them (launcher.h) instead of training.
  bool launch_local_ranks = false;
};

// Looks up an environment variable (tests pass their own).
using EnvLookup = std::function<std::optional<std::string>(const std::string& name)>;
EnvLookup ProcessEnvironment();

// Where this process stands. INVALID_ARGUMENT names the variable or key that is
// inconsistent (RANK >= WORLD_SIZE, num_processes not divisible by num_machines, ...).
absl::StatusOr<DistributedSpec> ResolveDistributed(const TrainConfig& config, const EnvLookup& env);

// One line for the log: the world, this rank and where its place came from.
std::string DescribeDistributed(const DistributedSpec& spec);

class GradientReducer;

// A joined process group. Collectives take CPU or device tensors; every error
// is ABORTED and names the failed peer where one can be found. Not thread-safe
// (the training thread; the gradient hooks run on it or on autograd's device thread).
class DistributedContext {
 public:
  // Rendezvous: rank 0 hosts the TCPStore on master_port; everyone waits at
  // most spec.timeout for the others. `device`: NCCL when CUDA, Gloo otherwise.
  static absl::StatusOr<std::unique_ptr<DistributedContext>> Connect(const DistributedSpec& spec,
                                                                     torch::Device device);
  ~DistributedContext();
  DistributedContext(const DistributedContext&) = delete;
  DistributedContext& operator=(const DistributedContext&) = delete;

  int rank() const { return spec_.rank; }
  int world_size() const { return spec_.world_size; }
  bool is_main() const { return spec_.rank == 0; }
  const DistributedSpec& spec() const { return spec_; }
  std::string backend_name() const;

  // In-place sum over all ranks, waited for.
  absl::Status AllReduceSum(torch::Tensor& tensor);
  // In place: true when every rank holds the same int64 values (compares the
  // all-reduced MIN and MAX).
  absl::StatusOr<bool> SameOnAllRanks(const torch::Tensor& values);
  absl::Status Barrier();

  // Records this rank's own failure in the store, for rank 0's report (best effort).
  void RecordOwnFailure(const absl::Status& status);
  // ABORTED naming the rank(s) that died, failed or stalled, after a collective
  // failed with `what`; looks at the failure records and heartbeats (waits ~2 s).
  absl::Status DiagnoseFailure(const std::string& what);

 private:
  friend class GradientReducer;
  struct Impl;
  DistributedContext(DistributedSpec spec, std::unique_ptr<Impl> impl);

  DistributedSpec spec_;
  std::unique_ptr<Impl> impl_;
};

// Averages the gradients of `params` across ranks in flat buckets: per-parameter
// hooks copy each gradient into its bucket as backward produces it, and a full
// bucket's all-reduce starts at once (in bucket order, the same on every rank)
// while backward goes on; Finish() waits and writes the sums back into .grad.
// The caller scales each rank's loss by its share of the global batch, so the
// sum is the global-batch gradient. Buckets follow the parameters in reverse
// (backward's order), 1 MiB first then `bucket_cap_bytes`, as torch DDP does.
class GradientReducer {
 public:
  GradientReducer(DistributedContext& context, std::vector<torch::Tensor> params,
                  size_t bucket_cap_bytes = 25u << 20, size_t first_bucket_bytes = 1u << 20);
  ~GradientReducer();
  GradientReducer(const GradientReducer&) = delete;
  GradientReducer& operator=(const GradientReducer&) = delete;

  // The next backward is the step's last micro-batch: its hooks fill the buckets.
  void Arm();
  // Completes every bucket (a parameter whose hook did not fire, e.g. on a rank
  // with no samples, contributes its accumulated .grad or zeros), waits for the
  // all-reduces and writes the summed gradients into .grad.
  absl::Status Finish();

  size_t num_buckets() const;
  // Seconds spent in Finish() waiting for all-reduces (the benchmark reads it).
  double wait_seconds() const { return wait_seconds_; }

 private:
  struct State;
  DistributedContext& context_;
  std::shared_ptr<State> state_;
  double wait_seconds_ = 0;
};

// A 64-bit FNV-1a hash of the tensors' bytes (on the CPU), as an int64 tensor
// [1]: compared across ranks to assert the replicas are identical.
torch::Tensor ReplicaFingerprint(const std::vector<torch::Tensor>& tensors);

}  // namespace lorad::train
