#include "core/optim/optimizer_args.h"

#include <cmath>
#include <cstdlib>
#include <limits>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace lorad::optim {
namespace {

std::string Trim(const std::string& s) { return std::string(absl::StripAsciiWhitespace(s)); }

// Strips one level of Python tuple/list brackets.
std::string Unbracket(std::string s) {
  s = Trim(s);
  if (s.size() >= 2 && ((s.front() == '(' && s.back() == ')') || (s.front() == '[' && s.back() == ']'))) {
    s = Trim(s.substr(1, s.size() - 2));
  }
  return s;
}

// A Python float/int literal, plus "inf"/"float('inf')" which kohya users write for growth_rate.
std::optional<double> ParseNumber(const std::string& raw) {
  std::string s = Trim(raw);
  std::string lower = absl::AsciiStrToLower(s);
  if (lower == "inf" || lower == "float('inf')" || lower == "float(\"inf\")" || lower == "math.inf") {
    return std::numeric_limits<double>::infinity();
  }
  if (s.empty()) return std::nullopt;
  std::string cleaned;
  for (char c : s) {
    if (c != '_') cleaned.push_back(c);  // Python allows 1_000
  }
  char* end = nullptr;
  double v = std::strtod(cleaned.c_str(), &end);
  if (end == cleaned.c_str() || *end != '\0') return std::nullopt;
  // strtod accepts "nan"/"infinity"/hex; Python's literal_eval does not.
  if (std::isnan(v) || lower.find('x') != std::string::npos || lower.find("inf") != std::string::npos) {
    return std::nullopt;
  }
  return v;
}

bool IsNone(const std::string& s) { return Trim(s) == "None" || Trim(s) == "none" || Trim(s) == "null"; }

std::string PythonRepr(const std::string& raw) {
  std::string s = Trim(raw);
  if (s.find(',') != std::string::npos) {
    std::vector<std::string> parts;
    for (absl::string_view piece : absl::StrSplit(Unbracket(s), ',', absl::SkipWhitespace())) {
      parts.push_back(Trim(std::string(piece)));
    }
    return absl::StrCat("(", absl::StrJoin(parts, ", "), ")");
  }
  std::string lower = absl::AsciiStrToLower(s);
  if (lower == "true") return "True";
  if (lower == "false") return "False";
  if (lower == "none" || lower == "null") return "None";
  return s;
}

}  // namespace

absl::StatusOr<OptimizerArgs> OptimizerArgs::Parse(const std::vector<std::string>& args, const std::string& key_name) {
  OptimizerArgs out;
  out.key_name_ = key_name;
  for (const std::string& arg : args) {
    size_t eq = arg.find('=');
    if (eq == std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat(key_name, " entry '", arg, "' is not of the form key=value (e.g. ",
                       key_name == "optimizer_args" ? "weight_decay=0.01" : "gamma=0.9", ")"));
    }
    std::string key = Trim(arg.substr(0, eq));
    std::string value = Trim(arg.substr(eq + 1));
    if (key.empty()) return absl::InvalidArgumentError(absl::StrCat(key_name, " entry '", arg, "' has no key"));
    if (value.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(key_name, " entry '", arg, "' has no value for ", key));
    }
    if (out.values_.count(key)) {
      return absl::InvalidArgumentError(absl::StrCat(key_name, " sets ", key, " twice"));
    }
    out.values_[key] = value;
    out.ordered_.emplace_back(key, value);
  }
  return out;
}

