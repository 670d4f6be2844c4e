// lorad-bench optim: time per step and optimizer-state bytes per parameter of
// every optimizer on a rank-32 SDXL LoRA sized parameter set (85 M parameters by
// default), each as a ratio against AdamW measured in the same run.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "bench/bench_registry.h"
#include "core/optim/optimizer.h"

namespace lorad::bench {
namespace {

// (in, out) features of the Linear layers a rank-32 SDXL LoRA wraps, in the
// proportions one transformer block of each width has them: attention q/k/v/out,
// cross-attention k/v from the 2048-wide context, GEGLU ff (in -> 2x4in, 4in -> in),
// proj_in/out; plus CLIP-L/bigG text encoder layers.
const std::vector<std::pair<int64_t, int64_t>>& LayerMix() {
  static const std::vector<std::pair<int64_t, int64_t>> mix = {
      {640, 640},   {640, 640},   {2048, 640},  {2048, 640},  {640, 640},   {640, 640},   {640, 5120},
      {2560, 640},  {640, 640},   {640, 640},   {1280, 1280}, {1280, 1280}, {2048, 1280}, {2048, 1280},
      {1280, 1280}, {1280, 1280}, {1280, 10240}, {5120, 1280}, {1280, 1280}, {1280, 1280}, {768, 768},
      {768, 3072},  {3072, 768},  {1280, 1280}, {1280, 5120}, {5120, 1280}};
  return mix;
}

std::vector<torch::Tensor> MakeParams(int64_t target, int64_t rank) {
  std::vector<torch::Tensor> params;
  int64_t total = 0;
  for (size_t i = 0; total < target; i = (i + 1) % LayerMix().size()) {
    auto [in, out] = LayerMix()[i];
    for (auto shape : {std::vector<int64_t>{rank, in}, std::vector<int64_t>{out, rank}}) {
      torch::Tensor p = (torch::randn(shape) * 0.01).set_requires_grad(true);
      p.mutable_grad() = torch::randn(shape) * 1e-3;
      total += p.numel();
      params.push_back(p);
    }
  }
  return params;
}

struct Row {
  std::string name;
  double ms_per_step = 0;
  double bytes_per_param = 0;
};

int Run(int argc, char** argv) {
  int64_t n = 85'000'000;
  int steps = 5;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--params") && i + 1 < argc) {
      n = std::atoll(argv[++i]);
    } else if (!std::strcmp(argv[i], "--steps") && i + 1 < argc) {
      steps = std::atoi(argv[++i]);
    } else {
      std::fprintf(stderr, "usage: lorad-bench optim [--params N (default 85000000)] [--steps K (default 5)]\n");
      return 2;
    }
  }
  if (n <= 0 || steps <= 0) {
    std::fprintf(stderr, "--params and --steps must be positive\n");
    return 2;
  }
  torch::manual_seed(0);
  std::vector<torch::Tensor> params = MakeParams(n, 32);
  int64_t total = 0;
  for (const auto& p : params) total += p.numel();
  std::printf("optimizer step on %lld parameters in %zu tensors (rank-32 SDXL LoRA shapes), %d timed steps, %d threads\n",
              static_cast<long long>(total), params.size(), steps, torch::get_num_threads());
  struct Spec {
    const char* type;
    std::vector<std::string> args;
    double lr;
  };
  const std::vector<Spec> specs = {
      {"AdamW", {}, 1e-4},
      {"AdamW8bit", {}, 1e-4},
      {"Lion", {}, 1e-5},
      {"Adafactor", {"scale_parameter=False", "relative_step=False", "warmup_init=False"}, 1e-4},
      {"Prodigy", {}, 1.0},
      {"CAME", {}, 1e-4},
  };
  std::vector<Row> rows;
  for (const Spec& spec : specs) {
    auto opt = lorad::optim::CreateOptimizer(spec.type, spec.args, {lorad::optim::ParamGroup{"unet", params, spec.lr}});
    if (!opt.ok()) {
      std::fprintf(stderr, "%s: %s\n", spec.type, std::string(opt.status().message()).c_str());
      return 1;
    }
    absl::Status st = (*opt)->Step();  // allocates state
    if (!st.ok()) {
      std::fprintf(stderr, "%s: %s\n", spec.type, std::string(st.message()).c_str());
      return 1;
    }
    const auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < steps; ++i) {
      st = (*opt)->Step();
      if (!st.ok()) return 1;
    }
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    rows.push_back({spec.type, ms / steps, static_cast<double>((*opt)->StateBytes()) / static_cast<double>(total)});
  }
  const Row& base = rows.front();
  std::printf("\n| optimizer | ms/step | vs AdamW | state bytes/param | vs AdamW |\n|---|---:|---:|---:|---:|\n");
  for (const Row& r : rows) {
    std::printf("| %s | %.1f | %.2fx | %.3f | %.2fx |\n", r.name.c_str(), r.ms_per_step, r.ms_per_step / base.ms_per_step,
                r.bytes_per_param, r.bytes_per_param / base.bytes_per_param);
  }
  return 0;
}

}  // namespace
}  // namespace lorad::bench

LORAD_BENCH(optim, "optimizer step time and state bytes/param vs AdamW (--params N, --steps K)",
            lorad::bench::Run);
