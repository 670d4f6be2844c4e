// lorad-bench ddp [STEPS] [--device cuda]: data-parallel training of the tiny
// SDXL LoRA on the CPU over Gloo (with --device cuda: two GPUs over NCCL). One process with batch 4 against two processes (ranks, on
// this machine, rendezvous on 127.0.0.1) with batch 2 each: the same global
// batch, so the same work per step. Reports the step time of each and, for the
// 2-process run, the gradient all-reduce alone (the reducer's buckets of the
// trained LoRA, all-reduced without compute). Each process runs one intra-op
// thread, so 2 processes use 2 cores against 1: ideal is 0.50x. Printed as
// ratios; a benchmark, not a test.
//
// The parent re-executes itself per rank (`lorad-bench ddp --rank R --world W
// --port P --steps N`): fork without exec is unsafe after LibTorch's threads start.
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "bench/bench_registry.h"
#include "core/io/safetensors.h"
#include "core/train/distributed.h"
#include "core/train/test_support.h"
#include "core/train/trainer.h"

namespace {

namespace t = lorad::train;
using Clock = std::chrono::steady_clock;

constexpr int64_t kGlobalBatch = 4;
constexpr int64_t kWarmupSteps = 2;
constexpr int kAllReduceRepeats = 20;

std::filesystem::path WorkDir(int world) {
  return std::filesystem::temp_directory_path() / absl::StrCat("lorad_bench_ddp_", ::getppid(), "_", world);
}

// One rank: trains, times the steps after warm-up, then (2 ranks) the all-reduce alone.
int Worker(int rank, int world, int port, int64_t steps, bool cuda) {
  // One intra-op thread per process: the ratio is the scaling from one core to
  // two, not OpenMP's contention on a shared box (measured: with 2 threads the
  // 1-process step took 4-6 s at load 6 on a shared 2-core box).
  at::set_num_threads(1);
  const std::filesystem::path dir = WorkDir(world);
  t::TrainConfig config = t::testing::TinySdxlConfig(dir);
  config.train_batch_size = kGlobalBatch / world;
  if (cuda) config.device = "cuda";  // rank r on cuda:r, NCCL
  config.max_train_steps = steps + kWarmupSteps;
  t::testing::MemoryBatchSource source(t::testing::MakeShapesDataset(16, 64), kGlobalBatch, 1);
  std::unique_ptr<t::DistributedContext> context;
  if (world > 1) {
    t::DistributedSpec spec;
    spec.world_size = world;
    spec.rank = rank;
    spec.local_rank = rank;
    spec.local_world_size = world;
    spec.master_port = port;
    spec.timeout = std::chrono::minutes(5);
    auto connected = t::DistributedContext::Connect(
        spec, cuda ? torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(rank)) : torch::Device(torch::kCPU));
    if (!connected.ok()) {
      std::fprintf(stderr, "rank %d: %s\n", rank, std::string(connected.status().message()).c_str());
      return 1;
    }
    context = std::move(*connected);
    source.SetShard(rank, world);
  }
  Clock::time_point first;
  t::TrainOptions options;
  options.on_step = [&](int64_t step) {
    if (step == kWarmupSteps) first = Clock::now();
  };
  t::TrainInputs inputs{&source, {}, {}};
  inputs.distributed = context.get();
  auto result = t::Train(config, inputs, nullptr, nullptr, options);
  if (!result.ok()) {
    std::fprintf(stderr, "rank %d: %s\n", rank, std::string(result.status().message()).c_str());
    return 1;
  }
  const double step_s = std::chrono::duration<double>(Clock::now() - first).count() / static_cast<double>(steps);
  double allreduce_s = 0;
  size_t buckets = 0;
  int64_t numel = 0;
  if (context) {
    // Rank 0 wrote the final LoRA before the barrier: the trained tensors' shapes.
    if (!context->Barrier().ok()) return 1;
    auto file = lorad::io::SafetensorsFile::Open(dir / "tiny.safetensors");
    if (!file.ok()) return 1;
    std::vector<torch::Tensor> params;
    for (const std::string& name : (*file)->Names()) {
      if (name.find(".alpha") != std::string::npos) continue;
      auto tensor = (*file)->Get(name);
      if (!tensor.ok()) return 1;
      params.push_back(
          torch::zeros(tensor->sizes(), torch::TensorOptions()
                                            .dtype(torch::kFloat32)
                                            .device(cuda ? torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(rank))
                                                         : torch::Device(torch::kCPU)))
              .set_requires_grad(true));
      numel += tensor->numel();
    }
    t::GradientReducer reducer(*context, params);
    buckets = reducer.num_buckets();
    for (int i = 0; i < 2; ++i) {  // warm-up
      reducer.Arm();
      if (!reducer.Finish().ok()) return 1;
    }
    const double before = reducer.wait_seconds();
    for (int i = 0; i < kAllReduceRepeats; ++i) {
      reducer.Arm();
      if (!reducer.Finish().ok()) return 1;
    }
    allreduce_s = (reducer.wait_seconds() - before) / kAllReduceRepeats;
  }
  if (rank == 0) {
    std::printf("ddp-result %.6f %.6f %zu %lld\n", step_s, allreduce_s, buckets, static_cast<long long>(numel));
    std::fflush(stdout);
  }
  return 0;
}