absl::Status OptimizerArgs::CheckKnown(const std::string& optimizer, const std::vector<std::string>& accepted) const {
  std::set<std::string> known(accepted.begin(), accepted.end());
  for (const auto& [key, value] : ordered_) {
    if (key == "lr" && key_name_ == "optimizer_args") {
      return absl::InvalidArgumentError(absl::StrCat(
          "optimizer_args must not set lr for ", optimizer,
          ": the learning rate comes from learning_rate / unet_lr / text_encoder_lr (kohya passes it separately)"));
    }
    if (!known.count(key)) {
      return absl::InvalidArgumentError(absl::StrCat("unknown ", Label(), "'", key, "' for ", optimizer,
                                                     "; accepted: ", absl::StrJoin(accepted, ", ")));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<double> OptimizerArgs::Float(const std::string& key, double fallback) const {
  auto it = values_.find(key);
  if (it == values_.end()) return fallback;
  std::optional<double> v = ParseNumber(it->second);
  if (!v) {
    return absl::InvalidArgumentError(
        absl::StrCat(Label(), key, "=", it->second, " is not a number (e.g. ", key, "=0.01)"));
  }
  return *v;
}

absl::StatusOr<std::optional<double>> OptimizerArgs::OptionalFloat(const std::string& key,
                                                                   std::optional<double> fallback) const {
  auto it = values_.find(key);
  if (it == values_.end()) return fallback;
  if (IsNone(it->second)) return std::optional<double>();
  std::optional<double> v = ParseNumber(it->second);
  if (!v) {
    return absl::InvalidArgumentError(
        absl::StrCat(Label(), key, "=", it->second, " is neither a number nor None"));
  }
  return v;
}

absl::StatusOr<bool> OptimizerArgs::Bool(const std::string& key, bool fallback) const {
  auto it = values_.find(key);
  if (it == values_.end()) return fallback;
  std::string lower = absl::AsciiStrToLower(Trim(it->second));
  if (lower == "true" || lower == "1") return true;
  if (lower == "false" || lower == "0") return false;
  return absl::InvalidArgumentError(
      absl::StrCat(Label(), key, "=", it->second, " is not a boolean (use True or False)"));
}

absl::StatusOr<int64_t> OptimizerArgs::Int(const std::string& key, int64_t fallback) const {
  auto it = values_.find(key);
  if (it == values_.end()) return fallback;
  std::optional<double> v = ParseNumber(it->second);
  if (!v || !std::isfinite(*v) || std::floor(*v) != *v || std::fabs(*v) > 9e15) {
    return absl::InvalidArgumentError(absl::StrCat(Label(), key, "=", it->second, " is not an integer"));
  }
  return static_cast<int64_t>(*v);
}

std::string OptimizerArgs::Label() const {
  return key_name_ == "optimizer_args" ? "optimizer arg " : absl::StrCat(key_name_, " ");
}

absl::StatusOr<std::vector<int64_t>> OptimizerArgs::Ints(const std::string& key) const {
  auto it = values_.find(key);
  if (it == values_.end()) return absl::InvalidArgumentError(absl::StrCat(Label(), key, " is required"));
  std::vector<int64_t> out;
  for (absl::string_view piece : absl::StrSplit(Unbracket(it->second), ',', absl::SkipWhitespace())) {
    std::optional<double> v = ParseNumber(std::string(piece));
    if (!v || !std::isfinite(*v) || std::floor(*v) != *v || std::fabs(*v) > 9e15) {
      return absl::InvalidArgumentError(absl::StrCat(Label(), key, "=", it->second, ": '", std::string(piece),
                                                     "' is not an integer"));
    }
    out.push_back(static_cast<int64_t>(*v));
  }
  return out;
}

absl::StatusOr<std::vector<double>> OptimizerArgs::Floats(const std::string& key, std::vector<double> fallback) const {
  auto it = values_.find(key);
  if (it == values_.end()) return fallback;
  std::vector<double> out;
  for (absl::string_view piece : absl::StrSplit(Unbracket(it->second), ',', absl::SkipWhitespace())) {
    std::optional<double> v = ParseNumber(std::string(piece));
    if (!v) {
      return absl::InvalidArgumentError(absl::StrCat(Label(), key, "=", it->second, ": '",
                                                     std::string(piece), "' is not a number"));
    }
    out.push_back(*v);
  }
  if (out.size() != fallback.size()) {
    return absl::InvalidArgumentError(absl::StrCat(Label(), key, "=", it->second, " needs ",
                                                   fallback.size(), " comma-separated values, got ", out.size()));
  }
  return out;
}

std::vector<std::string> OptimizerArgs::DescribeArgs() const {
  std::vector<std::string> out;
  for (const auto& [key, value] : ordered_) out.push_back(absl::StrCat(key, "=", PythonRepr(value)));
  return out;
}

absl::Status RequireRange(const std::string& optimizer, const std::string& key, double value, double lo,
                          bool lo_inclusive, double hi, bool hi_inclusive) {
  bool ok = !std::isnan(value) && (lo_inclusive ? value >= lo : value > lo) && (hi_inclusive ? value <= hi : value < hi);
  if (ok) return absl::OkStatus();
  std::string range = absl::StrCat(lo_inclusive ? "[" : "(", lo, ", ", hi, hi_inclusive ? "]" : ")");
  return absl::InvalidArgumentError(
      absl::StrCat("invalid ", optimizer, " arg ", key, "=", value, ": must be in ", range));
}

}  // namespace lorad::optim
