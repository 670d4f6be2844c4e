// Counts the ATen operators dispatched while an OpCounter is alive, on every
// thread (autograd's backward threads too), through a global
// at::RecordFunction callback. Counting costs time: measure speed without one.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <ATen/record_function.h>

namespace lorad::bench {

struct OpCounts {
  int64_t all = 0;        // every ATen op, nested ones (linear -> addmm) included
  int64_t outermost = 0;  // ops not called from inside another ATen op
  // Outermost op names by count, most frequent first.
  std::vector<std::pair<std::string, int64_t>> by_name;
};

// One at a time per process. Not copyable; removes its callback when destroyed.
class OpCounter {
 public:
  OpCounter();
  ~OpCounter();
  OpCounter(const OpCounter&) = delete;
  OpCounter& operator=(const OpCounter&) = delete;

  // Counts since construction (or the last Reset).
  OpCounts Take() const;
  void Reset();

 private:
  at::CallbackHandle handle_;
};

}  // namespace lorad::bench
