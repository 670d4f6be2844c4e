// Compact number text shared by the advisor, sweep names and the sweep table.
#pragma once

#include <string>

namespace lorad::planner {

// Integers as integers ("3600"); others in the shorter of %g and scientific
// notation with the exponent's leading zeros dropped ("1e-4", "5e-4",
// "0.25", "6e-5"); "nan"/"inf" as such.
std::string FormatNumber(double value);

}  // namespace lorad::planner
