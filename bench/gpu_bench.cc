// lorad-bench gpu: the SDXL LoRA training step of issue 11 on a CUDA GPU.
// Full-size SDXL U-Net (random bf16 weights, built in memory), 1024 px (latent
// 128x128), batch 1 / 4 / 8, gradient checkpointing off and on, LoRA rank 32 /
// alpha 16, AdamW, autocast bf16. Every case is measured in each step mode
// (bench/sdxl_lora_step.h), eager first, in the same run: eager (no graphs or
// fusions: lorad's baseline), fused (fused optimizer kernels, no host
// read-back in the step) and graphs (fused + the step captured as a CUDA graph
// and replayed), so every optimisation shows as its ratio to eager.
//
// Per case and mode: ms/step (the timed steps after warm-up between two device
// synchronisations, divided by their number: the host is never made to wait
// inside the region, so queued work overlaps as in training), images/s, peak
// GiB (CUDA caching allocator, reset per case and mode), useful TFLOP/s (15.2
// TFLOP per image-step; recomputation not counted), the kernel ops the host
// dispatches per step (bench/op_counter.h; one step counted on its own; a
// replayed graph launches its kernels without dispatching ops, so graphs shows
// only the host's work around the replay) and the ratio to eager. JSON (--json FILE) is rewritten
// after every case and mode, so a run cut short keeps what it measured; a case
// or mode not started within --budget-s is recorded as skipped. Without CUDA:
// a message and exit code 2.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <optional>
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
#include "core/base/status_macros.h"
#include "core/common/torch_compat.h"

#ifdef LORAD_TORCH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif

namespace lorad::bench {
namespace {

struct Args {
  std::vector<int64_t> batches = {4, 1, 8};
  std::vector<bool> checkpointing = {false, true};
  std::vector<StepMode> modes = {StepMode::kEager, StepMode::kFused, StepMode::kGraphs};
  int steps = 20;
  int warmup = 3;
  int64_t latent = 128;
  double budget_s = 360;
  std::string json_path;
};

void Usage() {
  std::fprintf(stderr,
               "usage: lorad-bench gpu [--batches 4,1,8] [--checkpointing off,on] [--modes eager,fused,graphs]\n"
               "                       [--steps N (20)] [--warmup N (3)] [--latent N (128 = 1024 px)]\n"
               "                       [--budget-s S (360)] [--json FILE]\n"
               "modes run in the order eager, fused, graphs whatever the order given; ratios need eager.\n");
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
    } else if (!std::strcmp(argv[i], "--modes") && has_value) {
      absl::StatusOr<std::vector<StepMode>> parsed = ParseStepModes(argv[++i]);
      if (!parsed.ok()) {
        std::fprintf(stderr, "%s\n", std::string(parsed.status().message()).c_str());
        return Usage(), false;
      }
      a->modes = *std::move(parsed);
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
      a->checkpointing.empty() || a->modes.empty()) {
    return Usage(), false;
  }
  return true;
}

#ifdef LORAD_TORCH_CUDA
constexpr double kTflopPerImageStep = 15.2;
// Warm-up steps a graphs run may add to --warmup until its graph is captured
// (train::StepGraphs runs a shape eagerly twice, then captures it).
constexpr int kMaxExtraGraphWarmup = 4;

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

double PeakGib(c10::DeviceIndex device) {
  // Index 0 is StatType::AGGREGATE (both pools); the enum's namespace moved between releases.
  const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device);
  return static_cast<double>(stats.allocated_bytes[0].peak) / (1024.0 * 1024.0 * 1024.0);
}
void ResetPeak(c10::DeviceIndex device) { c10::cuda::CUDACachingAllocator::resetPeakStats(device); }
void EmptyCache() { c10::cuda::CUDACachingAllocator::emptyCache(); }

// One case in one mode, measured.
struct Measured {
  double ms_per_step = 0;
  double last_loss = 0;
  OpCounts host_ops;
  int replayed_steps = 0;  // timed steps that were graph replays
};

