// lorad-bench gpu: the SDXL LoRA training step of issue 11 on a CUDA GPU.
// Full-size SDXL U-Net (random bf16 weights, built in memory), 1024 px (latent
// 128x128), batch 1 / 4 / 8, gradient checkpointing off and on, LoRA rank 32 /
// alpha 16, AdamW, autocast bf16. Per case: ms/step (median of the timed steps
// after warm-up), images/s, peak GiB (CUDA caching allocator, reset per case),
// useful TFLOP/s (15.2 TFLOP per image-step; recomputation not counted) and the
// ATen ops per step (a proxy for the kernels launched). Every path the engine
// offers is measured in the same run; today that is lorad's eager path only.
// JSON (--json FILE) is rewritten after every case, so a run cut short keeps
// what it measured. Without CUDA: a message and exit code 2.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/cuda.h>
#include <torch/torch.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "bench/bench_registry.h"
#include "bench/op_counter.h"
#include "bench/sdxl_lora_step.h"
#include "core/common/torch_compat.h"

#ifdef LORAD_TORCH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif

namespace lorad::bench {
namespace {

struct Args {
  std::vector<int64_t> batches = {4, 1, 8};
  std::vector<bool> checkpointing = {false, true};
  int steps = 20;
  int warmup = 3;
  int64_t latent = 128;
  double budget_s = 360;
  std::string json_path;
};

void Usage() {
  std::fprintf(stderr,
               "usage: lorad-bench gpu [--batches 4,1,8] [--checkpointing off,on] [--steps N (20)] [--warmup N (3)]\n"
               "                       [--latent N (128 = 1024 px)] [--budget-s S (360)] [--json FILE]\n");
}

// False (after printing the usage) for unknown flags or bad values.
bool ParseArgs(int argc, char** argv, Args* a) {
  for (int i = 1; i < argc; ++i) {
    const bool has_value = i + 1 < argc;
    if (!std::strcmp(argv[i], "--batches") && has_value) {
      a->batches.clear();
      for (absl::string_view b : absl::StrSplit(argv[++i], ',')) {
        int64_t v = 0;
        if (!absl::SimpleAtoi(b, &v) || v < 1) return Usage(), false;
        a->batches.push_back(v);
      }
    } else if (!std::strcmp(argv[i], "--checkpointing") && has_value) {
      a->checkpointing.clear();
      for (absl::string_view c : absl::StrSplit(argv[++i], ',')) {
        if (c != "on" && c != "off") return Usage(), false;
        a->checkpointing.push_back(c == "on");
      }
    } else if (!std::strcmp(argv[i], "--steps") && has_value) {
      a->steps = std::atoi(argv[++i]);
    } else if (!std::strcmp(argv[i], "--warmup") && has_value) {
      a->warmup = std::atoi(argv[++i]);
    } else if (!std::strcmp(argv[i], "--latent") && has_value) {
      a->latent = std::atoll(argv[++i]);
    } else if (!std::strcmp(argv[i], "--budget-s") && has_value) {
      a->budget_s = std::atof(argv[++i]);
    } else if (!std::strcmp(argv[i], "--json") && has_value) {
      a->json_path = argv[++i];
    } else {
      return Usage(), false;
    }
  }
  if (a->steps < 1 || a->warmup < 0 || a->latent < 8 || a->latent % 8 != 0 || a->batches.empty() ||
      a->checkpointing.empty()) {
    return Usage(), false;
  }
  return true;
}

#ifdef LORAD_TORCH_CUDA
constexpr double kTflopPerImageStep = 15.2;

// kohya sd-scripts on an H200, same workload (issue 11): (batch, checkpointing) -> ms/step, peak GiB.
struct KohyaRow {
  double ms;
  double peak_gib;
};
const std::map<std::pair<int64_t, bool>, KohyaRow>& KohyaReference() {
  static const std::map<std::pair<int64_t, bool>, KohyaRow> rows = {
      {{1, false}, {618, 14.3}}, {{4, false}, {573, 38.8}}, {{4, true}, {1023, 9.1}}};
  return rows;
}

struct Case {
  int64_t batch;
  bool checkpointing;
};

// A training-step path of the engine. lorad has one today: eager (no CUDA
// graphs, no fusions), exactly as lorad-train runs a step. A faster path the
// engine gains is measured by adding it here, beside eager.
struct StepPath {
  std::string name;
  std::function<void(SdxlLoraStep&)> select;
};
std::vector<StepPath> EnginePaths() { return {{"eager", [](SdxlLoraStep&) {}}}; }

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : (v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2);
}

double PeakGib(c10::DeviceIndex device) {
  // Index 0 is StatType::AGGREGATE (both pools); the enum's namespace moved between releases.
  const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device);
  return static_cast<double>(stats.allocated_bytes[0].peak) / (1024.0 * 1024.0 * 1024.0);
}
void ResetPeak(c10::DeviceIndex device) { c10::cuda::CUDACachingAllocator::resetPeakStats(device); }
void EmptyCache() { c10::cuda::CUDACachingAllocator::emptyCache(); }

