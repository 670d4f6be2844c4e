#include "core/planner/number_format.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace lorad::planner {
namespace {

// "6e-05" -> "6e-5", "1e+03" -> "1e3".
std::string CompactExponent(std::string text) {
  const size_t e = text.find('e');
  if (e == std::string::npos) return text;
  std::string mantissa = text.substr(0, e);
  std::string exponent = text.substr(e + 1);
  std::string sign;
  if (!exponent.empty() && (exponent[0] == '+' || exponent[0] == '-')) {
    if (exponent[0] == '-') sign = "-";
    exponent.erase(0, 1);
  }
  while (exponent.size() > 1 && exponent[0] == '0') exponent.erase(0, 1);
  return mantissa + "e" + sign + exponent;
}

std::string Printf(const char* format, double value) {
  char buffer[64];
  std::snprintf(buffer, sizeof(buffer), format, value);
  return buffer;
}

}  // namespace

std::string FormatNumber(double value) {
  if (std::isnan(value)) return "nan";
  if (std::isinf(value)) return value > 0 ? "inf" : "-inf";
  if (value == std::floor(value) && std::fabs(value) < 1e15) {
    return Printf("%.0f", value);
  }
  std::string general = CompactExponent(Printf("%.6g", value));
  // Shortest round-trippable-enough scientific form (up to 6 significant digits).
  std::string scientific;
  for (int digits = 0; digits <= 5; ++digits) {
    char format[16];
    std::snprintf(format, sizeof(format), "%%.%de", digits);
    scientific = Printf(format, value);
    if (std::fabs(std::strtod(scientific.c_str(), nullptr) - value) <= std::fabs(value) * 1e-9) break;
  }
  scientific = CompactExponent(scientific);
  return scientific.size() < general.size() ? scientific : general;
}

}  // namespace lorad::planner