// Warm-up, the timed steps and one counted step of `step` in its current
// mode, batch and checkpointing. Only the timed region's ends synchronise.
absl::StatusOr<Measured> Measure(SdxlLoraStep& step, int warmup, int steps, c10::DeviceIndex device_index) {
  using Ran = train::StepGraphs::Ran;
  Measured m;
  absl::StatusOr<torch::Tensor> loss;
  for (int i = 0; i < warmup || (step.captures_graphs() && step.last_run() == Ran::kEager &&
                                 i < warmup + kMaxExtraGraphWarmup);
       ++i) {
    loss = step.Step();
    if (!loss.ok()) return loss.status();
  }
  torch::cuda::synchronize(device_index);
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < steps; ++i) {
    loss = step.Step();
    if (!loss.ok()) return loss.status();
    if (step.last_run() == Ran::kReplayed) ++m.replayed_steps;
  }
  torch::cuda::synchronize(device_index);
  m.ms_per_step = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / steps;
  m.last_loss = loss->item<double>();
  // Counted on a step of its own: the callback costs host time.
  OpCounter counter;
  loss = step.Step();
  torch::cuda::synchronize(device_index);
  m.host_ops = counter.Take();
  if (!loss.ok()) return loss.status();
  return m;
}

int RunCases(const Args& args) {
  const int steps = args.steps, warmup = args.warmup;
  const int64_t latent = args.latent;
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
  options.mode = args.modes.front();
  auto created = SdxlLoraStep::Create(options);
  if (!created.ok()) {
    std::fprintf(stderr, "gpu bench: %s\n", std::string(created.status().message()).c_str());
    return 1;
  }
  SdxlLoraStep& step = **created;
  const bool graphs_capture = train::StepGraphs::CaptureSupported(options.device);
  std::printf("full-size SDXL U-Net (%.3g parameters, bf16) + LoRA rank %lld / alpha %g (%lld modules, %.3g "
              "parameters), AdamW, autocast bf16, %lldx%lld px, LibTorch %s, built in %.0f s\n",
              static_cast<double>(step.unet_parameters()), static_cast<long long>(options.rank), options.alpha,
              static_cast<long long>(step.lora_modules()), static_cast<double>(step.lora_parameters()),
              static_cast<long long>(latent * 8), static_cast<long long>(latent * 8), compat::TorchVersion().c_str(),
              elapsed_s());
  std::printf("modes: eager = no graphs or fusions (per-parameter AdamW, loss and grad norm read back every step);\n"
              "       fused = fused AdamW kernel, nothing read back inside the step;\n"
              "       graphs = fused + the step captured as a CUDA graph per batch shape and replayed%s\n",
              graphs_capture ? "" : " (NOT captured here: this LibTorch cannot capture, the step runs eagerly)");
  std::printf("%d warm-up + %d timed steps per case and mode (graphs: warm-up until captured); ms/step = the timed\n"
              "steps between two device synchronisations / %d; launches = the kernel ops the host dispatches per step\n"
              "(ops that compute or copy and call none that does; a graph replay dispatches none); TFLOP/s counts %.1f TFLOP per image-step (no recomputation)\n\n",
              warmup, steps, steps, kTflopPerImageStep);
  std::printf("%-6s %5s %-7s %9s %8s %8s %8s %9s %9s %9s %9s\n", "mode", "batch", "checkpt", "ms/step", "img/s",
              "peak GiB", "TFLOP/s", "launches", "vs eager", "kohya ms", "vs kohya");

  std::vector<Case> cases;
  for (int64_t b : args.batches) {
    for (bool c : args.checkpointing) cases.push_back({b, c});
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
  out["modes"] = nlohmann::json::array();
  for (StepMode m : args.modes) out["modes"].push_back(StepModeName(m));
  out["graphs_captured_by_this_libtorch"] = graphs_capture;
  out["note"] =
      "eager: no graphs or fusions (per-parameter AdamW, loss and grad norm read back every step); fused: fused "
      "AdamW kernel, no read-back in the step; graphs: fused + CUDA graph capture and replay of the whole step. "
      "ms_per_step: timed steps between two device synchronisations / steps. host_aten_ops_per_step: ATen ops the "
      "host dispatches per step; host_kernel_ops_per_step: those that compute or copy and call none that does (the "
      "kernels the host launches); a replayed graph launches its kernels without dispatching ops";
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
  for (const Case& c : cases) {
    std::optional<double> eager_ms;
    for (StepMode mode : args.modes) {
      const char* name = StepModeName(mode);
      const char* checkpt = c.checkpointing ? "on" : "off";
      nlohmann::json row;
      row["mode"] = name;
      row["batch"] = c.batch;
      row["gradient_checkpointing"] = c.checkpointing;
      if (elapsed_s() > args.budget_s) {
        row["skipped"] = "time budget (--budget-s) spent";
        out["cases"].push_back(row);
        std::printf("%-6s %5lld %-7s skipped: time budget spent\n", name, static_cast<long long>(c.batch), checkpt);
        write_json();
        continue;
      }
      absl::StatusOr<Measured> measured = [&]() -> absl::StatusOr<Measured> {
        RETURN_IF_ERROR(step.SetMode(mode));
        step.SetGradientCheckpointing(c.checkpointing);
        step.SetBatch(c.batch, latent);
        EmptyCache();  // the previous mode's optimizer state and graphs
        ResetPeak(device_index);
        return Measure(step, warmup, steps, device_index);
      }();
      if (!measured.ok()) {
        ++failures;
        row["error"] = std::string(measured.status().message());
        out["cases"].push_back(row);
        std::printf("%-6s %5lld %-7s failed: %s\n", name, static_cast<long long>(c.batch), checkpt,
                    std::string(measured.status().message()).c_str());
        write_json();
        continue;
      }
      const Measured& m = *measured;
      const double peak = PeakGib(device_index);
      const double images_per_s = 1000.0 * static_cast<double>(c.batch) / m.ms_per_step;
      const double tflops = kTflopPerImageStep * images_per_s;
      if (mode == StepMode::kEager) eager_ms = m.ms_per_step;
      row["ms_per_step"] = m.ms_per_step;
      row["images_per_s"] = images_per_s;
      row["peak_gib"] = peak;
      row["tflops"] = tflops;
      row["host_aten_ops_per_step"] = m.host_ops.all;
      row["host_outermost_ops_per_step"] = m.host_ops.outermost;
      row["host_kernel_ops_per_step"] = m.host_ops.kernels;
      row["graph_replayed_steps"] = m.replayed_steps;
      row["last_loss"] = m.last_loss;
      char vs_eager[16] = "-";
      if (eager_ms) {
        row["speedup_vs_eager"] = *eager_ms / m.ms_per_step;
        std::snprintf(vs_eager, sizeof(vs_eager), "%.2fx", *eager_ms / m.ms_per_step);
      }
      auto kohya = KohyaReference().find({c.batch, c.checkpointing});
      char kohya_ms[16] = "-", vs_kohya[16] = "-";
      if (kohya != KohyaReference().end()) {
        row["kohya_ms_per_step"] = kohya->second.ms;
        row["kohya_peak_gib"] = kohya->second.peak_gib;
        row["speedup_vs_kohya"] = kohya->second.ms / m.ms_per_step;
        std::snprintf(kohya_ms, sizeof(kohya_ms), "%.0f", kohya->second.ms);
        std::snprintf(vs_kohya, sizeof(vs_kohya), "%.2fx", kohya->second.ms / m.ms_per_step);
      }
      out["cases"].push_back(row);
      std::printf("%-6s %5lld %-7s %9.1f %8.2f %8.1f %8.1f %9lld %9s %9s %9s\n", name, static_cast<long long>(c.batch),
                  checkpt, m.ms_per_step, images_per_s, peak, tflops, static_cast<long long>(m.host_ops.kernels),
                  vs_eager, kohya_ms, vs_kohya);
      if (!std::isfinite(m.last_loss)) {
        std::printf("       warning: the last timed step's loss is %g\n", m.last_loss);
      }
      if (mode == StepMode::kGraphs && graphs_capture && m.replayed_steps != steps) {
        std::printf("       warning: %d of %d timed steps were graph replays\n", m.replayed_steps, steps);
      }
      std::fflush(stdout);
      write_json();
    }
  }
  std::printf("\ntargets (issue 11, H200): batch 4 <= 320 ms (milestone), <= 150 ms (goal); batch 1 <= 45 ms (goal);\n"
              "peak memory no higher than kohya's at the same settings.\n");
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

LORAD_BENCH(gpu,
            "full-size SDXL LoRA steps on a CUDA GPU, 1024 px, batch 1/4/8, checkpointing off/on, eager / fused / "
            "graphs (JSON)",
            lorad::bench::Run);
