#include "proto/event_stream.h"

#include <errno.h>
#include <unistd.h>

#include <chrono>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "core/base/clock.h"

namespace lorad::events {
namespace {

void AppendVarint(uint64_t value, std::string* out) {
  while (value >= 0x80) {
    out->push_back(static_cast<char>((value & 0x7f) | 0x80));
    value >>= 7;
  }
  out->push_back(static_cast<char>(value));
}

// Parses a varint at data[0..size). Returns bytes used, 0 if incomplete, -1 if malformed.
int ParseVarint(const char* data, size_t size, uint64_t* value) {
  uint64_t result = 0;
  for (size_t i = 0; i < size && i < 10; ++i) {
    const auto byte = static_cast<uint8_t>(data[i]);
    result |= static_cast<uint64_t>(byte & 0x7f) << (7 * i);
    if ((byte & 0x80) == 0) {
      *value = result;
      return static_cast<int>(i + 1);
    }
  }
  return size >= 10 ? -1 : 0;
}

}  // namespace

void AppendFramed(const lorad::v1::Event& event, std::string* out) {
  const std::string bytes = event.SerializeAsString();
  AppendVarint(bytes.size(), out);
  out->append(bytes);
}

absl::Status EventWriter::Write(lorad::v1::Event event) {
  if (event.time_unix_ms() == 0) event.set_time_unix_ms(NowUnixMs());
  std::string frame;
  AppendFramed(event, &frame);
  size_t written = 0;
  while (written < frame.size()) {
    const ssize_t n = ::write(fd_, frame.data() + written, frame.size() - written);
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::UnavailableError(absl::StrCat("writing event to fd ", fd_, ": ",
                                                 std::strerror(errno)));
    }
    written += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::optional<lorad::v1::Event>> EventDecoder::Next() {
  const char* data = buffer_.data() + consumed_;
  const size_t size = buffer_.size() - consumed_;
  uint64_t length = 0;
  const int header = ParseVarint(data, size, &length);
  if (header < 0) return absl::DataLossError("event stream: malformed length prefix");
  if (header == 0) return std::nullopt;
  if (length > kMaxEventBytes) {
    return absl::DataLossError(absl::StrCat("event stream: frame of ", length,
                                            " bytes exceeds the ", kMaxEventBytes,
                                            "-byte limit (corrupt stream?)"));
  }
  if (size - header < length) return std::nullopt;
  lorad::v1::Event event;
  if (!event.ParseFromArray(data + header, static_cast<int>(length))) {
    return absl::DataLossError(
        absl::StrCat("event stream: a ", length, "-byte frame does not parse as lorad.v1.Event"));
  }
  consumed_ += header + length;
  // Compact once the consumed prefix dominates, keeping appends amortised O(1).
  if (consumed_ > 4096 && consumed_ * 2 > buffer_.size()) {
    buffer_.erase(0, consumed_);
    consumed_ = 0;
  }
  return event;
}

absl::StatusOr<std::optional<lorad::v1::Event>> EventReader::Next() {
  char chunk[16384];
  while (true) {
    auto next = decoder_.Next();
    if (!next.ok() || next->has_value()) return next;
    if (eof_) {
      if (decoder_.pending_bytes() > 0) {
        return absl::DataLossError(absl::StrCat("event stream ended inside a frame (",
                                                decoder_.pending_bytes(), " bytes left)"));
      }
      return std::nullopt;
    }
    const ssize_t n = ::read(fd_, chunk, sizeof(chunk));
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::UnavailableError(absl::StrCat("reading events from fd ", fd_, ": ",
                                                 std::strerror(errno)));
    }
    if (n == 0) {
      eof_ = true;
    } else {
      decoder_.Append(chunk, static_cast<size_t>(n));
    }
  }
}

}  // namespace lorad::events
