// A linear, non-recursive pre-scan of JSON text. nlohmann::json parses and
// destroys values recursively, one stack frame per nesting level, so a header or
// metadata string nested 100,000 deep overflows the stack. Every parse of JSON
// that came from a file or the network first checks the depth with ScanJson.
#pragma once

#include <cstddef>
#include <string_view>

namespace lorad {

// Deepest nesting accepted in untrusted JSON. A safetensors header has 3
// levels; training states and model configs fewer than 10.
inline constexpr int kMaxJsonDepth = 64;

struct JsonScan {
  // Deepest nesting of objects and arrays (0 for a scalar).
  int depth = 0;
  // Index just past the first complete top-level value, or npos when the text
  // ends before that value is closed.
  size_t end = std::string_view::npos;
};

// Scans `text` without building anything: brackets inside strings (including
// escaped quotes) do not count. Stops at the end of the first top-level value.
JsonScan ScanJson(std::string_view text);

}  // namespace lorad
