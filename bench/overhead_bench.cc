// lorad-bench overhead: host overhead of one SDXL LoRA training step on the CPU.
// The full-size SDXL U-Net at a tiny latent (8x8 = 64 px) makes the compute
// small, so the ATen ops dispatched per step (forward + backward + optimizer)
// and the milliseconds per step measure dispatch, not arithmetic. kohya's
// sd-scripts launches about 20,000 CUDA kernels per SDXL step (issue 11): the
// op count is compared to that.
//
// The step runs in the modes of bench/sdxl_lora_step.h, eager first, on one
// U-Net: eager (no graphs or fusions) and fused (the optimizer's fused kernels,
// no read-back in the step) by default. CUDA graphs are not captured on the CPU:
// --modes graphs runs the graph mode's static-buffer step eagerly. The
// optimizer's fused kernels exist for CUDA float32 parameters on LibTorch 2.x
// only, so on the CPU fused differs from eager in the host read-backs alone.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "bench/bench_registry.h"
#include "bench/op_counter.h"
#include "bench/sdxl_lora_step.h"
#include "core/base/status_macros.h"
#include "core/common/torch_compat.h"

namespace lorad::bench {
namespace {

constexpr double kKohyaOpsPerStep = 20000;

void Usage() {
  std::fprintf(stderr,
               "usage: lorad-bench overhead [--latent N (8)] [--batch N (1)] [--steps N (5)] [--warmup N (2)]\n"
               "                            [--modes eager,fused (eager,fused; graphs: its step without capture)]\n"
               "                            [--weights bf16|f32 (bf16)] [--top N (12)] [--json FILE]\n");
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : (v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2);
}

// One mode's figures.
struct ModeResult {
  StepMode mode;
  std::vector<double> ms;  // per timed step
  double median_ms = 0;
  OpCounts counts;
};

// Warm-up, timed steps (each timed alone: on the CPU a step ends when Step()
// returns) and one step counted on its own (the callback costs time).
absl::StatusOr<ModeResult> MeasureMode(SdxlLoraStep& step, StepMode mode, int64_t batch, int64_t latent, int warmup,
                                       int steps) {
  ModeResult r{mode, {}, 0, {}};
  RETURN_IF_ERROR(step.SetMode(mode));
  step.SetBatch(batch, latent);
  for (int i = 0; i < warmup; ++i) RETURN_IF_ERROR(step.Step().status());
  for (int i = 0; i < steps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    RETURN_IF_ERROR(step.Step().status());
    r.ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  r.median_ms = Median(r.ms);
  OpCounter counter;
  RETURN_IF_ERROR(step.Step().status());
  r.counts = counter.Take();
  return r;
}

int Run(int argc, char** argv) {
  int64_t latent = 8, batch = 1;
  int steps = 5, warmup = 2, top = 12;
  std::string json_path, weights = "bf16";
  std::vector<StepMode> modes = {StepMode::kEager, StepMode::kFused};
  for (int i = 1; i < argc; ++i) {
    const bool has_value = i + 1 < argc;
    if (!std::strcmp(argv[i], "--latent") && has_value) {
      latent = std::atoll(argv[++i]);
    } else if (!std::strcmp(argv[i], "--batch") && has_value) {
      batch = std::atoll(argv[++i]);
    } else if (!std::strcmp(argv[i], "--steps") && has_value) {
      steps = std::atoi(argv[++i]);
    } else if (!std::strcmp(argv[i], "--warmup") && has_value) {
      warmup = std::atoi(argv[++i]);
    } else if (!std::strcmp(argv[i], "--top") && has_value) {
      top = std::atoi(argv[++i]);
    } else if (!std::strcmp(argv[i], "--weights") && has_value) {
      weights = argv[++i];
    } else if (!std::strcmp(argv[i], "--modes") && has_value) {
      absl::StatusOr<std::vector<StepMode>> parsed = ParseStepModes(argv[++i]);
      if (!parsed.ok()) {
        std::fprintf(stderr, "%s\n", std::string(parsed.status().message()).c_str());
        Usage();
        return 2;
      }
      modes = *std::move(parsed);
    } else if (!std::strcmp(argv[i], "--json") && has_value) {
      json_path = argv[++i];
    } else {
      Usage();
      return 2;
    }
  }
  if (latent < 8 || latent % 8 != 0 || batch < 1 || steps < 1 || warmup < 0 || modes.empty() ||
      (weights != "bf16" && weights != "f32")) {
    std::fprintf(stderr, "--latent must be a multiple of 8 (the U-Net downsamples 3 times), --batch and --steps >= 1, "
                         "--modes not empty, --weights bf16 or f32\n");
    return 2;
  }

  // Frozen weights in bf16 by default: the U-Net is 2.6e9 parameters, 10.4 GB
  // in f32, which leaves too little of a 24 GiB build machine for the compilers
  // running beside it; bf16 (5.2 GB) is also what a CUDA run stores.
  SdxlLoraOptions options;
  options.device = torch::kCPU;
  options.weight_dtype = weights == "bf16" ? torch::kBFloat16 : torch::kFloat32;
  options.autocast_dtype = torch::kBFloat16;
  options.mode = modes.front();
  const auto build_start = std::chrono::steady_clock::now();
  auto created = SdxlLoraStep::Create(options);
  if (!created.ok()) {
    std::fprintf(stderr, "overhead bench: %s\n", std::string(created.status().message()).c_str());
    return 1;
  }
  SdxlLoraStep& step = **created;
  const double build_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - build_start).count();
  std::printf("full-size SDXL U-Net (%.3g parameters, %s frozen, built in %.0f s) + LoRA rank %lld / alpha %g on %lld "
              "kohya targets (%.3g parameters), AdamW, CPU autocast bf16\n",
              static_cast<double>(step.unet_parameters()), weights.c_str(), build_s,
              static_cast<long long>(options.rank), options.alpha, static_cast<long long>(step.lora_modules()),
              static_cast<double>(step.lora_parameters()));
  std::printf("batch %lld, latent %lldx%lld (%lld px), LibTorch %s, %d threads, %d warm-up + %d timed steps per mode\n\n",
              static_cast<long long>(batch), static_cast<long long>(latent), static_cast<long long>(latent),
              static_cast<long long>(latent * 8), compat::TorchVersion().c_str(), torch::get_num_threads(), warmup,
              steps);

  std::vector<ModeResult> results;
  for (StepMode mode : modes) {
    absl::StatusOr<ModeResult> r = MeasureMode(step, mode, batch, latent, warmup, steps);
    if (!r.ok()) {
      std::fprintf(stderr, "overhead bench (%s): %s\n", StepModeName(mode), std::string(r.status().message()).c_str());
      return 1;
    }
    results.push_back(std::move(*r));
  }
  const ModeResult* eager = results.front().mode == StepMode::kEager ? &results.front() : nullptr;

  std::printf("%-7s %10s %10s %12s %10s %10s %16s %14s\n", "mode", "ATen ops", "outermost", "kernel ops",
              "us/op", "ms/step", "kernels/kohya", "eager/mode ms");
  for (const ModeResult& r : results) {
    char vs_eager[16] = "-";
    if (eager != nullptr) std::snprintf(vs_eager, sizeof(vs_eager), "%.2fx", eager->median_ms / r.median_ms);
    std::printf("%-7s %10lld %10lld %12lld %10.1f %10.1f %15.2fx %14s\n", StepModeName(r.mode),
                static_cast<long long>(r.counts.all), static_cast<long long>(r.counts.outermost),
                static_cast<long long>(r.counts.kernels), 1000.0 * r.median_ms / static_cast<double>(r.counts.all),
                r.median_ms, static_cast<double>(r.counts.kernels) / kKohyaOpsPerStep, vs_eager);
  }
  std::printf("\neager: no graphs or fusions (per-parameter AdamW, loss and grad norm read back every step); fused:\n"
              "the optimizer's fused kernels (CUDA float32 on LibTorch 2.x only: on the CPU AdamW runs per parameter\n"
              "as in eager) and no read-back in the step. CUDA graphs are not captured on the CPU (lorad-bench gpu\n"
              "measures them). kohya: ~%.0f CUDA kernels per SDXL step (issue 11).\n",
              kKohyaOpsPerStep);
  std::printf("ATen ops counts every dispatched op, nested ones too (linear -> addmm); outermost counts the ops\n"
              "called from outside ATen; kernel ops the ops that compute or copy and call no op that does (views,\n"
              "metadata and bare allocations left out), what the step would launch on a GPU, vs kohya's kernels.\n"
              "ms/step is the median of the timed steps.\n\n");
  const ModeResult& last = results.back();
  std::printf("most frequent outermost ops per step (%s):\n", StepModeName(last.mode));
  for (int i = 0; i < top && i < static_cast<int>(last.counts.by_name.size()); ++i) {
    std::printf("  %7lld  %s\n", static_cast<long long>(last.counts.by_name[i].second),
                last.counts.by_name[i].first.c_str());
  }
  std::printf("most frequent kernel ops per step (%s):\n", StepModeName(last.mode));
  for (int i = 0; i < top && i < static_cast<int>(last.counts.kernels_by_name.size()); ++i) {
    std::printf("  %7lld  %s\n", static_cast<long long>(last.counts.kernels_by_name[i].second),
                last.counts.kernels_by_name[i].first.c_str());
  }

  if (!json_path.empty()) {
    nlohmann::json out;
    out["bench"] = "overhead";
    out["libtorch"] = compat::TorchVersion();
    out["threads"] = torch::get_num_threads();
    out["unet_parameters"] = step.unet_parameters();
    out["lora_parameters"] = step.lora_parameters();
    out["lora_modules"] = step.lora_modules();
    out["rank"] = options.rank;
    out["alpha"] = options.alpha;
    out["weights"] = weights;
    out["batch"] = batch;
    out["latent"] = latent;
    out["kohya_kernels_per_step"] = kKohyaOpsPerStep;
    out["modes"] = nlohmann::json::array();
    for (const ModeResult& r : results) {
      nlohmann::json m;
      m["name"] = StepModeName(r.mode);
      m["aten_ops_per_step"] = r.counts.all;
      m["outermost_ops_per_step"] = r.counts.outermost;
      m["kernel_ops_per_step"] = r.counts.kernels;
      m["kernel_ops_vs_kohya_kernels"] = static_cast<double>(r.counts.kernels) / kKohyaOpsPerStep;
      m["ms_per_step_median"] = r.median_ms;
      m["ms_per_step"] = r.ms;
      if (eager != nullptr) {
        m["speedup_vs_eager"] = eager->median_ms / r.median_ms;
        m["ops_vs_eager"] = static_cast<double>(r.counts.all) / static_cast<double>(eager->counts.all);
      }
      nlohmann::json top_ops = nlohmann::json::object();
      for (int i = 0; i < top && i < static_cast<int>(r.counts.by_name.size()); ++i) {
        top_ops[r.counts.by_name[i].first] = r.counts.by_name[i].second;
      }
      m["top_outermost_ops"] = top_ops;
      nlohmann::json top_kernels = nlohmann::json::object();
      for (int i = 0; i < top && i < static_cast<int>(r.counts.kernels_by_name.size()); ++i) {
        top_kernels[r.counts.kernels_by_name[i].first] = r.counts.kernels_by_name[i].second;
      }
      m["top_kernel_ops"] = top_kernels;
      out["modes"].push_back(m);
    }
    out["note"] =
        "CPU: CUDA graphs are not captured (graphs, if asked for, runs its static-buffer step eagerly); the fused "
        "optimizer kernels exist for CUDA float32 parameters on LibTorch 2.x only, so fused differs from eager in "
        "the host read-backs alone";
    std::ofstream f(json_path);
    f << out.dump(2) << "\n";
    if (!f) {
      std::fprintf(stderr, "overhead bench: cannot write %s\n", json_path.c_str());
      return 1;
    }
  }
  return 0;
}

}  // namespace
}  // namespace lorad::bench

LORAD_BENCH(overhead, "ATen ops and ms per full-size SDXL LoRA step at a tiny latent, eager vs fused (CPU host overhead)",
            lorad::bench::Run);
