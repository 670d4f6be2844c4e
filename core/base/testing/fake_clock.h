// A Clock for tests: time moves only when the test says so. Thread-safe.
#pragma once

#include <atomic>
#include <cstdint>

#include "core/base/clock.h"

namespace lorad::testing {

class FakeClock final : public Clock {
 public:
  explicit FakeClock(int64_t start_unix_ms = 1'700'000'000'000) : now_(start_unix_ms) {}
  int64_t NowUnixMs() const override { return now_.load(); }
  void AdvanceMs(int64_t ms) { now_.fetch_add(ms); }
  void AdvanceMinutes(double minutes) { AdvanceMs(static_cast<int64_t>(minutes * 60'000)); }

 private:
  std::atomic<int64_t> now_;
};

}  // namespace lorad::testing
