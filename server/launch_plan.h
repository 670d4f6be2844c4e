// Launch planning: the lorad-train command line and environment for one
// attempt of a job, from the scheduler's options and what the job folder holds,
// and the ranks a local data-parallel attempt starts. Pure: the caller reads the
// store and the disk first.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "server/scheduler.h"
#include "server/worker_process.h"
#include "storage/job_store.h"

namespace lorad::server {

struct LaunchPlan {
  // Without the events destination: each executor adds rank 0's own.
  WorkerLaunch launch;
  // ", resuming from step N (name)" when `resume` is set; else empty.
  std::string resume_note;
};

// `job_dir` holds config.toml (and dataset_config.toml when
// `with_dataset_config`); `resume` is the saved state to resume from, if any
// (an existing folder). `gpus` (the GPU ids of the slots the job holds) go into
// CUDA_VISIBLE_DEVICES, comma-separated; empty leaves it alone.
LaunchPlan PlanWorkerLaunch(const SchedulerOptions& options, const std::vector<std::string>& gpus,
                            const std::filesystem::path& job_dir, bool with_dataset_config,
                            const std::optional<storage::ArtifactRecord>& resume);

// The ranks of a local attempt, rank 0 first. One rank is `base` with
// --events-fd (as before data parallelism). Several get torchrun's environment
// (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR=127.0.0.1, MASTER_PORT) and the
// same config; only rank 0 gets --events-fd (it alone reports).
std::vector<WorkerLaunch> PlanLocalRanks(const WorkerLaunch& base, int world_size, int master_port);

}  // namespace lorad::server
