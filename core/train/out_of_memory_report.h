// The error a training run ends with when the device runs out of memory: what
// the step was doing (batch size, resolution, gradient checkpointing, latents
// cached or not, precision), how much memory it had reached, and what to try
// next. lorad-train exits kExitOutOfMemory on its RESOURCE_EXHAUSTED status and
// the daemon shows the message as the job's failure reason.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>

#include <torch/torch.h>

#include "absl/status/status.h"

namespace lorad::train {

// What the CUDA caching allocator has seen on one device.
struct DeviceMemory {
  int64_t peak_allocated_bytes = 0;  // high-water mark of tensor memory
  int64_t peak_reserved_bytes = 0;   // high-water mark of memory held from the driver
  int64_t allocated_bytes = 0;       // tensor memory now
};

struct OutOfMemoryFacts {
  std::string device;  // "cuda:0", "cpu"
  int64_t step = 0;    // 1-based step that failed
  int64_t train_batch_size = 1;
  std::pair<int64_t, int64_t> resolution{0, 0};  // width, height
  bool gradient_checkpointing = false;
  bool cache_latents = false;
  std::string mixed_precision = "no";     // no | fp16 | bf16
  std::optional<DeviceMemory> memory;     // CUDA only
  std::string detail;                     // LibTorch's message; only its first line is kept
};

// One line: "out of memory on cuda:0 at step 3 (train_batch_size=4, resolution
// 1024x1024, gradient_checkpointing off, cache_latents off, mixed_precision
// bf16; peak 37.52 GiB allocated, 39.00 GiB reserved): try <what is not already
// done> (LibTorch: <first line>)". Suggestions skip what is already in place: a
// smaller batch only above 1, checkpointing only when off, and so on.
std::string OutOfMemoryMessage(const OutOfMemoryFacts& facts);

// RESOURCE_EXHAUSTED with OutOfMemoryMessage.
absl::Status OutOfMemoryError(const OutOfMemoryFacts& facts);

// The CUDA caching allocator's statistics for a CUDA device; nullopt for any
// other device or a LibTorch built without CUDA.
std::optional<DeviceMemory> DeviceMemoryStats(const torch::Device& device);

}  // namespace lorad::train
