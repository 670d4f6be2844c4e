// lorad-train: the standalone kohya-style trainer, and the daemon's worker.
//
//   lorad-train --config_file CONFIG.toml [--dataset_config DATA.toml] [--key value ...]
//               [--events-fd N | --events-file PATH] [--resume STATE_DIR]
//
// Prints a progress bar on stderr; with --events-fd writes lorad.v1.Event
// messages to fd N; with --events-file appends them, framed the same way, to
// PATH (the Slurm executor's rank 0: the daemon follows the file).
// SIGTERM / SIGINT save a resumable state and exit with kExitCancelled. Exit codes: core/base/exit_codes.h.
#include <fcntl.h>

#include <cerrno>
#include <csignal>
#include <cstring>
#include <ctime>
#include <cstdio>
#include <iostream>
#include <random>

#include "core/base/exception_boundary.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/base/logging.h"
#include "core/config/config.h"
#include "core/train/dataset_glue.h"
#include "core/train/distributed.h"
#include "core/train/launcher.h"
#include "core/train/model_bundle.h"
#include "core/train/events_observer.h"
#include "core/base/exit_codes.h"
#include "core/train/observer.h"
#include "core/train/tensorboard_writer.h"
#include "core/train/trainer.h"

namespace {

lorad::train::CancellationToken* g_cancel = nullptr;

extern "C" void OnSignal(int) {
  if (g_cancel) g_cancel->Cancel(/*save_state=*/true);
}

constexpr char kUsage[] =
    "usage: lorad-train --config_file CONFIG.toml [--dataset_config DATA.toml] [--key value ...]\n"
    "                   [--events-fd N | --events-file PATH] [--resume STATE_DIR]\n"
    "Options are kohya sd-scripts names (e.g. --network_dim 16 --learning_rate 1e-4);\n"
    "the command line overrides the TOML file. --help-keys lists every option.\n";

// What a data-parallel rank other than 0 shows: its failure on stderr (rank 0
// reports the job's progress, files and events).
class RankFailureObserver : public lorad::train::TrainObserver {
 public:
  explicit RankFailureObserver(int rank) : rank_(rank) {}
  void OnFinish(const lorad::train::RunFinished& result) override {
    if (result.outcome == lorad::train::RunOutcome::kFailed) {
      std::cerr << "rank " << rank_ << ": FAILED at step " << result.final_step << ": " << result.reason << "\n";
    }
  }

 private:
  int rank_;
};

int Fail(lorad::train::TrainObserver& observer, const absl::Status& status) {
  observer.OnFinish({lorad::train::RunOutcome::kFailed, std::string(status.message()), "", 0});
  return lorad::TrainerExitCode(status);
}

}  // namespace

