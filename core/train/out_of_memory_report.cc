#include "core/train/out_of_memory_report.h"

#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

#ifdef LORAD_TORCH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif

namespace lorad::train {
namespace {

std::string Gib(int64_t bytes) {
  return absl::StrFormat("%.2f GiB", static_cast<double>(bytes) / (1024.0 * 1024.0 * 1024.0));
}

}  // namespace

std::string OutOfMemoryMessage(const OutOfMemoryFacts& f) {
  std::string settings = absl::StrFormat(
      "train_batch_size=%d, resolution %dx%d, gradient_checkpointing %s, cache_latents %s, mixed_precision %s",
      f.train_batch_size, f.resolution.first, f.resolution.second, f.gradient_checkpointing ? "on" : "off",
      f.cache_latents ? "on" : "off", f.mixed_precision);
  if (f.memory) {
    absl::StrAppend(&settings, "; peak ", Gib(f.memory->peak_allocated_bytes), " allocated, ",
                    Gib(f.memory->peak_reserved_bytes), " reserved");
  }
  std::vector<std::string> tries;
  if (f.train_batch_size > 1) tries.push_back(absl::StrCat("a smaller train_batch_size (", f.train_batch_size / 2, ")"));
  if (!f.gradient_checkpointing) tries.push_back("gradient_checkpointing = true");
  if (!f.cache_latents) tries.push_back("cache_latents = true");
  if (f.mixed_precision == "no") tries.push_back("mixed_precision = \"bf16\"");
  tries.push_back(absl::StrFormat("a lower resolution than %dx%d", f.resolution.first, f.resolution.second));
  std::string message = absl::StrCat("out of memory on ", f.device, " at step ", f.step, " (", settings,
                                     "): try ", absl::StrJoin(tries, ", or "));
  if (!f.detail.empty()) {
    const std::string first_line = f.detail.substr(0, f.detail.find('\n'));
    absl::StrAppend(&message, " (LibTorch: ", first_line, ")");
  }
  return message;
}

absl::Status OutOfMemoryError(const OutOfMemoryFacts& facts) {
  return absl::ResourceExhaustedError(OutOfMemoryMessage(facts));
}

std::optional<DeviceMemory> DeviceMemoryStats(const torch::Device& device) {
#ifdef LORAD_TORCH_CUDA
  if (device.is_cuda() && torch::cuda::is_available()) {
    const c10::DeviceIndex index = device.has_index() ? device.index() : c10::DeviceIndex{0};
    // Index 0 is StatType::AGGREGATE (both pools); the enum's namespace moved between releases.
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(index);
    DeviceMemory m;
    m.peak_allocated_bytes = stats.allocated_bytes[0].peak;
    m.peak_reserved_bytes = stats.reserved_bytes[0].peak;
    m.allocated_bytes = stats.allocated_bytes[0].current;
    return m;
  }
#else
  (void)device;
#endif
  return std::nullopt;
}

}  // namespace lorad::train
