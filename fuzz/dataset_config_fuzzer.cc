// Fuzzes kohya's dataset-config TOML parser (an uploaded dataset_config), with
// relative image_dir values anchored in a folder that does not exist.
#include <cstddef>
#include <cstdint>
#include <string>

#include "core/data/dataset_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  lorad::data::DatasetArgs fallbacks;
  (void)lorad::data::ParseDatasetConfigToml(text, "/nonexistent/lorad-fuzz", fallbacks);
  (void)lorad::data::ParseResolution(text.substr(0, 64));
  return 0;
}
