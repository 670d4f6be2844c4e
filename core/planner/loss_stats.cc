#include "core/planner/loss_stats.h"

#include <algorithm>
#include <cmath>

namespace lorad::planner {

LossCurve SmoothLoss(const LossCurve& curve, double smoothing) {
  const double s = std::clamp(smoothing, 0.0, 0.999);
  LossCurve out;
  out.reserve(curve.size());
  double ema = 0.0;
  double weight = 0.0;  // 1 - s^n: the debiasing denominator
  for (const auto& [step, loss] : curve) {
    if (!std::isfinite(loss)) continue;
    ema = s * ema + (1.0 - s) * loss;
    weight = s * weight + (1.0 - s);
    out.emplace_back(step, ema / weight);
  }
  return out;
}

LossSummary SummarizeLoss(const LossCurve& curve, double smoothing) {
  LossSummary summary;
  const LossCurve smoothed = SmoothLoss(curve, smoothing);
  if (smoothed.empty()) return summary;
  summary.final_smoothed = smoothed.back().second;
  summary.last_step = smoothed.back().first;
  double minimum = smoothed.front().second;
  for (const auto& point : smoothed) minimum = std::min(minimum, point.second);
  summary.min_smoothed = minimum;
  return summary;
}

}  // namespace lorad::planner
