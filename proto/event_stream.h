// Length-delimited framing of lorad.v1.Event on a file descriptor (a pipe from
// `lorad-train --events-fd N` to the daemon): varint byte length, then the
// serialized message. Protobuf + Abseil only, so the engine and the daemon share it.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "lorad/v1/events.pb.h"

namespace lorad::events {

// Largest event accepted (a config echo is the largest realistic payload).
inline constexpr size_t kMaxEventBytes = 16u << 20;

// Appends the framed `event` (varint length + bytes) to `out`.
void AppendFramed(const lorad::v1::Event& event, std::string* out);

// Writes framed events to a file descriptor it does not own. Each Write is one
// write(2) loop of the whole frame, retried on EINTR and short writes.
// Not thread-safe: one writer per fd (wrap it in a mutex if several threads report).
class EventWriter {
 public:
  explicit EventWriter(int fd) : fd_(fd) {}
  // Stamps time_unix_ms when it is 0, then writes. Fails (e.g. EPIPE when the
  // daemon went away) with a status naming the errno.
  absl::Status Write(lorad::v1::Event event);
  int fd() const { return fd_; }

 private:
  int fd_;
};

// Incremental decoder: feed it bytes as they arrive (non-blocking reads), then
// pull complete events. Not thread-safe.
class EventDecoder {
 public:
  void Append(const char* data, size_t size) { buffer_.append(data, size); }
  // The next complete event; nullopt when more bytes are needed. A frame longer
  // than kMaxEventBytes or one that does not parse is DATA_LOSS (the stream is
  // then unusable: the caller should stop reading it).
  absl::StatusOr<std::optional<lorad::v1::Event>> Next();
  // Bytes buffered but not yet decoded (a partial frame at EOF means truncation).
  size_t pending_bytes() const { return buffer_.size() - consumed_; }

 private:
  std::string buffer_;
  size_t consumed_ = 0;
};

// Blocking reader over an fd it does not own. Next() returns nullopt at a clean
// EOF and DATA_LOSS when the stream ends inside a frame.
class EventReader {
 public:
  explicit EventReader(int fd) : fd_(fd) {}
  absl::StatusOr<std::optional<lorad::v1::Event>> Next();

 private:
  int fd_;
  EventDecoder decoder_;
  bool eof_ = false;
};

}  // namespace lorad::events
