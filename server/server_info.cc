#include "server/server_info.h"

// The daemon runs no LibTorch code; it reports the version lorad-train was
// built against. A build without LibTorch (the sanitizer build) has none.
#if __has_include(<torch/version.h>) && !defined(LORAD_WITHOUT_TORCH)
#include <torch/version.h>
#define LORAD_LIBTORCH_VERSION TORCH_VERSION
#else
#define LORAD_LIBTORCH_VERSION "none"
#endif

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "core/base/subprocess.h"

namespace lorad::server {

std::vector<GpuInfo> QueryGpus() {
  std::vector<GpuInfo> gpus;
  SubprocessOptions options;
  options.argv = {"nvidia-smi", "--query-gpu=index,name,memory.total,memory.free",
                  "--format=csv,noheader,nounits"};
  options.timeout = absl::Seconds(20);  // a wedged driver must not hold the daemon's start
  options.max_stdout_bytes = 1 << 20;
  auto run = RunSubprocess(options);
  if (!run.ok() || !run->succeeded()) return gpus;
  for (absl::string_view line : absl::StrSplit(run->stdout_text, '\n', absl::SkipWhitespace())) {
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

std::string LibTorchVersion() { return LORAD_LIBTORCH_VERSION; }

bool LibTorchHasCuda() {
#ifdef LORAD_TORCH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace lorad::server
