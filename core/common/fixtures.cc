#include "core/common/fixtures.h"

#include <cstdlib>

namespace lorad {

std::filesystem::path FixturesDir() {
  if (const char* env = std::getenv("LORAD_FIXTURES"); env != nullptr && *env != '\0') {
    return std::filesystem::path(env);
  }
  return std::filesystem::path(LORAD_SOURCE_DIR) / ".." / "shared" / "fixtures";
}

std::filesystem::path FixturePath(const std::string& name) { return FixturesDir() / name; }

std::filesystem::path BuildDir() {
  if (const char* env = std::getenv("LORAD_BUILD_DIR"); env != nullptr && *env != '\0') {
    return std::filesystem::path(env);
  }
  return std::filesystem::current_path();
}

}  // namespace lorad
