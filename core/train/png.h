// A minimal PNG writer (8-bit RGB, zlib via libz) so previews need no OpenCV.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

#include <torch/torch.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace lorad::train {

// PNG bytes of an image tensor [3,H,W] (or [H,W,3] uint8) with values in [0,1]
// (float, clamped) or uint8.
absl::StatusOr<std::string> EncodePng(const torch::Tensor& image);

// Writes EncodePng(image) to `path` atomically (temp file + rename).
absl::Status WritePng(const std::filesystem::path& path, const torch::Tensor& image);

// Writes `bytes` to `path` atomically (temp file in the same folder + rename).
absl::Status WriteFileAtomic(const std::filesystem::path& path, const std::string& bytes);

}  // namespace lorad::train
