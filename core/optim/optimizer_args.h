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
  // Errors: no '=', empty key, the same key twice. `key_name` is the config
  // key the list came from (optimizer_args, lr_scheduler_args), for messages.
  static absl::StatusOr<OptimizerArgs> Parse(const std::vector<std::string>& args,
                                             const std::string& key_name = "optimizer_args");

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
  // A list of integers of any length ("[10, 20]", "10,20"); the key is required.
  absl::StatusOr<std::vector<int64_t>> Ints(const std::string& key) const;
  // The keys as given, in order.
  std::vector<std::string> Keys() const {
    std::vector<std::string> out;
    for (const auto& kv : ordered_) out.push_back(kv.first);
    return out;
  }

  // "k=v" pieces for kohya's ss_optimizer string, values in Python repr, in the given order.
  std::vector<std::string> DescribeArgs() const;

 private:
  std::string Label() const;  // "optimizer arg " or "<key_name> "

  std::string key_name_ = "optimizer_args";
  std::vector<std::pair<std::string, std::string>> ordered_;
  std::map<std::string, std::string> values_;
};

// Range checks that produce "invalid <optimizer> arg <key>=<value>: must be ..." errors.
absl::Status RequireRange(const std::string& optimizer, const std::string& key, double value, double lo,
                          bool lo_inclusive, double hi, bool hi_inclusive);

}  // namespace lorad::optim
