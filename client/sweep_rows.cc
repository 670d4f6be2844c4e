#include "client/sweep_rows.h"

#include <map>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "core/planner/number_format.h"

namespace lorad::client {
namespace {

// A varied value as the sweep named it: lorad-train re-records the job's
// hyperparameters as C++ writes them ("5e-04"), so numbers are shown in the
// sweep's compact form ("5e-4") again.
std::string VariedValue(const lorad::v1::Job& job, const std::string& key) {
  auto it = job.hyperparameters().find(key);
  if (it == job.hyperparameters().end()) return "";
  double number = 0;
  if (key != "dataset" && it->second.find_first_of(".eE") != std::string::npos &&
      absl::SimpleAtod(it->second, &number)) {
    return planner::FormatNumber(number);
  }
  return it->second;
}

}  // namespace

JobCurve CurveFromEvents(const std::vector<lorad::v1::Event>& events) {
  std::map<int64_t, double> by_step;
  double speed_sum = 0;
  int speed_count = 0;
  for (const auto& e : events) {
    if (!e.has_progress()) continue;
    const auto& p = e.progress();
    by_step[p.step()] = p.loss();
    if (p.images_per_s() > 0) {
      speed_sum += p.images_per_s();
      ++speed_count;
    }
  }
  JobCurve curve;
  curve.loss.assign(by_step.begin(), by_step.end());
  if (speed_count > 0) curve.mean_images_per_s = speed_sum / speed_count;
  return curve;
}

JobCurve CurveFromEvents(const std::vector<lorad::v1::JobEvent>& events) {
  std::vector<lorad::v1::Event> plain;
  plain.reserve(events.size());
  for (const auto& e : events) plain.push_back(e.event());
  return CurveFromEvents(plain);
}

std::string VariedLabel(const lorad::v1::Sweep& sweep, const lorad::v1::Job& job) {
  std::string label;
  for (const auto& key : sweep.varied_keys()) {
    absl::StrAppend(&label, label.empty() ? "" : " ", key, "=", VariedValue(job, key));
  }
  return label.empty() ? job.name() : label;
}

planner::SweepTableRow SweepRow(const lorad::v1::Sweep& sweep, const lorad::v1::Job& job, const JobCurve& curve) {
  const planner::LossSummary summary = planner::SummarizeLoss(curve.loss, planner::kDefaultLossSmoothing);
  planner::SweepTableRow row;
  row.job_id = std::to_string(job.id());
  row.name = job.name();
  for (const auto& key : sweep.varied_keys()) row.varied.emplace_back(key, VariedValue(job, key));
  std::string state = lorad::v1::JobState_Name(job.state());
  row.state = state.rfind("JOB_STATE_", 0) == 0 ? state.substr(10) : state;
  row.final_smoothed_loss = summary.final_smoothed;
  row.min_smoothed_loss = summary.min_smoothed;
  row.steps = job.step();
  if (job.total_steps() > 0) row.total_steps = job.total_steps();
  if (job.started_unix_ms() > 0 && job.finished_unix_ms() >= job.started_unix_ms()) {
    row.duration_s = (job.finished_unix_ms() - job.started_unix_ms()) / 1000.0;
  }
  row.images_per_s = curve.mean_images_per_s;
  row.lora_path = job.final_lora_path();
  return row;
}

}  // namespace lorad::client
