#include "server/launch_plan.h"

#include "absl/strings/str_cat.h"

namespace lorad::server {

LaunchPlan PlanWorkerLaunch(const SchedulerOptions& options, int slot_index, const std::filesystem::path& job_dir,
                            bool with_dataset_config, const std::optional<storage::ArtifactRecord>& resume) {
  LaunchPlan plan;
  std::vector<std::string>& argv = plan.launch.argv;
  argv = {options.worker_binary};
  argv.insert(argv.end(), options.worker_args.begin(), options.worker_args.end());
  argv.insert(argv.end(), {"--config_file", (job_dir / "config.toml").string()});
  if (with_dataset_config) {
    argv.insert(argv.end(), {"--dataset_config", (job_dir / "dataset_config.toml").string()});
  }
  argv.insert(argv.end(), {"--events-fd", std::to_string(WorkerProcess::kChildEventsFd)});
  if (resume) {
    argv.insert(argv.end(), {"--resume", resume->path});
    plan.resume_note = absl::StrCat(", resuming from step ", resume->step, " (", resume->name, ")");
  }
  plan.launch.working_dir = job_dir.string();
  if (!options.slot_gpus.empty()) {
    plan.launch.env.emplace_back("CUDA_VISIBLE_DEVICES", options.slot_gpus[slot_index % options.slot_gpus.size()]);
  }
  return plan;
}

}  // namespace lorad::server
