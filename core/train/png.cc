#include "core/train/png.h"

#include <zlib.h>

#include <fstream>

#include "absl/strings/str_cat.h"

namespace lorad::train {
namespace {

void PutU32(std::string* out, uint32_t v) {
  out->push_back(static_cast<char>(v >> 24));
  out->push_back(static_cast<char>(v >> 16));
  out->push_back(static_cast<char>(v >> 8));
  out->push_back(static_cast<char>(v));
}

void PutChunk(std::string* out, const char type[4], const std::string& data) {
  PutU32(out, static_cast<uint32_t>(data.size()));
  std::string body(type, 4);
  body += data;
  out->append(body);
  PutU32(out, static_cast<uint32_t>(crc32(0, reinterpret_cast<const Bytef*>(body.data()), body.size())));
}

}  // namespace

absl::StatusOr<std::string> EncodePng(const torch::Tensor& image) {
  torch::Tensor hwc;
  try {
    torch::Tensor t = image.detach().to(torch::kCPU);
    if (t.dim() == 3 && t.size(0) == 3 && t.scalar_type() != torch::kUInt8) {
      t = t.permute({1, 2, 0});
    }
    if (t.dim() != 3 || t.size(2) != 3) {
      return absl::InvalidArgumentError("EncodePng: expected an RGB image [3,H,W] or [H,W,3]");
    }
    if (t.scalar_type() != torch::kUInt8) {
      t = (t.to(torch::kFloat32).clamp(0, 1) * 255.0).round().to(torch::kUInt8);
    }
    hwc = t.contiguous();
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("EncodePng: ", e.what_without_backtrace()));
  }
  const auto height = static_cast<uint32_t>(hwc.size(0));
  const auto width = static_cast<uint32_t>(hwc.size(1));
  // Filter type 0 (none) before every row.
  std::string raw;
  raw.reserve(static_cast<size_t>(height) * (width * 3 + 1));
  const auto* pixels = hwc.data_ptr<uint8_t>();
  for (uint32_t y = 0; y < height; ++y) {
    raw.push_back('\0');
    raw.append(reinterpret_cast<const char*>(pixels + static_cast<size_t>(y) * width * 3), width * 3);
  }
  uLongf compressed_size = compressBound(raw.size());
  std::string compressed(compressed_size, '\0');
  if (compress2(reinterpret_cast<Bytef*>(compressed.data()), &compressed_size,
                reinterpret_cast<const Bytef*>(raw.data()), raw.size(), 6) != Z_OK) {
    return absl::InternalError("EncodePng: zlib compression failed");
  }
  compressed.resize(compressed_size);
  std::string png("\x89PNG\r\n\x1a\n", 8);
  std::string header;
  PutU32(&header, width);
  PutU32(&header, height);
  header += std::string("\x08\x02\x00\x00\x00", 5);  // 8-bit, RGB, deflate, no filter, no interlace
  PutChunk(&png, "IHDR", header);
  PutChunk(&png, "IDAT", compressed);
  PutChunk(&png, "IEND", "");
  return png;
}

absl::Status WriteFileAtomic(const std::filesystem::path& path, const std::string& bytes) {
  std::error_code ec;
  if (path.has_parent_path()) std::filesystem::create_directories(path.parent_path(), ec);
  const std::filesystem::path tmp = path.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    out.flush();
    if (!out) return absl::UnavailableError(absl::StrCat("cannot write ", tmp.string(), ": disk full or no permission?"));
  }
  std::filesystem::rename(tmp, path, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot rename ", tmp.string(), " to ", path.string(), ": ", ec.message()));
  return absl::OkStatus();
}

absl::Status WritePng(const std::filesystem::path& path, const torch::Tensor& image) {
  auto png = EncodePng(image);
  if (!png.ok()) return png.status();
  return WriteFileAtomic(path, *png);
}

}  // namespace lorad::train
