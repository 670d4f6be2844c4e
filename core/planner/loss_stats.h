// Loss-curve smoothing shared by `loractl sweep show` (final / min smoothed
// loss) and `loractl plot` (client/charts), so table and picture agree.
#pragma once

#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

namespace lorad::planner {

// (step, loss) samples in step order.
using LossCurve = std::vector<std::pair<int64_t, double>>;

// Exponential moving average with TensorBoard's debiasing:
// ema_i = s*ema_{i-1} + (1-s)*x_i, reported as ema_i / (1 - s^(i+1)).
// `smoothing` is clamped to [0, 0.999]; 0 returns the input. Non-finite losses
// (a NaN step) are skipped so one bad step does not poison the curve.
LossCurve SmoothLoss(const LossCurve& curve, double smoothing);

struct LossSummary {
  std::optional<double> final_smoothed;  // last point of the smoothed curve
  std::optional<double> min_smoothed;    // minimum of the smoothed curve
  std::optional<int64_t> last_step;
};
// Summarises a raw curve after smoothing; all fields empty for an empty curve.
LossSummary SummarizeLoss(const LossCurve& curve, double smoothing);

// The smoothing `loractl sweep show` and `loractl plot` use by default.
inline constexpr double kDefaultLossSmoothing = 0.9;

}  // namespace lorad::planner
