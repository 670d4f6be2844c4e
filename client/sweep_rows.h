// The sweep table's rows and loss curves from a sweep's jobs and their
// recorded events: pure functions of the messages, shared by `loractl sweep
// show|plot` (client/sweep_view.h, events read over gRPC) and the dashboard
// (server/http_server.h, events read from the daemon's store), so both show
// the same numbers. No gRPC calls here.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "core/planner/loss_stats.h"
#include "core/planner/sweep_table.h"
#include "lorad/v1/lorad.pb.h"

namespace lorad::client {

// The raw per-step loss of a job, in step order (a resumed job's repeated
// steps keep their latest value), and the mean images/s of its progress events.
struct JobCurve {
  planner::LossCurve loss;
  std::optional<double> mean_images_per_s;
};
JobCurve CurveFromEvents(const std::vector<lorad::v1::JobEvent>& events);
JobCurve CurveFromEvents(const std::vector<lorad::v1::Event>& events);

// "learning_rate=1e-4 dataset=cats": the job's varied values, for legends and labels.
std::string VariedLabel(const lorad::v1::Sweep& sweep, const lorad::v1::Job& job);

// The job's row of the morning table (final / min smoothed loss with
// planner::kDefaultLossSmoothing, steps, duration, speed, LoRA path).
planner::SweepTableRow SweepRow(const lorad::v1::Sweep& sweep, const lorad::v1::Job& job, const JobCurve& curve);

}  // namespace lorad::client
