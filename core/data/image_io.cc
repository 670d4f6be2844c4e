#include "core/data/image_io.h"

#include <algorithm>
#include <limits>
#include <vector>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "absl/strings/str_cat.h"
#include "core/base/limits.h"

namespace lorad::data {
namespace {

cv::Mat To8Bit(const cv::Mat& in) {
  if (in.depth() == CV_8U) return in;
  cv::Mat out;
  if (in.depth() == CV_16U) {
    in.convertTo(out, CV_8U, 1.0 / 257.0);
  } else if (in.depth() == CV_32F || in.depth() == CV_64F) {
    in.convertTo(out, CV_8U, 255.0);
  } else {
    double lo, hi;
    cv::minMaxLoc(in.reshape(1), &lo, &hi);
    in.convertTo(out, CV_8U, hi > lo ? 255.0 / (hi - lo) : 1.0, hi > lo ? -lo * 255.0 / (hi - lo) : 0.0);
  }
  return out;
}

// Any channel layout -> BGR, alpha composited on white.
cv::Mat ToBgrOnWhite(const cv::Mat& in8) {
  cv::Mat out;
  switch (in8.channels()) {
    case 1:
      cv::cvtColor(in8, out, cv::COLOR_GRAY2BGR);
      return out;
    case 3:
      return in8;
    case 2:
    case 4: {
      // c * a/255 + (255 - a), rounded: in integers, row by row, so a large
      // image needs no float copies (the exact value never ends in .5).
      const int n = in8.channels();
      out.create(in8.rows, in8.cols, CV_8UC3);
      for (int y = 0; y < in8.rows; ++y) {
        const uint8_t* src = in8.ptr<uint8_t>(y);
        uint8_t* dst = out.ptr<uint8_t>(y);
        for (int x = 0; x < in8.cols; ++x, src += n, dst += 3) {
          const int a = src[n - 1];
          for (int c = 0; c < 3; ++c) {
            const int value = n == 2 ? src[0] : src[c];
            dst[c] = static_cast<uint8_t>((value * a + 255 * (255 - a) + 127) / 255);
          }
        }
      }
      return out;
    }
    default:
      return cv::Mat();
  }
}

}  // namespace

void ApplyExifOrientation(int orientation, cv::Mat& img) {
  switch (orientation) {
    case 2: cv::flip(img, img, 1); break;
    case 3: cv::flip(img, img, -1); break;
    case 4: cv::flip(img, img, 0); break;
    case 5: cv::transpose(img, img); break;
    case 6: cv::transpose(img, img); cv::flip(img, img, 1); break;
    case 7: cv::transpose(img, img); cv::flip(img, img, -1); break;
    case 8: cv::transpose(img, img); cv::flip(img, img, 0); break;
    default: break;
  }
}

absl::StatusOr<cv::Mat> DecodeImageRgb(const std::string& bytes, const std::string& name) {
  auto header = ParseImageHeader(bytes, name);
  if (!header.ok()) return header.status();
  const int64_t pixels = int64_t(header->stored_width) * header->stored_height;
  // IMREAD_UNCHANGED keeps alpha and 16 bits but skips OpenCV's orientation
  // handling; the orientation is applied below, the same way for every format.
  int flags = cv::IMREAD_UNCHANGED;
  int64_t decode_bytes = DecodeBytes(*header);
  if (pixels > kMaxDecodePixels) {
    if (header->format != "jpeg") {
      return absl::InvalidArgumentError(absl::StrCat(
          "image '", name, "' is ", header->stored_width, "x", header->stored_height, " (", pixels,
          " pixels), above the limit of ", kMaxDecodePixels, "; downscale it before training"));
    }
    int factor = 2;
    while (factor < 8 && pixels / (int64_t(factor) * factor) > kMaxDecodePixels) factor *= 2;
    if (pixels / (int64_t(factor) * factor) > kMaxDecodePixels) {
      return absl::InvalidArgumentError(absl::StrCat("image '", name, "' is ", header->stored_width, "x",
                                                     header->stored_height,
                                                     ": too large even at 1/8 scale; downscale it before training"));
    }
    flags = (factor == 2 ? cv::IMREAD_REDUCED_COLOR_2 : factor == 4 ? cv::IMREAD_REDUCED_COLOR_4
                                                                    : cv::IMREAD_REDUCED_COLOR_8) |
            cv::IMREAD_IGNORE_ORIENTATION;
    decode_bytes = pixels / (int64_t(factor) * factor) * 3;
  }
  // The decode cost from the header, refused before a byte is decoded (a
  // 16-bit RGBA "decompression bomb" is a few KiB on disk).
  if (decode_bytes > kMaxImageDecodeBytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "image '", name, "' is ", header->stored_width, "x", header->stored_height, " with ", header->channels,
        " channels of ", 8 * header->bytes_per_channel, " bits: decoding needs ", decode_bytes,
        " bytes, more than the limit of ", kMaxImageDecodeBytes, "; downscale it or save it with 8 bits per channel"));
  }
  if (bytes.size() > static_cast<size_t>(std::numeric_limits<int>::max())) {
    return absl::InvalidArgumentError(absl::StrCat("image '", name, "' is ", bytes.size(), " bytes: too large"));
  }
  // Every OpenCV call may throw (corrupt data, out of memory): a Status naming
  // the file, never an exception.
  try {
    const cv::Mat buf(1, static_cast<int>(bytes.size()), CV_8U, const_cast<char*>(bytes.data()));
    cv::Mat raw = cv::imdecode(buf, flags);
    if (raw.empty()) return ImageUnreadable(name, "OpenCV could not decode it");
    cv::Mat bgr = ToBgrOnWhite(To8Bit(raw));
    if (bgr.empty()) return ImageUnreadable(name, absl::StrCat("unsupported channel count ", raw.channels()));
    if (bgr.data == raw.data) bgr = bgr.clone();  // own the pixels before in-place orientation
    raw.release();
    ApplyExifOrientation(header->orientation, bgr);
    cv::Mat rgb;
    cv::cvtColor(bgr, rgb, cv::COLOR_BGR2RGB);
    return rgb;
  } catch (const cv::Exception& e) {
    return ImageUnreadable(name, absl::StrCat("OpenCV could not decode it (", e.what(), ")"));
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(absl::StrCat("image '", name, "': out of memory while decoding ",
                                                     header->stored_width, "x", header->stored_height));
  }
}

absl::StatusOr<cv::Mat> LoadImageRgb(const std::filesystem::path& path) {
  auto bytes = ReadFileBytes(path);
  if (!bytes.ok()) return bytes.status();
  return DecodeImageRgb(*bytes, path.string());
}

}  // namespace lorad::data
