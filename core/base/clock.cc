#include "core/base/clock.h"

#include <chrono>

namespace lorad {

int64_t NowUnixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

namespace {

class SystemClock final : public Clock {
 public:
  int64_t NowUnixMs() const override { return lorad::NowUnixMs(); }
};

}  // namespace

const Clock* Clock::Real() {
  static const SystemClock* const clock = new SystemClock();
  return clock;
}

}  // namespace lorad
