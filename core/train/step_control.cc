#include "core/train/step_control.h"

#include <cmath>

#include "absl/strings/str_format.h"

namespace lorad::train {

absl::Status CheckLossFinite(double loss, int64_t step, int64_t epoch) {
  if (std::isfinite(loss)) return absl::OkStatus();
  return absl::DataLossError(absl::StrFormat(
      "loss became %s at step %d (epoch %d): training diverged; lower learning_rate or use mixed_precision=bf16",
      std::isnan(loss) ? "NaN" : "inf", step, epoch));
}

absl::Status SkipStreak::Record(bool skipped, double scale, int64_t step) {
  if (!skipped) {
    consecutive_ = 0;
    return absl::OkStatus();
  }
  if (++consecutive_ <= kMaxConsecutiveSkips) return absl::OkStatus();
  return absl::DataLossError(absl::StrFormat(
      "the fp16 loss scaler skipped %d steps in a row (scale %.3g) at step %d: the loss is not finite; training "
      "diverged",
      kMaxConsecutiveSkips, scale, step));
}

Throughput ComputeThroughput(int64_t steps_this_process, int64_t images_this_process, double elapsed_s,
                             int64_t steps_left) {
  Throughput t;
  t.it_per_s = elapsed_s > 0 ? steps_this_process / elapsed_s : 0;
  t.images_per_s = elapsed_s > 0 ? images_this_process / elapsed_s : 0;
  t.eta_s = t.it_per_s > 0 ? steps_left / t.it_per_s : 0;
  return t;
}

StopAction StopAfterStep(bool last_step, const CancellationToken* cancel, std::optional<int64_t> stop_after_steps,
                         int64_t steps_this_process) {
  if (last_step) return StopAction::kContinue;
  const bool simulated_stop = stop_after_steps && steps_this_process >= *stop_after_steps;
  if (simulated_stop) return StopAction::kStopSaveState;
  if (cancel == nullptr || !cancel->cancelled()) return StopAction::kContinue;
  return cancel->save_state_requested() ? StopAction::kStopSaveState : StopAction::kStop;
}

}  // namespace lorad::train
