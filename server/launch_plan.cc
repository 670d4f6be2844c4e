#include "server/launch_plan.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace lorad::server {

LaunchPlan PlanWorkerLaunch(const SchedulerOptions& options, const std::vector<std::string>& gpus,
                            const std::filesystem::path& job_dir, bool with_dataset_config,
                            const std::optional<storage::ArtifactRecord>& resume) {
  LaunchPlan plan;
  std::vector<std::string>& argv = plan.launch.argv;
  argv = {options.worker_binary};
  argv.insert(argv.end(), options.worker_args.begin(), options.worker_args.end());
  argv.insert(argv.end(), {"--config_file", (job_dir / "config.toml").string()});
  if (with_dataset_config) {
    argv.insert(argv.end(), {"--dataset_config", (job_dir / "dataset_config.toml").string()});
  }
  if (resume) {
    argv.insert(argv.end(), {"--resume", resume->path});
    plan.resume_note = absl::StrCat(", resuming from step ", resume->step, " (", resume->name, ")");
  }
  plan.launch.working_dir = job_dir.string();
  if (!gpus.empty()) plan.launch.env.emplace_back("CUDA_VISIBLE_DEVICES", absl::StrJoin(gpus, ","));
  return plan;
}

std::vector<WorkerLaunch> PlanLocalRanks(const WorkerLaunch& base, int world_size, int master_port) {
  std::vector<WorkerLaunch> ranks;
  for (int rank = 0; rank < std::max(world_size, 1); ++rank) {
    WorkerLaunch launch = base;
    if (rank == 0) {
      launch.argv.insert(launch.argv.end(), {"--events-fd", std::to_string(WorkerProcess::kChildEventsFd)});
    }
    if (world_size > 1) {
      // torchrun's names: lorad-train's data-parallel rendezvous reads them.
      // Every rank sees all the job's GPUs and takes cuda:LOCAL_RANK.
      launch.env.emplace_back("WORLD_SIZE", std::to_string(world_size));
      launch.env.emplace_back("RANK", std::to_string(rank));
      launch.env.emplace_back("LOCAL_RANK", std::to_string(rank));
      launch.env.emplace_back("LOCAL_WORLD_SIZE", std::to_string(world_size));
      launch.env.emplace_back("MASTER_ADDR", "127.0.0.1");
      launch.env.emplace_back("MASTER_PORT", std::to_string(master_port));
    }
    ranks.push_back(std::move(launch));
  }
  return ranks;
}

}  // namespace lorad::server
