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
  // A proxy for the kernels the same step launches on a GPU: ops that do
  // arithmetic or copy data and call no op that does (leaves, or ops that call
  // only views and allocations), and ops that are one
  // kernel or library call on a GPU whatever their CPU version dispatches
  // inside (mm, convolution, softmax, norms, SDPA, _fused_adamw_, _foreach_*),
  // counted once with nothing inside them. Views, shape and metadata ops and
  // bare allocations (t, reshape, detach, empty, a no-op to) launch none.
  int64_t kernels = 0;
  // Outermost op names by count, most frequent first.
  std::vector<std::pair<std::string, int64_t>> by_name;
  // Kernel ops by name, most frequent first.
  std::vector<std::pair<std::string, int64_t>> kernels_by_name;
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
