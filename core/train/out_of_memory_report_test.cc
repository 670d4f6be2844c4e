#include "core/train/out_of_memory_report.h"

#include <gtest/gtest.h>

namespace lorad::train {
namespace {

OutOfMemoryFacts Facts() {
  OutOfMemoryFacts f;
  f.device = "cuda:0";
  f.step = 3;
  f.train_batch_size = 4;
  f.resolution = {1024, 768};
  f.mixed_precision = "bf16";
  f.memory = DeviceMemory{int64_t{37} << 30, int64_t{39} << 30};
  f.detail = "CUDA out of memory. Tried to allocate 2.00 GiB.\nGPU 0 has a total capacity of 39.5 GiB";
  return f;
}

TEST(OutOfMemoryReportTest, NamesTheSettingsThePeakAndWhatToTry) {
  absl::Status status = OutOfMemoryError(Facts());
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(status.message(),
            "out of memory on cuda:0 at step 3 (train_batch_size=4, resolution 1024x768, gradient_checkpointing off, "
            "cache_latents off, mixed_precision bf16; peak 37.00 GiB allocated, 39.00 GiB reserved): try a smaller "
            "train_batch_size (2), or gradient_checkpointing = true, or cache_latents = true, or a lower resolution "
            "than 1024x768 (LibTorch: CUDA out of memory. Tried to allocate 2.00 GiB.)");
}

TEST(OutOfMemoryReportTest, SuggestsOnlyWhatIsNotAlreadyDone) {
  OutOfMemoryFacts f = Facts();
  f.train_batch_size = 1;
  f.gradient_checkpointing = true;
  f.cache_latents = true;
  f.mixed_precision = "no";
  f.memory.reset();
  f.detail.clear();
  f.device = "cpu";
  EXPECT_EQ(OutOfMemoryMessage(f),
            "out of memory on cpu at step 3 (train_batch_size=1, resolution 1024x768, gradient_checkpointing on, "
            "cache_latents on, mixed_precision no): try mixed_precision = \"bf16\", or a lower resolution than "
            "1024x768");
}

TEST(OutOfMemoryReportTest, NoAllocatorStatisticsOffCuda) {
  EXPECT_FALSE(DeviceMemoryStats(torch::Device(torch::kCPU)).has_value());
}

}  // namespace
}  // namespace lorad::train
