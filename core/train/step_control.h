// The training loop's bookkeeping between optimizer steps, kept out of the
// loop so it reads as an outline: the step report's throughput figures, and
// the decisions to stop (a diverged loss, an fp16 scaler that keeps skipping,
// a cancel or a simulated interrupt). Torch-free; not thread-safe.
#pragma once

#include <cstdint>
#include <optional>

#include "absl/status/status.h"
#include "core/train/observer.h"

namespace lorad::train {

// DATA_LOSS naming the step and epoch when `loss` is NaN or inf (without the
// fp16 loss scaler, which skips such steps itself); OK otherwise.
absl::Status CheckLossFinite(double loss, int64_t step, int64_t epoch);

// Counts fp16 steps the loss scaler skipped in a row: more than
// kMaxConsecutiveSkips means the loss is no longer finite and the run diverged.
class SkipStreak {
 public:
  static constexpr int64_t kMaxConsecutiveSkips = 50;
  // Records one optimizer step at `step` (`scale`: the scaler's scale, for the message).
  absl::Status Record(bool skipped, double scale, int64_t step);

 private:
  int64_t consecutive_ = 0;
};

// Speed and time left for a step report, from what this process has done
// (a resumed run counts from its restart).
struct Throughput {
  double it_per_s = 0;
  double images_per_s = 0;
  double eta_s = 0;
};
Throughput ComputeThroughput(int64_t steps_this_process, int64_t images_this_process, double elapsed_s,
                             int64_t steps_left);

// What the loop does after a step that was not the last one.
enum class StopAction {
  kContinue,
  kStop,           // cancelled without saving a state
  kStopSaveState,  // save a resumable state, then stop
};
// `cancel` may be null. A simulated interrupt (TrainOptions::stop_after_steps)
// always saves a state; a cancel does when it asked for it.
StopAction StopAfterStep(bool last_step, const CancellationToken* cancel, std::optional<int64_t> stop_after_steps,
                         int64_t steps_this_process);

}  // namespace lorad::train
