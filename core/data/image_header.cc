#include "core/data/image_header.h"

#include <algorithm>
#include <cctype>
#include <fstream>
#include <limits>

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

absl::Status Corrupt(const std::string& name, const std::string& why) { return ImageUnreadable(name, why); }

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

}  // namespace

absl::Status ImageUnreadable(const std::string& name, const std::string& why) {
  return absl::DataLossError(absl::StrCat("image '", name, "' is unreadable: ", why,
                                          "; re-export or remove the file"));
}

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
  // Two sides near 2^31 times 4 channels times 2 bytes overflow 64 bits (found
  // by the image_header fuzzer): the product saturates instead.
  const __int128 bytes = static_cast<__int128>(header.stored_width) * header.stored_height * header.channels *
                         header.bytes_per_channel;
  return bytes > std::numeric_limits<int64_t>::max() ? std::numeric_limits<int64_t>::max()
                                                     : static_cast<int64_t>(bytes);
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

}  // namespace lorad::data
