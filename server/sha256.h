// SHA-256 (OpenSSL EVP) for artifacts and uploaded datasets.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace lorad::server {

// Incremental hasher. Not thread-safe.
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;
  void Update(absl::string_view bytes);
  std::string HexDigest();  // finishes the hash; call once

 private:
  struct Ctx;
  std::unique_ptr<Ctx> ctx_;
};

// Lowercase hex SHA-256 of a file's contents.
absl::StatusOr<std::string> Sha256File(const std::string& path);

}  // namespace lorad::server
