// TFRecord files, the container of TensorBoard event files: each record is
//   uint64 length (little-endian) | uint32 masked CRC-32C of those 8 bytes |
//   data | uint32 masked CRC-32C of the data.
// The format as TensorFlow's record_writer / TensorBoard's
// tensorboard/summary/writer/record_writer.py define it. Torch-free.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace lorad::train {

// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78) of `data`, continuing
// from `crc` (0 for a new checksum), as RFC 3720 (iSCSI) defines it.
uint32_t Crc32c(std::string_view data, uint32_t crc = 0);

// TFRecord's masked CRC: ((crc >> 15) | (crc << 17)) + 0xa282ead8, in 32 bits.
uint32_t MaskCrc32c(uint32_t crc);

// The framed record of `data` (16 bytes longer than it).
std::string FrameRecord(std::string_view data);

// Every record's data in a TFRecord file, in order, both checksums verified.
// DATA_LOSS names the record and offset at a checksum mismatch or when the
// file ends inside a record (a writer killed mid-write).
absl::StatusOr<std::vector<std::string>> ReadRecords(const std::filesystem::path& path);

}  // namespace lorad::train
