// SHA-256 (FIPS 180-4), in-tree so every layer (including the engine-only GPU
// build) hashes the same way without an extra crypto dependency: LoRA file
// hashes (sshs_*), image identities in cache keys, artifacts and uploads.
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace lorad {

// Incremental hasher. Not thread-safe; one instance per stream.
class Sha256 {
 public:
  Sha256();
  void Update(std::string_view bytes);
  // Finishes the hash and returns it as lower-case hex; call once.
  std::string HexDigest();

 private:
  std::array<uint32_t, 8> state_;
  uint8_t buffer_[64];
  size_t buffered_ = 0;
  uint64_t total_bytes_ = 0;
};

// Lower-case hex SHA-256 of `bytes`.
std::string Sha256Hex(std::string_view bytes);

// Lower-case hex SHA-256 of a file's contents, read in chunks.
absl::StatusOr<std::string> Sha256File(const std::filesystem::path& path);

}  // namespace lorad
