// ScopedTempDir: a fresh, uniquely named directory under the system temp
// directory that is removed, with everything in it, when the object goes out of
// scope, so a test that fails an ASSERT (and returns early) leaves nothing
// behind. Header-only and torch-free: every test can use it.
//
//   lorad::testing::ScopedTempDir tmp("lorad_io_test");
//   WriteFile(tmp.path() / "a.safetensors");
//
// Not thread-safe to share while it is being destroyed; otherwise just a path.
#pragma once

#include <stdlib.h>

#include <filesystem>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>

namespace lorad::testing {

class ScopedTempDir {
 public:
  // Creates <temp dir>/<prefix>_XXXXXX (mkdtemp: unique, mode 0700). Throws
  // std::runtime_error when it cannot: a test cannot go on without it.
  explicit ScopedTempDir(std::string_view prefix = "lorad_test") {
    std::string pattern = (std::filesystem::temp_directory_path() / (std::string(prefix) + "_XXXXXX")).string();
    if (::mkdtemp(pattern.data()) == nullptr) {
      throw std::runtime_error("ScopedTempDir: mkdtemp failed for " + pattern);
    }
    path_ = pattern;
  }
  ~ScopedTempDir() {
    if (path_.empty()) return;
    std::error_code ignored;  // a destructor must not throw; a leftover temp dir is harmless
    std::filesystem::remove_all(path_, ignored);
  }

  ScopedTempDir(const ScopedTempDir&) = delete;
  ScopedTempDir& operator=(const ScopedTempDir&) = delete;
  ScopedTempDir(ScopedTempDir&& other) noexcept : path_(std::exchange(other.path_, {})) {}
  ScopedTempDir& operator=(ScopedTempDir&& other) noexcept {
    if (this != &other) {
      ScopedTempDir dropped(std::move(*this));
      path_ = std::exchange(other.path_, {});
    }
    return *this;
  }

  // The directory; empty after being moved from.
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::filesystem::path& child) const { return path_ / child; }

 private:
  std::filesystem::path path_;
};

}  // namespace lorad::testing
