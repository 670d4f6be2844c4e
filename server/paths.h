// Path confinement: everything a job or an upload names must stay inside the
// daemon's configured roots.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace lorad::server {

// True when `path` (after resolving symlinks of its existing prefix and "..")
// is `root` or lies below it.
bool IsWithin(const std::filesystem::path& root, const std::filesystem::path& path);

// Resolves `value` (absolute, or relative to `base`) and requires it inside one
// of `roots`. PERMISSION_DENIED names the key, the path and the roots.
absl::StatusOr<std::filesystem::path> ConfinePath(const std::string& key, const std::string& value,
                                                  const std::filesystem::path& base,
                                                  const std::vector<std::filesystem::path>& roots);

// Validates a client-supplied relative path ("10_cat/001.png"): not empty, not
// absolute, no "." / ".." / empty components, no NUL or backslash, <= 512 bytes.
absl::Status ValidateRelativePath(const std::string& relative);

}  // namespace lorad::server