// The program; main() below is its exception boundary.
static int ToolMain(int argc, char** argv) {
  using namespace lorad::train;
  using namespace lorad;
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty() || args[0] == "--help" || args[0] == "-h") {
    std::cerr << kUsage;
    return args.empty() ? kExitUsage : kExitOk;
  }
  if (args[0] == "--help-keys") {
    std::cout << absl::StrJoin(KnownOptionNames(), "\n") << "\n";
    return kExitOk;
  }
  // `lorad-train config.toml ...` is accepted as --config_file config.toml.
  if (!args[0].starts_with("--")) args.insert(args.begin(), "--config_file");

  ProgressBarObserver bar;
  ObserverList observers;
  observers.Add(&bar);
  std::unique_ptr<EventsObserver> events;

  auto parsed = ParseCommandLine(args);
  if (!parsed.ok()) {
    std::cerr << parsed.status().message() << "\n" << kUsage;
    return kExitUsage;
  }
  std::string config_file;
  std::vector<std::pair<std::string, std::string>> overrides;
  for (const auto& [key, value] : *parsed) {
    if (key == "config_file") {
      config_file = value;
    } else if (key == "events_fd") {
      int fd = -1;
      if (!absl::SimpleAtoi(value, &fd) || fd < 0) {
        std::cerr << "--events-fd needs a file descriptor number, got \"" << value << "\"\n";
        return kExitUsage;
      }
      events = std::make_unique<EventsObserver>(fd);
      observers.Add(events.get());
    } else if (key == "events_file") {
      // Kept open for the whole run; appended to, so a follower's offsets stay valid.
      const int fd = ::open(value.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
      if (fd < 0) {
        std::cerr << "--events-file: cannot open \"" << value << "\": " << std::strerror(errno) << "\n";
        return kExitNotFound;
      }
      events = std::make_unique<EventsObserver>(fd);
      observers.Add(events.get());
    } else {
      overrides.emplace_back(key, value);
    }
  }

  auto config = LoadTrainConfig(config_file, overrides);
  if (!config.ok()) return Fail(observers, config.status());

  // Data-parallel: the torchrun environment or accelerate's keys (distributed.h).
  auto spec = ResolveDistributed(*config, ProcessEnvironment());
  if (!spec.ok()) return Fail(observers, spec.status());
  if (spec->launch_local_ranks) return LaunchLocalRanks(*spec, args);
  std::unique_ptr<DistributedContext> distributed;
  RankFailureObserver rank_failure(spec->rank);
  TrainObserver* run_observer = &observers;
  if (spec->world_size > 1) {
    std::cerr << DescribeDistributed(*spec) << "\n";
    if (spec->rank != 0) run_observer = &rank_failure;
    auto device = ResolveDevice(config->device);
    if (!device.ok()) return Fail(*run_observer, device.status());
    // One GPU per local rank unless the config names one, as the trainer places the model.
    if (device->is_cuda() && config->device.find(':') == std::string::npos) {
      *device = torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(
                                                spec->local_rank % std::max<int64_t>(1, torch::cuda::device_count())));
    }
    auto connected = DistributedContext::Connect(*spec, *device);
    if (!connected.ok()) return Fail(*run_observer, connected.status());
    distributed = std::move(*connected);
    // Every rank trains from rank 0's seed (an unset seed is drawn once).
    torch::Tensor seed = torch::zeros({1}, torch::kFloat64);
    if (spec->rank == 0) {
      if (!config->seed) config->seed = static_cast<int64_t>(std::random_device()() & 0x7fffffff);
      seed[0] = static_cast<double>(*config->seed);
    }
    if (absl::Status agreed = distributed->AllReduceSum(seed); !agreed.ok()) return Fail(*run_observer, agreed);
    config->seed = static_cast<int64_t>(seed[0].item<double>());
  }
  if (!config->seed) {
    std::random_device rd;
    config->seed = static_cast<int64_t>(rd() & 0x7fffffff);
  }

  // From here a rank's failure is also recorded for rank 0's report.
  auto FailRank = [&](const absl::Status& status) {
    if (distributed) distributed->RecordOwnFailure(status);
    return Fail(*run_observer, status);
  };
  auto native = NativeResolutionOf(config->pretrained_model_name_or_path);
  if (!native.ok()) return FailRank(native.status());
  auto dataset_args = DatasetArgsFor(*config, *native);
  if (!dataset_args.ok()) return FailRank(dataset_args.status());
  dataset_args->world_size = spec->world_size;
  dataset_args->rank = spec->rank;
  auto dataset = lorad::data::Dataset::Open(*dataset_args);
  if (!dataset.ok()) {
    return FailRank(absl::Status(dataset.status().code(),
                                        absl::StrCat("dataset: ", dataset.status().message())));
  }
  for (const std::string& w : (*dataset)->warnings()) run_observer->OnWarning("dataset", w);
  for (const std::string& s : (*dataset)->skipped()) run_observer->OnWarning("image_skipped", s);

  // kohya's TensorBoard tracker: logging_dir with log_with unset or "tensorboard".
  std::unique_ptr<TensorBoardObserver> tensorboard;
  if (auto settings = TensorBoardSettingsFor(*config); settings && spec->rank == 0) {
    auto created = TensorBoardObserver::Create(*settings, std::time(nullptr));
    if (!created.ok()) return FailRank(created.status());
    tensorboard = std::move(*created);
    observers.Add(tensorboard.get());
    const std::string line = absl::StrCat("TensorBoard log: ", tensorboard->file().parent_path().string());
    std::cerr << line << "\n";
    if (events) events->Log(false, line);
  }

  CancellationToken cancel;
  g_cancel = &cancel;
  std::signal(SIGTERM, OnSignal);
  std::signal(SIGINT, OnSignal);

  TrainInputs inputs = InputsFor(*config, **dataset);
  inputs.distributed = distributed.get();
  auto result = Train(*config, inputs, run_observer, &cancel);
  g_cancel = nullptr;
  if (tensorboard && !tensorboard->status().ok()) {
    // The log is an aid: its failure is reported, never the run's.
    std::cerr << "tensorboard: " << tensorboard->status().message() << "\n";
    if (events) events->Log(true, absl::StrCat("TensorBoard log: ", tensorboard->status().message()));
  }
  if (events && !events->status().ok()) {
    std::cerr << "events: " << events->status().message() << "\n";
    if (result.ok()) return kExitEventsBroken;
  }
  return lorad::TrainerExitCode(result.status());
}

int main(int argc, char** argv) {
  return lorad::RunToolMain("lorad-train", [&] { return ToolMain(argc, argv); });
}
