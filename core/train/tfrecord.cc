#include "core/train/tfrecord.h"

#include <array>
#include <fstream>
#include <iterator>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace lorad::train {
namespace {

// Byte-at-a-time table for the reflected Castagnoli polynomial.
constexpr std::array<uint32_t, 256> MakeCrc32cTable() {
  std::array<uint32_t, 256> table{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    table[i] = c;
  }
  return table;
}
constexpr std::array<uint32_t, 256> kCrc32cTable = MakeCrc32cTable();

void AppendLittleEndian(uint64_t value, int bytes, std::string* out) {
  for (int i = 0; i < bytes; ++i) out->push_back(static_cast<char>((value >> (8 * i)) & 0xff));
}

uint64_t ReadLittleEndian(std::string_view bytes) {
  uint64_t value = 0;
  for (size_t i = 0; i < bytes.size(); ++i) value |= static_cast<uint64_t>(static_cast<uint8_t>(bytes[i])) << (8 * i);
  return value;
}

}  // namespace

uint32_t Crc32c(std::string_view data, uint32_t crc) {
  uint32_t c = ~crc;
  for (char ch : data) c = kCrc32cTable[(c ^ static_cast<uint8_t>(ch)) & 0xff] ^ (c >> 8);
  return ~c;
}

uint32_t MaskCrc32c(uint32_t crc) { return ((crc >> 15) | (crc << 17)) + 0xa282ead8u; }

std::string FrameRecord(std::string_view data) {
  std::string out;
  out.reserve(data.size() + 16);
  AppendLittleEndian(data.size(), 8, &out);
  AppendLittleEndian(MaskCrc32c(Crc32c(out)), 4, &out);
  out.append(data);
  AppendLittleEndian(MaskCrc32c(Crc32c(data)), 4, &out);
  return out;
}

absl::StatusOr<std::vector<std::string>> ReadRecords(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path.string()));
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const std::string_view all(bytes);
  std::vector<std::string> records;
  size_t at = 0;
  while (at < all.size()) {
    const std::string where = absl::StrCat(path.string(), ": record ", records.size(), " at byte ", at);
    if (all.size() - at < 12) return absl::DataLossError(absl::StrCat(where, ": the file ends inside its header"));
    const std::string_view header = all.substr(at, 8);
    if (MaskCrc32c(Crc32c(header)) != ReadLittleEndian(all.substr(at + 8, 4))) {
      return absl::DataLossError(absl::StrCat(where, ": length checksum mismatch"));
    }
    const uint64_t length = ReadLittleEndian(header);
    if (length > all.size() - at - 12 || all.size() - at - 12 - length < 4) {
      return absl::DataLossError(absl::StrCat(where, ": the file ends inside its ", length, "-byte data"));
    }
    const std::string_view data = all.substr(at + 12, length);
    if (MaskCrc32c(Crc32c(data)) != ReadLittleEndian(all.substr(at + 12 + length, 4))) {
      return absl::DataLossError(absl::StrCat(where, ": data checksum mismatch"));
    }
    records.emplace_back(data);
    at += 16 + length;
  }
  return records;
}

}  // namespace lorad::train
