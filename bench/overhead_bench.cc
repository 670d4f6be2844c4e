// lorad-bench overhead: host overhead of one SDXL LoRA training step on the CPU.
// The full-size SDXL U-Net at a tiny latent (8x8 = 64 px) makes the compute
// small, so the ATen ops dispatched per step (forward + backward + optimizer)
// and the milliseconds per step measure dispatch, not arithmetic. kohya's
// sd-scripts launches about 20,000 CUDA kernels per SDXL step (issue 11): the
// op count is compared to that.
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
#include "core/common/torch_compat.h"

namespace lorad::bench {
namespace {

constexpr double kKohyaOpsPerStep = 20000;

void Usage() {
  std::fprintf(stderr,
               "usage: lorad-bench overhead [--latent N (8)] [--batch N (1)] [--steps N (5)] [--warmup N (2)]\n"
               "                            [--weights bf16|f32 (bf16)] [--top N (12)] [--json FILE]\n");
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : (v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2);
}

int Run(int argc, char** argv) {
  int64_t latent = 8, batch = 1;
  int steps = 5, warmup = 2, top = 12;
  std::string json_path, weights = "bf16";
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
    } else if (!std::strcmp(argv[i], "--json") && has_value) {
      json_path = argv[++i];
    } else {
      Usage();
      return 2;
    }
  }
  if (latent < 8 || latent % 8 != 0 || batch < 1 || steps < 1 || warmup < 0 || (weights != "bf16" && weights != "f32")) {
    std::fprintf(stderr, "--latent must be a multiple of 8 (the U-Net downsamples 3 times), --batch and --steps >= 1, "
                         "--weights bf16 or f32\n");
    return 2;
  }

  // Frozen weights in bf16 by default: the U-Net is 2.6e9 parameters, 10.4 GB
  // in f32, which leaves too little of a 24 GiB build machine for the compilers
  // running beside it; bf16 (5.2 GB) is also what a CUDA run stores.
  SdxlLoraOptions options;
  options.device = torch::kCPU;
  options.weight_dtype = weights == "bf16" ? torch::kBFloat16 : torch::kFloat32;
  options.autocast_dtype = torch::kBFloat16;
  const auto build_start = std::chrono::steady_clock::now();
  auto created = SdxlLoraStep::Create(options);
  if (!created.ok()) {
    std::fprintf(stderr, "overhead bench: %s\n", std::string(created.status().message()).c_str());
    return 1;
  }
  SdxlLoraStep& step = **created;
  step.SetBatch(batch, latent);
  const double build_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - build_start).count();
  std::printf("full-size SDXL U-Net (%.3g parameters, %s frozen, built in %.0f s) + LoRA rank %lld / alpha %g on %lld "
              "kohya targets (%.3g parameters), AdamW, CPU autocast bf16\n",
              static_cast<double>(step.unet_parameters()), weights.c_str(), build_s,
              static_cast<long long>(options.rank), options.alpha, static_cast<long long>(step.lora_modules()),
              static_cast<double>(step.lora_parameters()));
  std::printf("batch %lld, latent %lldx%lld (%lld px), LibTorch %s, %d threads, %d warm-up + %d timed steps\n\n",
              static_cast<long long>(batch), static_cast<long long>(latent), static_cast<long long>(latent),
              static_cast<long long>(latent * 8), compat::TorchVersion().c_str(), torch::get_num_threads(), warmup,
              steps);

  for (int i = 0; i < warmup; ++i) {
    auto loss = step.Step();
    if (!loss.ok()) {
      std::fprintf(stderr, "overhead bench: %s\n", std::string(loss.status().message()).c_str());
      return 1;
    }
  }
  std::vector<double> ms;
  for (int i = 0; i < steps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    auto loss = step.Step();
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    if (!loss.ok()) {
      std::fprintf(stderr, "overhead bench: %s\n", std::string(loss.status().message()).c_str());
      return 1;
    }
  }
  // Counted on a step of its own: the callback costs time.
  OpCounts counts;
  {
    OpCounter counter;
    auto loss = step.Step();
    counts = counter.Take();
    if (!loss.ok()) {
      std::fprintf(stderr, "overhead bench: %s\n", std::string(loss.status().message()).c_str());
      return 1;
    }
  }
  const double median_ms = Median(ms);
  std::printf("%-7s %12s %16s %12s %10s %16s\n", "path", "ATen ops", "outermost ops", "us/op", "ms/step",
              "ops vs kohya");
  std::printf("%-7s %12lld %16lld %12.1f %10.1f %15.2fx\n", "eager", static_cast<long long>(counts.all),
              static_cast<long long>(counts.outermost), 1000.0 * median_ms / static_cast<double>(counts.all),
              median_ms, static_cast<double>(counts.all) / kKohyaOpsPerStep);
  std::printf("\nlorad has one training-step path today (eager, as lorad-train runs it); there is no graph-captured or\n"
              "fused path to compare against yet. kohya: ~%.0f CUDA kernels per SDXL step (issue 11).\n",
              kKohyaOpsPerStep);
  std::printf("ATen ops counts every dispatched op, nested ones too (linear -> addmm); outermost counts the ops\n"
              "called from outside ATen. ms/step is the median of the timed steps.\n\n");
  std::printf("most frequent outermost ops per step:\n");
  for (int i = 0; i < top && i < static_cast<int>(counts.by_name.size()); ++i) {
    std::printf("  %7lld  %s\n", static_cast<long long>(counts.by_name[i].second), counts.by_name[i].first.c_str());
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
    nlohmann::json path;
    path["name"] = "eager";
    path["aten_ops_per_step"] = counts.all;
    path["outermost_ops_per_step"] = counts.outermost;
    path["ms_per_step_median"] = median_ms;
    path["ms_per_step"] = ms;
    nlohmann::json top_ops = nlohmann::json::object();
    for (int i = 0; i < top && i < static_cast<int>(counts.by_name.size()); ++i) {
      top_ops[counts.by_name[i].first] = counts.by_name[i].second;
    }
    path["top_outermost_ops"] = top_ops;
    out["paths"] = nlohmann::json::array({path});
    out["note"] = "one training-step path (eager); no graph-captured or fused path yet";
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

LORAD_BENCH(overhead, "ATen ops and ms per full-size SDXL LoRA step at a tiny latent (CPU host overhead)",
            lorad::bench::Run);
