// What GetServerInfo reports about the machine: LibTorch version (from the
// headers lorad-train is built with), GPUs via nvidia-smi (no CUDA in the
// daemon). QueryGpus runs a program: the daemon calls it once at start (slot
// planning and GetServerInfo share that list), never inside an RPC.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace lorad::server {

struct GpuInfo {
  int index = 0;
  std::string name;
  int64_t memory_total_bytes = 0;
  int64_t memory_free_bytes = 0;
};

// The GPUs nvidia-smi lists (memory as of the call); empty without nvidia-smi,
// without GPUs, or when it fails or hangs (20 s).
std::vector<GpuInfo> QueryGpus();
std::string LibTorchVersion();
bool LibTorchHasCuda();

}  // namespace lorad::server
