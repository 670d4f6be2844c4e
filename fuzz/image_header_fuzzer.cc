// Fuzzes the image header reader (PNG chunks, JPEG segments and EXIF, WebP
// RIFF, BMP) that runs on every uploaded image before anything is decoded.
#include <cstddef>
#include <cstdint>
#include <string>

#include "core/data/image_header.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto header = lorad::data::ParseImageHeader(std::string(reinterpret_cast<const char*>(data), size), "fuzz");
  if (header.ok()) {
    if (header->width <= 0 || header->height <= 0) __builtin_trap();
    (void)lorad::data::DecodeBytes(*header);
  }
  return 0;
}
