// Fuzzes the safetensors header validator with whole file images: the bytes a
// user's checkpoint, LoRA or training state could hold.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "core/io/safetensors_header.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::vector<lorad::io::TensorInfo> tensors;
  lorad::io::Metadata metadata;
  uint64_t header_size = 0;
  const absl::Status status =
      lorad::io::ParseSafetensorsHeader(data, size, "fuzz.safetensors", &tensors, &metadata, &header_size);
  if (status.ok()) {
    // What a valid header promises: every tensor inside the file, in order.
    uint64_t cursor = 0;
    for (const auto& t : tensors) {
      if (t.begin != cursor || t.end < t.begin || 8 + header_size + t.end > size) __builtin_trap();
      cursor = t.end;
    }
  }
  return 0;
}
