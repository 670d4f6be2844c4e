// The one wall clock of lorad: event times, job records and file stamps all
// read it, so a record and the event that reports it agree.
#pragma once

#include <cstdint>

namespace lorad {

// Milliseconds since the Unix epoch (system_clock).
int64_t NowUnixMs();

}  // namespace lorad
