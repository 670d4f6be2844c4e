// What GetServerInfo reports about the machine: LibTorch version (from the
// headers lorad-train is built with), GPUs via nvidia-smi (no CUDA in the daemon).
#pragma once

#include <string>
#include <vector>

namespace lorad::server {

struct GpuInfo {
  int index = 0;
  std::string name;
  int64_t memory_total_bytes = 0;
  int64_t memory_free_bytes = 0;
};

std::vector<GpuInfo> QueryGpus();  // empty without nvidia-smi or GPUs
std::string LibTorchVersion();
bool LibTorchHasCuda();

}  // namespace lorad::server
