#include "core/data/image_io.h"

#include <algorithm>
#include <cctype>
#include <fstream>
#include <limits>
#include <vector>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "absl/strings/str_cat.h"
#include "core/base/limits.h"

namespace lorad::data {
namespace {

uint32_t Be32(const std::string& b, size_t o) {
  return (uint32_t(uint8_t(b[o])) << 24) | (uint32_t(uint8_t(b[o + 1])) << 16) | (uint32_t(uint8_t(b[o + 2])) << 8) |
         uint32_t(uint8_t(b[o + 3]));
}
uint16_t Be16(const std::string& b, size_t o) { return uint16_t((uint8_t(b[o]) << 8) | uint8_t(b[o + 1])); }
uint32_t Le32(const std::string& b, size_t o) {
  return uint32_t(uint8_t(b[o])) | (uint32_t(uint8_t(b[o + 1])) << 8) | (uint32_t(uint8_t(b[o + 2])) << 16) |
         (uint32_t(uint8_t(b[o + 3])) << 24);
}
uint16_t Le16(const std::string& b, size_t o) { return uint16_t(uint8_t(b[o]) | (uint8_t(b[o + 1]) << 8)); }

absl::Status Corrupt(const std::string& name, const std::string& why) {
  return absl::DataLossError(absl::StrCat("image '", name, "' is unreadable: ", why,
                                          "; re-export or remove the file"));
}

// The orientation tag (0x0112) of a TIFF-structured EXIF blob; 1 when absent.
int OrientationFromTiff(const std::string& b, size_t start, size_t end) {
  if (end < start + 8 || end > b.size()) return 1;
  const bool le = b.compare(start, 2, "II") == 0;
  if (!le && b.compare(start, 2, "MM") != 0) return 1;
  auto u16 = [&](size_t o) { return le ? Le16(b, o) : Be16(b, o); };
  auto u32 = [&](size_t o) { return le ? Le32(b, o) : Be32(b, o); };
  const size_t ifd = start + u32(start + 4);
  if (ifd + 2 > end) return 1;
  const int count = u16(ifd);
  for (int i = 0; i < count; ++i) {
    const size_t e = ifd + 2 + 12 * size_t(i);
    if (e + 12 > end) return 1;
    if (u16(e) == 0x0112) {
      const int v = u16(e + 8);
      return v >= 1 && v <= 8 ? v : 1;
    }
  }
  return 1;
}

absl::Status ParsePng(const std::string& b, const std::string& name, ImageHeader* h) {
  if (b.size() < 33) return Corrupt(name, "PNG shorter than its header");
  h->format = "png";
  if (b.compare(12, 4, "IHDR") != 0) return Corrupt(name, "PNG does not start with an IHDR chunk");
  h->stored_width = static_cast<int>(Be32(b, 16));
  h->stored_height = static_cast<int>(Be32(b, 20));
  const int bit_depth = uint8_t(b[24]);
  const int color_type = uint8_t(b[25]);
  switch (color_type) {
    case 0: h->channels = 1; break;  // gray
    case 2: h->channels = 3; break;  // RGB
    case 3: h->channels = 4; break;  // palette: RGBA when it has transparency
    case 4: h->channels = 2; break;  // gray + alpha
    case 6: h->channels = 4; break;  // RGBA
    default: return Corrupt(name, absl::StrCat("PNG has an unknown color type ", color_type));
  }
  h->bytes_per_channel = bit_depth > 8 ? 2 : 1;
  size_t o = 8;
  while (true) {
    if (o + 12 > b.size()) return Corrupt(name, "PNG is truncated (no IEND chunk)");
    const uint32_t len = Be32(b, o);
    const std::string type = b.substr(o + 4, 4);
    if (o + 12 + size_t(len) > b.size()) return Corrupt(name, absl::StrCat("PNG is truncated inside chunk ", type));
    if (type == "eXIf") h->orientation = OrientationFromTiff(b, o + 8, o + 8 + len);
    if (type == "IEND") return absl::OkStatus();
    o += 12 + size_t(len);
  }
}

bool IsSof(uint8_t m) { return m >= 0xC0 && m <= 0xCF && m != 0xC4 && m != 0xC8 && m != 0xCC; }

absl::Status ParseJpeg(const std::string& b, const std::string& name, ImageHeader* h) {
  h->format = "jpeg";
  size_t o = 2;
  bool have_size = false;
  while (true) {
    // Find the next marker (skip fill bytes).
    if (o + 2 > b.size()) return Corrupt(name, "JPEG is truncated (no end-of-image marker)");
    if (uint8_t(b[o]) != 0xFF) return Corrupt(name, absl::StrCat("JPEG has a broken segment at byte ", o));
    uint8_t m = uint8_t(b[o + 1]);
    if (m == 0xFF) {
      ++o;
      continue;
    }
    o += 2;
    if (m == 0xD9) break;                                    // EOI
    if ((m >= 0xD0 && m <= 0xD7) || m == 0x01) continue;     // standalone markers
    if (o + 2 > b.size()) return Corrupt(name, "JPEG is truncated inside a segment header");
    const size_t len = Be16(b, o);
    if (len < 2 || o + len > b.size()) return Corrupt(name, "JPEG is truncated inside a segment");
    if (m == 0xE1 && len >= 8 && b.compare(o + 2, 6, std::string("Exif\0\0", 6)) == 0) {
      h->orientation = OrientationFromTiff(b, o + 8, o + len);
    } else if (IsSof(m) && len >= 8) {
      h->stored_height = Be16(b, o + 3);
      h->stored_width = Be16(b, o + 5);
      h->bytes_per_channel = uint8_t(b[o + 2]) > 8 ? 2 : 1;
      h->channels = uint8_t(b[o + 7]) == 1 ? 1 : 3;  // OpenCV converts YCbCr/CMYK to BGR
      have_size = true;
    }
    o += len;
    if (m == 0xDA) {
      // Entropy-coded data runs to the next marker that is not a stuffed 0x00
      // or a restart marker; reaching the end of the file means truncation.
      while (true) {
        const size_t ff = b.find('\xFF', o);
        if (ff == std::string::npos || ff + 1 >= b.size()) {
          return Corrupt(name, "JPEG is truncated (image data ends without an end-of-image marker)");
        }
        const uint8_t next = uint8_t(b[ff + 1]);
        if (next == 0x00 || (next >= 0xD0 && next <= 0xD7) || next == 0xFF) {
          o = ff + (next == 0xFF ? 1 : 2);
          continue;
        }
        o = ff;
        break;
      }
    }
  }
  if (!have_size) return Corrupt(name, "JPEG has no frame header");
  return absl::OkStatus();
}

absl::Status ParseWebp(const std::string& b, const std::string& name, ImageHeader* h) {
  h->format = "webp";
  if (b.size() < 30) return Corrupt(name, "WebP shorter than its header");
  const size_t riff_end = 8 + size_t(Le32(b, 4));
  if (riff_end > b.size()) return Corrupt(name, "WebP is truncated (RIFF size exceeds the file)");
  size_t o = 12;
  bool have_size = false;
  while (o + 8 <= riff_end) {
    const std::string type = b.substr(o, 4);
    const size_t len = Le32(b, o + 4);
    const size_t d = o + 8;
    if (d + len > riff_end) return Corrupt(name, absl::StrCat("WebP is truncated inside chunk ", type));
    if (type == "VP8X" && len >= 10) {
      h->stored_width = int(1 + (Le32(b, d + 4) & 0xFFFFFF));
      h->stored_height = int(1 + (Le32(b, d + 7) & 0xFFFFFF));
      h->channels = (uint8_t(b[d]) & 0x10) != 0 ? 4 : 3;  // the alpha flag
      have_size = true;
    } else if (type == "VP8 " && len >= 10 && !have_size) {
      h->stored_width = Le16(b, d + 6) & 0x3FFF;
      h->stored_height = Le16(b, d + 8) & 0x3FFF;
      have_size = true;
    } else if (type == "VP8L" && len >= 5 && !have_size) {
      const uint32_t bits = Le32(b, d + 1);
      h->stored_width = int((bits & 0x3FFF) + 1);
      h->stored_height = int(((bits >> 14) & 0x3FFF) + 1);
      h->channels = 4;  // lossless may carry alpha
      have_size = true;
    } else if (type == "EXIF") {
      size_t s = d;
      if (len >= 6 && b.compare(d, 6, std::string("Exif\0\0", 6)) == 0) s += 6;
      h->orientation = OrientationFromTiff(b, s, d + len);
    }
    o = d + len + (len & 1);
  }
  if (!have_size) return Corrupt(name, "WebP has no image chunk");
  return absl::OkStatus();
}

absl::Status ParseBmp(const std::string& b, const std::string& name, ImageHeader* h) {
  h->format = "bmp";
  if (b.size() < 26) return Corrupt(name, "BMP shorter than its header");
  const size_t pixels_at = Le32(b, 10);
  const uint32_t dib = Le32(b, 14);
  if (dib == 12) {
    h->stored_width = Le16(b, 18);
    h->stored_height = Le16(b, 20);
    h->channels = 3;
  } else {
    if (b.size() < 30) return Corrupt(name, "BMP shorter than its header");
    h->stored_width = static_cast<int32_t>(Le32(b, 18));
    const int32_t height = static_cast<int32_t>(Le32(b, 22));
    // INT32_MIN has no absolute value: refused as an invalid size below.
    h->stored_height = height == INT32_MIN ? 0 : std::abs(height);
    h->channels = Le16(b, 28) == 32 ? 4 : 3;
  }
  if (pixels_at >= b.size()) return Corrupt(name, "BMP is truncated (no pixel data)");
  const size_t declared = Le32(b, 2);
  if (declared > b.size()) return Corrupt(name, "BMP is truncated (shorter than its declared size)");
  return absl::OkStatus();
}

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

bool IsImageFile(const std::filesystem::path& path) {
  std::string ext = path.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
  return ext == ".png" || ext == ".jpg" || ext == ".jpeg" || ext == ".webp" || ext == ".bmp";
}

absl::StatusOr<std::string> ReadFileBytes(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open '", path.string(), "'"));
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) return absl::DataLossError(absl::StrCat("error reading '", path.string(), "'"));
  return bytes;
}

int64_t DecodeBytes(const ImageHeader& header) {
  return int64_t{header.stored_width} * header.stored_height * header.channels * header.bytes_per_channel;
}

absl::StatusOr<ImageHeader> ParseImageHeader(const std::string& b, const std::string& name) {
  ImageHeader h;
  if (b.empty()) return Corrupt(name, "the file is empty");
  absl::Status s;
  if (b.size() >= 8 && b.compare(0, 8, "\x89PNG\r\n\x1a\n") == 0) {
    s = ParsePng(b, name, &h);
  } else if (b.size() >= 3 && uint8_t(b[0]) == 0xFF && uint8_t(b[1]) == 0xD8) {
    s = ParseJpeg(b, name, &h);
  } else if (b.size() >= 12 && b.compare(0, 4, "RIFF") == 0 && b.compare(8, 4, "WEBP") == 0) {
    s = ParseWebp(b, name, &h);
  } else if (b.size() >= 2 && b.compare(0, 2, "BM") == 0) {
    s = ParseBmp(b, name, &h);
  } else {
    return Corrupt(name, "not a PNG, JPEG, WebP or BMP file (unknown signature)");
  }
  if (!s.ok()) return s;
  if (h.stored_width <= 0 || h.stored_height <= 0) {
    return Corrupt(name, absl::StrCat("invalid size ", h.stored_width, "x", h.stored_height));
  }
  const bool swap = h.orientation >= 5;
  h.width = swap ? h.stored_height : h.stored_width;
  h.height = swap ? h.stored_width : h.stored_height;
  return h;
}

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
    if (raw.empty()) return Corrupt(name, "OpenCV could not decode it");
    cv::Mat bgr = ToBgrOnWhite(To8Bit(raw));
    if (bgr.empty()) return Corrupt(name, absl::StrCat("unsupported channel count ", raw.channels()));
    if (bgr.data == raw.data) bgr = bgr.clone();  // own the pixels before in-place orientation
    raw.release();
    ApplyExifOrientation(header->orientation, bgr);
    cv::Mat rgb;
    cv::cvtColor(bgr, rgb, cv::COLOR_BGR2RGB);
    return rgb;
  } catch (const cv::Exception& e) {
    return Corrupt(name, absl::StrCat("OpenCV could not decode it (", e.what(), ")"));
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
