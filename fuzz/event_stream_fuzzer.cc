// Fuzzes the worker event-pipe decoder: the bytes lorad-train writes to the
// daemon, split into reads at points taken from the input.
#include <cstddef>
#include <algorithm>
#include <cstdint>
#include <string>

#include <google/protobuf/stubs/logging.h>

#include "proto/event_stream.h"

// Invalid UTF-8 in a string field is a parse failure (DATA_LOSS) the decoder
// reports; protobuf's own log line for each would drown the fuzzer's output.
extern "C" int LLVMFuzzerInitialize(int*, char***) {
  google::protobuf::SetLogHandler([](google::protobuf::LogLevel, const char*, int, const std::string&) {});
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  lorad::events::EventDecoder decoder;
  // The first byte sets the read size, as a pipe splits frames anywhere.
  const size_t chunk = 1 + data[0] % 64;
  for (size_t at = 1; at < size; at += chunk) {
    decoder.Append(reinterpret_cast<const char*>(data + at), std::min(chunk, size - at));
    while (true) {
      auto next = decoder.Next();
      if (!next.ok()) return 0;  // DATA_LOSS: the daemon stops reading this stream
      if (!next->has_value()) break;
    }
  }
  return 0;
}
