// The safetensors header: dtypes, tensor entries and the one validator of the
// format's header (length prefix, JSON, metadata, dtypes, shapes, the exact
// tiling of the data buffer). No LibTorch: the fuzzers and the sanitizer build
// run it alone. Format: the huggingface/safetensors README (format section) and
// safetensors/src/tensor.rs (dtypes, header padding).
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace lorad::io {

enum class DType {
  kBool, kU8, kI8, kF8_E5M2, kF8_E4M3, kI16, kU16, kF16, kBF16, kI32, kU32, kF32, kF64, kI64, kU64
};

// "F16" -> kF16 etc.; nullopt for names this reader does not know.
std::optional<DType> ParseDType(std::string_view name);
std::string_view DTypeToString(DType dtype);
size_t DTypeSize(DType dtype);

struct TensorInfo {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // offsets relative to the data buffer
  uint64_t end = 0;
  int64_t numel() const;
};

using Metadata = std::map<std::string, std::string>;

// The header length from the 8-byte little-endian prefix of a file of
// `file_size` bytes (`data` holds min(8, file_size) bytes): at most 100 MB (the
// reference reader's limit) and within the file.
absl::StatusOr<uint64_t> ReadSafetensorsHeaderLength(const uint8_t* data, uint64_t file_size, std::string_view what);

// Validates the header text (the bytes after the length prefix) of a file of
// `file_size` bytes. Hostile input is bounded: nesting (64 levels, scanned
// before parsing), 100,000 tensors, rank 8, only spaces after the JSON.
absl::Status ParseSafetensorsHeaderText(std::string_view header_text, uint64_t file_size, std::string_view what,
                                        std::vector<TensorInfo>* tensors, Metadata* metadata);

// Validates a complete in-memory safetensors image: the one header validator,
// which Open runs on the mapping (kMapped) or, in two steps (length prefix,
// then header text), on the bytes it reads (kStreamed).
// On success fills `tensors` (sorted by offset), `metadata` and `header_size`.
absl::Status ParseSafetensorsHeader(const uint8_t* data, uint64_t size, std::string_view what,
                                    std::vector<TensorInfo>* tensors, Metadata* metadata,
                                    uint64_t* header_size);

}  // namespace lorad::io
