#include "server/server_info.h"

#include <cstdio>
#include <memory>

#include <torch/version.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace lorad::server {

std::vector<GpuInfo> QueryGpus() {
  std::vector<GpuInfo> gpus;
  std::unique_ptr<FILE, int (*)(FILE*)> pipe(
      ::popen("nvidia-smi --query-gpu=index,name,memory.total,memory.free "
              "--format=csv,noheader,nounits 2>/dev/null",
              "r"),
      ::pclose);
  if (!pipe) return gpus;
  char line[512];
  while (std::fgets(line, sizeof(line), pipe.get()) != nullptr) {
    std::vector<std::string> fields = absl::StrSplit(line, ',');
    if (fields.size() < 4) continue;
    GpuInfo gpu;
    int64_t total_mib = 0, free_mib = 0;
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(fields[0]), &gpu.index)) continue;
    gpu.name = std::string(absl::StripAsciiWhitespace(fields[1]));
    (void)absl::SimpleAtoi(absl::StripAsciiWhitespace(fields[2]), &total_mib);
    (void)absl::SimpleAtoi(absl::StripAsciiWhitespace(fields[3]), &free_mib);
    gpu.memory_total_bytes = total_mib << 20;
    gpu.memory_free_bytes = free_mib << 20;
    gpus.push_back(gpu);
  }
  return gpus;
}

std::string LibTorchVersion() { return TORCH_VERSION; }

bool LibTorchHasCuda() {
#ifdef LORAD_TORCH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace lorad::server
