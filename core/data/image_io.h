// Image files as a trainer must read them: the header (core/data/image_header.h)
// and decoding to 8-bit RGB with the EXIF orientation
// applied, alpha composited on white, grayscale/16-bit/CMYK converted.
// Internal to core/data (exposes cv::Mat). Thread-safe.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

#include <opencv2/core.hpp>

#include "absl/status/statusor.h"
#include "core/data/image_header.h"

namespace lorad::data {

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
