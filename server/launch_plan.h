// Launch planning: the lorad-train command line and environment for one
// attempt of a job, from the scheduler's options and what the job folder holds.
// Pure: the caller reads the store and the disk first.
#pragma once

#include <filesystem>
#include <optional>
#include <string>

#include "server/scheduler.h"
#include "server/worker_process.h"
#include "storage/job_store.h"

namespace lorad::server {

struct LaunchPlan {
  WorkerLaunch launch;
  // ", resuming from step N (name)" when `resume` is set; else empty.
  std::string resume_note;
};

// `job_dir` holds config.toml (and dataset_config.toml when
// `with_dataset_config`); `resume` is the saved state to resume from, if any
// (an existing folder). The slot's GPU goes into CUDA_VISIBLE_DEVICES unless
// options.slot_gpus is empty.
LaunchPlan PlanWorkerLaunch(const SchedulerOptions& options, int slot_index, const std::filesystem::path& job_dir,
                            bool with_dataset_config, const std::optional<storage::ArtifactRecord>& resume);

}  // namespace lorad::server
