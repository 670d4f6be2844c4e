// Image files as a trainer must read them: header-only size/orientation (fast,
// at dataset open), structural checks that catch truncated files OpenCV would
// silently fill with grey, and decoding to 8-bit RGB with the EXIF orientation
// applied, alpha composited on white, grayscale/16-bit/CMYK converted.
// Internal to core/data (exposes cv::Mat). Thread-safe.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

#include <opencv2/core.hpp>

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
// channel (no overflow: sides are below 2^31 and the product fits in 64 bits).
int64_t DecodeBytes(const ImageHeader& header);

// Reads the whole file into memory (for hashing and decoding from one read).
absl::StatusOr<std::string> ReadFileBytes(const std::filesystem::path& path);

// Parses the header and checks the file's structure (PNG chunks through IEND,
// JPEG segments through EOI, RIFF/BMP sizes). `name` appears in errors.
absl::StatusOr<ImageHeader> ParseImageHeader(const std::string& bytes, const std::string& name);

// Decodes to CV_8UC3 RGB with orientation applied and alpha composited on white.
// Images above kMaxDecodePixels: JPEG decoded at 1/2, 1/4 or 1/8 scale (so the
// returned size can be smaller than the header's); others refused. A raw decode
// above kMaxImageDecodeBytes is refused from the header, before decoding
// (RESOURCE_EXHAUSTED). Every OpenCV error (including out of memory) is a
// Status: DATA_LOSS naming the file. Never throws.
absl::StatusOr<cv::Mat> DecodeImageRgb(const std::string& bytes, const std::string& name);

// Convenience: ReadFileBytes + DecodeImageRgb.
absl::StatusOr<cv::Mat> LoadImageRgb(const std::filesystem::path& path);

// Applies an EXIF orientation (1..8) exactly as OpenCV's imread does.
void ApplyExifOrientation(int orientation, cv::Mat& image);

}  // namespace lorad::data
