// kohya-style optimizer_args ("key=value" strings, values as Python literals)
// parsed into typed, validated settings. Internal to core/optim.
#pragma once

#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace lorad::optim {

class OptimizerArgs {
 public:
  // Splits each "key=value" (keys case-sensitive as in Python kwargs).
  // Errors: no '=', empty key, the same key twice.
  static absl::StatusOr<OptimizerArgs> Parse(const std::vector<std::string>& args);

  // Fails when a key is not in `accepted` for `optimizer`; the error lists the accepted keys.
  absl::Status CheckKnown(const std::string& optimizer, const std::vector<std::string>& accepted) const;

  bool Has(const std::string& key) const { return values_.count(key) > 0; }
  // Python-literal readers; `fallback` when the key is absent. Errors name the key.
  absl::StatusOr<double> Float(const std::string& key, double fallback) const;
  absl::StatusOr<std::optional<double>> OptionalFloat(const std::string& key, std::optional<double> fallback) const;
  absl::StatusOr<bool> Bool(const std::string& key, bool fallback) const;
  absl::StatusOr<int64_t> Int(const std::string& key, int64_t fallback) const;
  // A tuple of exactly `size` floats ("0.9,0.999", "(0.9, 0.999)", "[0.9,0.999]").
  absl::StatusOr<std::vector<double>> Floats(const std::string& key, std::vector<double> fallback) const;

  // "k=v" pieces for kohya's ss_optimizer string, values in Python repr, in the given order.
  std::vector<std::string> DescribeArgs() const;

 private:
  std::vector<std::pair<std::string, std::string>> ordered_;
  std::map<std::string, std::string> values_;
};

// Range checks that produce "invalid <optimizer> arg <key>=<value>: must be ..." errors.
absl::Status RequireRange(const std::string& optimizer, const std::string& key, double value, double lo,
                          bool lo_inclusive, double hi, bool hi_inclusive);

}  // namespace lorad::optim
