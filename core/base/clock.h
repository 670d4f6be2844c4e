// The one wall clock of lorad: event times, job records and file stamps all
// read it, so a record and the event that reports it agree. Code whose
// arithmetic depends on time (cost accounting, the idle switch) takes a Clock,
// so tests can drive time (core/base/testing/fake_clock.h).
#pragma once

#include <cstdint>

namespace lorad {

// Milliseconds since the Unix epoch (system_clock).
int64_t NowUnixMs();

// A source of wall-clock time. Implementations are thread-safe.
class Clock {
 public:
  virtual ~Clock() = default;
  virtual int64_t NowUnixMs() const = 0;
  // The system clock (lorad::NowUnixMs); never null, lives for the program.
  static const Clock* Real();
};

}  // namespace lorad
