#include "server/completion_notifier.h"

#include "spdlog/spdlog.h"

namespace lorad::server {

void CompletionNotifier::OnJobFinished(int64_t job_id) {
  auto job = store_->GetJob(job_id);
  if (!job.ok()) {
    spdlog::warn("webhook: job {} not found: {}", job_id, job.status().ToString());
    return;
  }
  if (!storage::IsTerminal(job->state)) return;
  notify::NotifyEvent event;
  event.kind = notify::EventKind::kJob;
  event.id = std::to_string(job->id);
  event.name = job->name;
  event.state = storage::JobStateName(job->state);
  event.reason = job->reason;
  if (job->step > 0) event.final_loss = job->loss;
  event.lora_path = job->final_lora_path;
  event.gpu_seconds = job->usage.gpu_seconds;
  if (priced_) event.cost = job->usage.cost;
  if (!job->sweep.empty()) {
    auto sweep = store_->GetSweepByName(job->sweep);
    if (sweep.ok()) event.sweep_id = std::to_string(sweep->id);
  }
  notifier_->Notify(event);
  if (!job->sweep.empty()) MaybeNotifySweep(job->sweep);
}

void CompletionNotifier::MaybeNotifySweep(const std::string& sweep_name) {
  auto sweep = store_->GetSweepByName(sweep_name);
  if (!sweep.ok()) return;
  storage::JobFilter filter;
  filter.sweep = sweep_name;
  filter.page_size = 1000;
  notify::NotifyEvent event;
  event.kind = notify::EventKind::kSweep;
  event.id = std::to_string(sweep->id);
  event.name = sweep->name;
  storage::Usage usage;
  while (true) {
    auto page = store_->ListJobs(filter);
    if (!page.ok()) return;
    for (const auto& job : page->jobs) {
      if (!storage::IsTerminal(job.state)) return;  // not the last one yet
      ++event.jobs_total;
      event.jobs_succeeded += job.state == storage::JobState::kSucceeded ? 1 : 0;
      event.jobs_failed += job.state == storage::JobState::kFailed ? 1 : 0;
      usage += job.usage;
    }
    if (page->next_before_id <= 0) break;
    filter.before_id = page->next_before_id;
  }
  {
    absl::MutexLock lock(&mu_);
    int64_t& notified = sweeps_notified_[sweep_name];
    if (notified >= event.jobs_total) return;
    notified = event.jobs_total;
  }
  event.gpu_seconds = usage.gpu_seconds;
  if (priced_) event.cost = usage.cost;
  event.state = event.jobs_succeeded == event.jobs_total ? "SUCCEEDED"
                : event.jobs_succeeded > 0               ? "PARTIAL"
                : event.jobs_failed > 0                  ? "FAILED"
                                                         : "CANCELLED";
  notifier_->Notify(event);
}

}  // namespace lorad::server