struct Result {
  double step_s = 0, allreduce_s = 0;
  size_t buckets = 0;
  long long numel = 0;
};

// Runs `world` ranks of this binary and reads rank 0's result line.
bool RunWorld(int world, int64_t steps, bool cuda, Result* out) {
  const int port = 29400 + static_cast<int>(::getpid() % 500);
  std::vector<pid_t> pids;
  int pipe_fds[2];
  if (::pipe(pipe_fds) != 0) return false;
  for (int rank = 0; rank < world; ++rank) {
    std::vector<std::string> args = {"lorad-bench", "ddp", "--rank", std::to_string(rank), "--world",
                                     std::to_string(world), "--port", std::to_string(port), "--steps",
                                     std::to_string(steps), "--device", cuda ? "cuda" : "cpu"};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    const pid_t pid = ::fork();
    if (pid == 0) {
      if (rank == 0) ::dup2(pipe_fds[1], 1);
      ::close(pipe_fds[0]);
      ::close(pipe_fds[1]);
      ::execv("/proc/self/exe", argv.data());
      _exit(127);
    }
    pids.push_back(pid);
  }
  ::close(pipe_fds[1]);
  std::string text;
  char buf[4096];
  ssize_t n;
  while ((n = ::read(pipe_fds[0], buf, sizeof(buf))) > 0) text.append(buf, static_cast<size_t>(n));
  ::close(pipe_fds[0]);
  bool ok = true;
  for (pid_t pid : pids) {
    int status = 0;
    ::waitpid(pid, &status, 0);
    ok = ok && WIFEXITED(status) && WEXITSTATUS(status) == 0;
  }
  std::filesystem::remove_all(WorkDir(world));
  const size_t at = text.find("ddp-result ");
  if (!ok || at == std::string::npos) {
    std::fprintf(stderr, "the %d-process run failed:\n%s\n", world, text.c_str());
    return false;
  }
  return std::sscanf(text.c_str() + at, "ddp-result %lf %lf %zu %lld", &out->step_s, &out->allreduce_s,
                     &out->buckets, &out->numel) == 4;
}

int DdpBench(int argc, char** argv) {
  int rank = -1, world = 1, port = 0;
  int64_t steps = 10;
  bool cuda = false;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string key = argv[i];
    if (key == "--rank") absl::SimpleAtoi(argv[i + 1], &rank);
    if (key == "--world") absl::SimpleAtoi(argv[i + 1], &world);
    if (key == "--port") absl::SimpleAtoi(argv[i + 1], &port);
    if (key == "--steps") absl::SimpleAtoi(argv[i + 1], &steps);
    if (key == "--device") cuda = std::string(argv[i + 1]) == "cuda";
  }
  if (rank >= 0) return Worker(rank, world, port, steps, cuda);
  if (argc > 1 && argv[1][0] != '-') absl::SimpleAtoi(argv[1], &steps);
  std::printf("tiny SDXL LoRA (dim 8) on %s, global batch %lld, %lld timed steps after %lld warm-up, "
              "1 thread per process, %u cores\n",
              cuda ? "CUDA (NCCL, rank r on cuda:r)" : "CPU (Gloo)", static_cast<long long>(kGlobalBatch),
              static_cast<long long>(steps), static_cast<long long>(kWarmupSteps), std::thread::hardware_concurrency());
  Result one, two;
  if (!RunWorld(1, steps, cuda, &one) || !RunWorld(2, steps, cuda, &two)) return 1;
  std::printf("%-10s %-11s %12s %12s\n", "processes", "batch/rank", "step ms", "vs 1 process");
  std::printf("%-10d %-11lld %12.1f %11.2fx\n", 1, static_cast<long long>(kGlobalBatch), one.step_s * 1e3, 1.0);
  std::printf("%-10d %-11lld %12.1f %11.2fx\n", 2, static_cast<long long>(kGlobalBatch / 2), two.step_s * 1e3,
              two.step_s / one.step_s);
  std::printf("all-reduce alone: %zu bucket(s), %lld floats, %.2f ms = %.1f%% of the 2-process step\n", two.buckets,
              two.numel, two.allreduce_s * 1e3, 100.0 * two.allreduce_s / two.step_s);
  return 0;
}

}  // namespace

LORAD_BENCH(ddp, "step time of data-parallel training, 2 processes vs 1 (tiny SDXL; CPU Gloo, --device cuda NCCL), all-reduce alone",
            DdpBench);
