// A small deterministic random generator (splitmix64) with portable shuffling,
// so epoch orders, flips, crops and caption shuffles are identical on every
// platform and standard library (std::shuffle and std distributions are not).
#pragma once

#include <cstdint>
#include <initializer_list>
#include <utility>
#include <vector>

namespace lorad::data {

class DeterministicRng {
 public:
  explicit DeterministicRng(uint64_t seed) : state_(seed) {}
  // A generator for a stream identified by several keys (seed, epoch, index...).
  static DeterministicRng ForKeys(std::initializer_list<uint64_t> keys) {
    uint64_t s = 0x9E3779B97F4A7C15ull;
    for (uint64_t k : keys) {
      DeterministicRng mix(s ^ k);
      s = mix.NextU64();
    }
    return DeterministicRng(s);
  }

  uint64_t NextU64() {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  // Uniform in [0, 1) with 53 random bits.
  double Uniform() { return static_cast<double>(NextU64() >> 11) * 0x1.0p-53; }
  // Uniform integer in [0, n); n > 0. Rejection keeps it unbiased.
  uint64_t Below(uint64_t n) {
    const uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t x;
    do {
      x = NextU64();
    } while (x >= limit);
    return x % n;
  }
  template <typename T>
  void Shuffle(std::vector<T>& v) {
    for (size_t i = v.size(); i > 1; --i) {
      const size_t j = static_cast<size_t>(Below(i));
      std::swap(v[i - 1], v[j]);
    }
  }

 private:
  uint64_t state_;
};

}  // namespace lorad::data