int RunCases(const Args& args) {
  const std::vector<int64_t>& batches = args.batches;
  const std::vector<bool>& checkpointing = args.checkpointing;
  const int steps = args.steps, warmup = args.warmup;
  const int64_t latent = args.latent;
  const double budget_s = args.budget_s;
  const std::string& json_path = args.json_path;
  if (!torch::cuda::is_available()) {
    std::fprintf(stderr, "lorad-bench gpu needs a CUDA GPU: LibTorch %s has CUDA but sees no device.\n",
                 compat::TorchVersion().c_str());
    return 2;
  }
  const auto run_start = std::chrono::steady_clock::now();
  const auto elapsed_s = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - run_start).count();
  };
  const c10::DeviceIndex device_index = 0;
  SdxlLoraOptions options;
  options.device = torch::Device(torch::kCUDA, device_index);
  options.weight_dtype = torch::kBFloat16;
  options.autocast_dtype = torch::kBFloat16;
  auto created = SdxlLoraStep::Create(options);
  if (!created.ok()) {
    std::fprintf(stderr, "gpu bench: %s\n", std::string(created.status().message()).c_str());
    return 1;
  }
  SdxlLoraStep& step = **created;
  std::printf("full-size SDXL U-Net (%.3g parameters, bf16) + LoRA rank %lld / alpha %g (%lld modules, %.3g "
              "parameters), AdamW, autocast bf16, %lldx%lld px, LibTorch %s, built in %.0f s\n",
              static_cast<double>(step.unet_parameters()), static_cast<long long>(options.rank), options.alpha,
              static_cast<long long>(step.lora_modules()), static_cast<double>(step.lora_parameters()),
              static_cast<long long>(latent * 8), static_cast<long long>(latent * 8), compat::TorchVersion().c_str(),
              elapsed_s());
  std::printf("%d warm-up + %d timed steps per case; TFLOP/s counts %.1f TFLOP per image-step (no recomputation)\n\n",
              warmup, steps, kTflopPerImageStep);
  std::printf("%-6s %5s %-7s %9s %8s %8s %8s %9s %10s %9s %9s\n", "path", "batch", "checkpt", "ms/step", "img/s",
              "peak GiB", "TFLOP/s", "ATen ops", "vs eager", "kohya ms", "vs kohya");

  std::vector<Case> cases;
  for (int64_t b : batches) {
    for (bool c : checkpointing) cases.push_back({b, c});
  }
  nlohmann::json out;
  out["bench"] = "gpu";
  out["libtorch"] = compat::TorchVersion();
  out["device_name"] = "cuda:0";
  out["unet_parameters"] = step.unet_parameters();
  out["lora_parameters"] = step.lora_parameters();
  out["rank"] = options.rank;
  out["alpha"] = options.alpha;
  out["resolution"] = latent * 8;
  out["steps"] = steps;
  out["warmup"] = warmup;
  out["tflop_per_image_step"] = kTflopPerImageStep;
  out["paths"] = nlohmann::json::array();
  for (const auto& p : EnginePaths()) out["paths"].push_back(p.name);
  out["note"] = "lorad has one training-step path (eager: no CUDA graphs, no fusions)";
  out["cases"] = nlohmann::json::array();
  const auto write_json = [&]() -> bool {
    if (json_path.empty()) return true;
    std::ofstream f(json_path);
    f << out.dump(2) << "\n";
    return static_cast<bool>(f);
  };
  if (!write_json()) {
    std::fprintf(stderr, "gpu bench: cannot write %s\n", json_path.c_str());
    return 1;
  }

  int failures = 0;
  std::map<std::pair<int64_t, bool>, double> eager_ms;
  for (const Case& c : cases) {
    for (const StepPath& path : EnginePaths()) {
      nlohmann::json row;
      row["path"] = path.name;
      row["batch"] = c.batch;
      row["gradient_checkpointing"] = c.checkpointing;
      if (elapsed_s() > budget_s) {
        row["skipped"] = "time budget (--budget-s) spent";
        out["cases"].push_back(row);
        std::printf("%-6s %5lld %-7s skipped: time budget spent\n", path.name.c_str(),
                    static_cast<long long>(c.batch), c.checkpointing ? "on" : "off");
        continue;
      }
      path.select(step);
      step.SetGradientCheckpointing(c.checkpointing);
      step.SetBatch(c.batch, latent);
      EmptyCache();
      ResetPeak(device_index);
      std::vector<double> ms;
      absl::Status status;
      for (int i = 0; i < warmup + steps && status.ok(); ++i) {
        torch::cuda::synchronize(device_index);
        const auto t0 = std::chrono::steady_clock::now();
        auto loss = step.Step();
        torch::cuda::synchronize(device_index);
        if (!loss.ok()) status = loss.status();
        if (i >= warmup) ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
      }
      OpCounts counts;
      if (status.ok()) {
        OpCounter counter;
        auto loss = step.Step();
        torch::cuda::synchronize(device_index);
        counts = counter.Take();
        if (!loss.ok()) status = loss.status();
      }
      if (!status.ok()) {
        ++failures;
        row["error"] = std::string(status.message());
        out["cases"].push_back(row);
        std::printf("%-6s %5lld %-7s failed: %s\n", path.name.c_str(), static_cast<long long>(c.batch),
                    c.checkpointing ? "on" : "off", std::string(status.message()).c_str());
        write_json();
        continue;
      }
      const double median = Median(ms);
      const double peak = PeakGib(device_index);
      const double images_per_s = 1000.0 * static_cast<double>(c.batch) / median;
      const double tflops = kTflopPerImageStep * images_per_s;
      if (path.name == "eager") eager_ms[{c.batch, c.checkpointing}] = median;
      const double vs_eager = eager_ms.count({c.batch, c.checkpointing}) ? eager_ms[{c.batch, c.checkpointing}] / median : 0;
      row["ms_per_step_median"] = median;
      row["ms_per_step"] = ms;
      row["images_per_s"] = images_per_s;
      row["peak_gib"] = peak;
      row["tflops"] = tflops;
      row["aten_ops_per_step"] = counts.all;
      row["outermost_ops_per_step"] = counts.outermost;
      row["speedup_vs_eager"] = vs_eager;
      auto kohya = KohyaReference().find({c.batch, c.checkpointing});
      char kohya_ms[16] = "-", vs_kohya[16] = "-";
      if (kohya != KohyaReference().end()) {
        row["kohya_ms_per_step"] = kohya->second.ms;
        row["kohya_peak_gib"] = kohya->second.peak_gib;
        row["speedup_vs_kohya"] = kohya->second.ms / median;
        std::snprintf(kohya_ms, sizeof(kohya_ms), "%.0f", kohya->second.ms);
        std::snprintf(vs_kohya, sizeof(vs_kohya), "%.2fx", kohya->second.ms / median);
      }
      out["cases"].push_back(row);
      std::printf("%-6s %5lld %-7s %9.1f %8.2f %8.1f %8.1f %9lld %9.2fx %9s %9s\n", path.name.c_str(),
                  static_cast<long long>(c.batch), c.checkpointing ? "on" : "off", median, images_per_s, peak, tflops,
                  static_cast<long long>(counts.all), vs_eager, kohya_ms, vs_kohya);
      std::fflush(stdout);
      write_json();
    }
  }
  std::printf("\ntargets (issue 11, H200): batch 4 <= 320 ms (milestone), <= 150 ms (goal); batch 1 <= 45 ms (goal);\n"
              "peak memory no higher than kohya's at the same settings. lorad has one step path today (eager).\n");
  out["elapsed_s"] = elapsed_s();
  if (!write_json()) {
    std::fprintf(stderr, "gpu bench: cannot write %s\n", json_path.c_str());
    return 1;
  }
  return failures == 0 ? 0 : 1;
}
#endif  // LORAD_TORCH_CUDA

int Run(int argc, char** argv) {
  Args args;
  if (!ParseArgs(argc, argv, &args)) return 2;
#ifdef LORAD_TORCH_CUDA
  return RunCases(args);
#else
  std::fprintf(stderr,
               "lorad-bench gpu needs a CUDA GPU: this lorad-bench is built against LibTorch %s without CUDA. Build "
               "against a CUDA LibTorch (bench/gpu/run.sh does) and run it on a GPU machine.\n",
               compat::TorchVersion().c_str());
  return 2;
#endif
}

}  // namespace
}  // namespace lorad::bench

LORAD_BENCH(gpu, "full-size SDXL LoRA steps on a CUDA GPU, 1024 px, batch 1/4/8, checkpointing off/on (JSON)",
            lorad::bench::Run);
