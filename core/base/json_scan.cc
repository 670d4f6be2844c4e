#include "core/base/json_scan.h"

#include <algorithm>

namespace lorad {

JsonScan ScanJson(std::string_view text) {
  JsonScan scan;
  int depth = 0;
  bool in_string = false;
  bool escaped = false;
  bool started = false;  // a top-level value has begun
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
        if (depth == 0) {  // a top-level string is complete
          scan.end = i + 1;
          return scan;
        }
      }
      continue;
    }
    switch (c) {
      case '"':
        in_string = true;
        started = true;
        break;
      case '{':
      case '[':
        started = true;
        scan.depth = std::max(scan.depth, ++depth);
        break;
      case '}':
      case ']':
        if (--depth <= 0) {
          scan.end = i + 1;
          return scan;
        }
        break;
      case ' ':
      case '\t':
      case '\n':
      case '\r':
        if (started && depth == 0) {  // the end of a top-level scalar
          scan.end = i;
          return scan;
        }
        break;
      default:
        started = true;
        break;
    }
  }
  if (started && depth == 0 && !in_string) scan.end = text.size();  // a scalar running to the end
  return scan;
}

}  // namespace lorad
