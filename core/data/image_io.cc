#include "core/data/image_io.h"

#include <algorithm>
#include <cctype>
#include <fstream>
#include <vector>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "absl/strings/str_cat.h"

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
  h->stored_width = static_cast<int>(Be32(b, 16));
  h->stored_height = static_cast<int>(Be32(b, 20));
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
    } else if (IsSof(m) && len >= 7) {
      h->stored_height = Be16(b, o + 3);
      h->stored_width = Be16(b, o + 5);
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
      have_size = true;
    } else if (type == "VP8 " && len >= 10 && !have_size) {
      h->stored_width = Le16(b, d + 6) & 0x3FFF;
      h->stored_height = Le16(b, d + 8) & 0x3FFF;
      have_size = true;
    } else if (type == "VP8L" && len >= 5 && !have_size) {
      const uint32_t bits = Le32(b, d + 1);
      h->stored_width = int((bits & 0x3FFF) + 1);
      h->stored_height = int(((bits >> 14) & 0x3FFF) + 1);
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
  } else {
    h->stored_width = static_cast<int32_t>(Le32(b, 18));
    h->stored_height = std::abs(static_cast<int32_t>(Le32(b, 22)));
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
      std::vector<cv::Mat> ch;
      cv::split(in8, ch);
      cv::Mat alpha = ch.back();
      cv::Mat color;
      if (in8.channels() == 2) {
        cv::cvtColor(ch[0], color, cv::COLOR_GRAY2BGR);
      } else {
        cv::merge(std::vector<cv::Mat>{ch[0], ch[1], ch[2]}, color);
      }
      cv::Mat a3, colorf, af;
      alpha.convertTo(af, CV_32F, 1.0 / 255.0);
      cv::merge(std::vector<cv::Mat>{af, af, af}, a3);
      color.convertTo(colorf, CV_32F);
      cv::Mat blended = colorf.mul(a3) + (cv::Scalar::all(1.0) - a3) * 255.0;
      blended.convertTo(out, CV_8U);  // rounds and saturates
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
  }
  cv::Mat raw;
  try {
    const cv::Mat buf(1, static_cast<int>(bytes.size()), CV_8U, const_cast<char*>(bytes.data()));
    raw = cv::imdecode(buf, flags);
  } catch (const cv::Exception& e) {
    return Corrupt(name, absl::StrCat("OpenCV could not decode it (", e.what(), ")"));
  }
  if (raw.empty()) return Corrupt(name, "OpenCV could not decode it");
  cv::Mat bgr = ToBgrOnWhite(To8Bit(raw));
  if (bgr.empty()) return Corrupt(name, absl::StrCat("unsupported channel count ", raw.channels()));
  if (bgr.data == raw.data) bgr = bgr.clone();  // own the pixels before in-place orientation
  ApplyExifOrientation(header->orientation, bgr);
  cv::Mat rgb;
  cv::cvtColor(bgr, rgb, cv::COLOR_BGR2RGB);
  return rgb;
}

absl::StatusOr<cv::Mat> LoadImageRgb(const std::filesystem::path& path) {
  auto bytes = ReadFileBytes(path);
  if (!bytes.ok()) return bytes.status();
  return DecodeImageRgb(*bytes, path.string());
}

}  // namespace lorad::data
