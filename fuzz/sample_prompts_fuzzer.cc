// Fuzzes kohya's sample-prompt file syntax (`--n`, `--w`, `--h`, `--s`, ...).
#include <cstddef>
#include <cstdint>
#include <string>

#include "core/train/sample_prompts.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  (void)lorad::train::ParseSamplePrompts(std::string(reinterpret_cast<const char*>(data), size));
  return 0;
}
