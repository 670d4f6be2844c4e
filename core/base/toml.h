// The one way lorad turns TOML text into a table: configs, dataset configs,
// sweep files, the advisor's rules and lorad.toml all come through here, so a
// syntax error reads the same everywhere and hostile input is refused before
// the parser sees it (toml++ recurses once per nesting level).
#pragma once

#include <cstddef>
#include <filesystem>
#include <string_view>

#include <toml++/toml.h>

#include "absl/status/statusor.h"

namespace lorad {

// Largest TOML document accepted. kohya configs are a few KiB; a sweep with
// many prompts stays far below this.
inline constexpr size_t kMaxTomlBytes = 1u << 20;
// Deepest nesting accepted: dotted key parts, [table.header] parts, arrays and
// inline tables, counted together. Real configs use 3 or 4.
inline constexpr int kMaxTomlDepth = 32;

// Parses `text`. `what` names the document in errors ("config", "dataset_config
// 'x.toml'"): INVALID_ARGUMENT "<what>: <problem> at line L, column C".
absl::StatusOr<toml::table> ParseToml(std::string_view text, std::string_view what);

// Reads `path` (at most kMaxTomlBytes) and parses it; errors name the path.
absl::StatusOr<toml::table> ParseTomlFile(const std::filesystem::path& path);

// The deepest nesting in `text` as ParseToml counts it (strings and comments
// skipped). Exposed for tests.
int TomlNestingDepth(std::string_view text);

}  // namespace lorad
