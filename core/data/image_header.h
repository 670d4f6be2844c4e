// Image headers without decoding a pixel: size, orientation, channels and bit
// depth of PNG, JPEG, WebP and BMP files (fast, at dataset open), and the
// structural checks that catch truncated files OpenCV would silently fill with
// grey. No OpenCV and no LibTorch: the fuzzers run it alone. Thread-safe.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace lorad::data {

// kohya's image extensions (lower-case compare): png jpg jpeg webp bmp.
bool IsImageFile(const std::filesystem::path& path);

// Larger images are decoded reduced (JPEG) or refused, so a 30000x30000 file
// cannot exhaust memory.
inline constexpr int64_t kMaxDecodePixels = 8192LL * 8192LL;
// The raw decode (pixels x channels x bytes per channel, from the header) is
// also capped: kMaxImageDecodeBytes in core/base/limits.h (256 MiB).

struct ImageHeader {
  std::string format;  // "png", "jpeg", "webp", "bmp"
  int stored_width = 0;
  int stored_height = 0;
  int orientation = 1;  // EXIF 1..8
  // What the decoder produces unreduced (OpenCV IMREAD_UNCHANGED), from the header.
  int channels = 3;
  int bytes_per_channel = 1;
  // Size after the orientation is applied (what training sees).
  int width = 0;
  int height = 0;
};

// Bytes of the raw decode the header declares: pixels x channels x bytes per
// channel, saturated at INT64_MAX.
int64_t DecodeBytes(const ImageHeader& header);

// Reads the whole file into memory (for hashing and decoding from one read).
absl::StatusOr<std::string> ReadFileBytes(const std::filesystem::path& path);

// Parses the header and checks the file's structure (PNG chunks through IEND,
// JPEG segments through EOI, RIFF/BMP sizes). `name` appears in errors.
absl::StatusOr<ImageHeader> ParseImageHeader(const std::string& bytes, const std::string& name);

// DATA_LOSS: "image 'name' is unreadable: why; re-export or remove the file".
absl::Status ImageUnreadable(const std::string& name, const std::string& why);

}  // namespace lorad::data
