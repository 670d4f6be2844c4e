// Fuzzes the kohya training-config parser (TOML text, as SubmitJob receives it)
// and one command-line style override taken from the same input.
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core/config/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  // "key=value" after the last NUL becomes an override, the rest is the file.
  std::string toml = text;
  std::vector<std::pair<std::string, std::string>> overrides;
  if (const size_t nul = text.rfind('\0'); nul != std::string::npos) {
    toml = text.substr(0, nul);
    const std::string tail = text.substr(nul + 1);
    if (const size_t eq = tail.find('='); eq != std::string::npos) {
      overrides.emplace_back(tail.substr(0, eq), tail.substr(eq + 1));
    }
  }
  (void)lorad::train::ParseTrainConfig(toml, overrides);
  (void)lorad::train::ParseTrainOptions(toml, {});
  return 0;
}
