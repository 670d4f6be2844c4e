// lorad-bench train: steps/s and peak memory of tiny-SDXL LoRA training on the
// CPU at batch 1 and 4, with and without gradient checkpointing. Ratios are
// against batch 1 without checkpointing, measured in the same run.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>

#include "absl/strings/numbers.h"
#include "bench/bench_registry.h"
#include "core/train/test_support.h"
#include "core/train/trainer.h"

namespace {

// Peak resident memory (VmHWM, KiB); ResetPeak() restarts it (Linux clear_refs 5).
int64_t PeakRssKib() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmHWM:", 0) == 0) {
      int64_t kib = 0;
      absl::SimpleAtoi(line.substr(6, line.size() - 6 - 3), &kib);
      return kib;
    }
  }
  return 0;
}
void ResetPeak() { std::ofstream("/proc/self/clear_refs") << "5"; }

struct Measure {
  double steps_per_s = 0;
  double peak_mib = 0;
};

int TrainBench(int argc, char** argv) {
  int64_t steps = 12;
  if (argc > 1) absl::SimpleAtoi(argv[1], &steps);
  namespace t = lorad::train;
  const auto dir = std::filesystem::temp_directory_path() / "lorad_bench_train";
  std::printf("tiny SDXL LoRA (dim 8) training on CPU, 64x64 images, %lld timed steps per case\n",
              static_cast<long long>(steps));
  std::printf("%-6s %-10s %10s %12s %10s %10s\n", "batch", "checkpt", "steps/s", "peak MiB", "speed", "memory");
  Measure reference;
  for (int64_t batch : {1, 4}) {
    for (bool checkpointing : {false, true}) {
      std::filesystem::remove_all(dir);
      t::TrainConfig config = t::testing::TinySdxlConfig(dir);
      config.train_batch_size = batch;
      config.gradient_checkpointing = checkpointing;
      config.max_train_steps = steps + 2;
      t::testing::MemoryBatchSource source(t::testing::MakeShapesDataset(8, 64), batch, 1);
      std::chrono::steady_clock::time_point first;
      t::TrainOptions options;
      // Time from the end of step 2 (warm caches) to the last step.
      options.on_step = [&](int64_t step) {
        if (step == 2) {
          first = std::chrono::steady_clock::now();
          ResetPeak();
        }
      };
      auto result = t::Train(config, {&source, {}, {}}, nullptr, nullptr, options);
      if (!result.ok()) {
        std::fprintf(stderr, "train bench failed: %s\n", std::string(result.status().message()).c_str());
        return 1;
      }
      const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - first).count();
      Measure m{static_cast<double>(steps) / seconds, PeakRssKib() / 1024.0};
      if (batch == 1 && !checkpointing) reference = m;
      std::printf("%-6lld %-10s %10.2f %12.1f %9.2fx %9.2fx\n", static_cast<long long>(batch),
                  checkpointing ? "on" : "off", m.steps_per_s, m.peak_mib, m.steps_per_s / reference.steps_per_s,
                  m.peak_mib / reference.peak_mib);
    }
  }
  std::filesystem::remove_all(dir);
  return 0;
}

}  // namespace

LORAD_BENCH(train, "steps/s and peak memory of tiny-SDXL LoRA training (CPU; batch 1/4, checkpointing off/on)",
            TrainBench);
