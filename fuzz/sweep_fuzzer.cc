// Fuzzes the sweep file parser and its expansion into jobs (SubmitSweep's input).
#include <cstddef>
#include <cstdint>
#include <string>

#include "core/planner/sweep.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  (void)lorad::planner::ParseSweep(std::string(reinterpret_cast<const char*>(data), size));
  return 0;
}
