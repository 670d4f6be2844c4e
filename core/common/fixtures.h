// Locating the shared reference fixtures and the build's binaries from tests/tools.
#pragma once

#include <filesystem>
#include <string>

namespace lorad {

// The fixture folder: $LORAD_FIXTURES, else <repo>/../shared/fixtures.
std::filesystem::path FixturesDir();

// Path of a fixture file by name (not checked for existence).
std::filesystem::path FixturePath(const std::string& name);

// The CMake build directory ($LORAD_BUILD_DIR, set by CTest), for finding tools.
std::filesystem::path BuildDir();

}  // namespace lorad
