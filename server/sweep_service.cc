// LoradService's sweep RPCs: a sweep file expands (core/planner/sweep.h) into
// jobs that each go through SubmitJob's path, so path confinement, the
// trainer's config check, idempotency and the advisor apply to every one.
#include <algorithm>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/planner/sweep.h"
#include "core/base/clock.h"
#include "core/config/config.h"
#include "server/advice.h"
#include "server/service.h"
#include "server/status_util.h"
#include "spdlog/spdlog.h"

namespace lorad::server {
namespace {

// Whether the trainer would read `key` from this config (top level or a
// section). A config it cannot read is reported by PrepareSubmit.
bool ConfigSetsKey(const std::string& config_toml, const std::string& key) {
  const auto config = train::ParseTrainOptions(config_toml, {});
  return config.ok() && config->explicitly_set.contains(key);
}

}  // namespace

grpc::ServerUnaryReactor* LoradService::SubmitSweep(grpc::CallbackServerContext* ctx,
                                                    const lorad::v1::SubmitSweepRequest* request,
                                                    lorad::v1::Sweep* response) {
  if (auto s = Authorize(ctx); !s.ok()) return Reply(ctx, s);
  const std::map<std::string, std::string> labels(request->dataset_labels().begin(),
                                                  request->dataset_labels().end());
  auto plan = planner::ParseSweep(request->sweep_toml(), labels);
  if (!plan.ok()) return Reply(ctx, ToGrpcStatus(plan.status()));
  const std::string name =
      request->name().empty() ? absl::StrCat("sweep-", NowUnixMs()) : request->name();
  if (name.find('/') != std::string::npos) {
    return Reply(ctx, grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                   absl::StrCat("sweep name '", name, "' must not contain '/'")));
  }

  // Until every job is recorded: no dataset a job names may be deleted meanwhile.
  absl::ReaderMutexLock datasets_lock(&datasets_mu_);
  // Validate every job first: a "never" finding refuses the whole sweep before
  // anything is queued; any other bad job is reported and the rest still run.
  std::vector<PendingSubmit> pending;
  std::vector<std::string> errors;
  std::vector<std::string> refusals;
  for (const auto& job : plan->jobs) {
    lorad::v1::SubmitJobRequest one;
    one.set_config_toml(job.config_toml);
    one.set_dataset(job.dataset);
    one.set_name(absl::StrCat(name, "/", job.name));
    one.set_priority(request->priority());
    one.set_sweep(name);
    one.set_force(request->force());
    if (!request->request_id().empty()) one.set_request_id(absl::StrCat(request->request_id(), "/", job.name));
    for (const auto& [key, value] : job.varied) (*one.mutable_sweep_values())[key] = value;
    // Jobs sharing a dataset and base model share one on-disk latent cache
    // (the scheduler links it per (dataset, model)); keep an explicit choice.
    if (!ConfigSetsKey(job.config_toml, "cache_latents")) {
      (*one.mutable_overrides())["cache_latents"] = "true";
      (*one.mutable_overrides())["cache_latents_to_disk"] = "true";
    }
    auto prepared = PrepareSubmit(one);
    if (!prepared.ok()) {
      errors.push_back(absl::StrCat(job.name, ": ", prepared.status().message()));
      continue;
    }
    if (prepared->advice.blocking()) {
      refusals.push_back(absl::StrCat(job.name, ": ", DescribeNeverFindings(prepared->advice)));
    }
    pending.push_back(std::move(*prepared));
  }
  if (!refusals.empty()) {
    std::string text;
    for (const auto& r : refusals) absl::StrAppend(&text, "\n  ", r);
    return Reply(ctx, grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                                   absl::StrCat("sweep refused by the advisor (pass --force to run anyway):",
                                                text)));
  }
  if (pending.empty()) {
    std::string text;
    for (const auto& e : errors) absl::StrAppend(&text, "\n  ", e);
    return Reply(ctx, grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                   absl::StrCat("no job of the sweep can be queued:", text)));
  }

  storage::SweepRecord record;
  record.name = name;
  record.mode = plan->mode == planner::SweepMode::kZip ? "zip" : "grid";
  record.varied_keys = plan->varied_keys;
  auto sweep = store_->CreateSweep(record, !request->request_id().empty());
  if (!sweep.ok()) return Reply(ctx, ToGrpcStatus(sweep.status()));
  // Record every job before any starts, so the sweep's "all done" webhook
  // cannot fire while some of its jobs are still being recorded.
  for (const auto& one : pending) {
    auto job = CommitSubmit(one, /*defer_dispatch=*/true);
    if (!job.ok()) errors.push_back(absl::StrCat(one.spec.name, ": ", job.status().message()));
  }
  scheduler_->NotifyQueued();
  spdlog::info("sweep {} '{}': {} job(s) prepared, {} error(s)", sweep->id, name, pending.size(),
               errors.size());
  auto proto = SweepProto(*sweep, true);
  if (!proto.ok()) return Reply(ctx, ToGrpcStatus(proto.status()));
  *response = std::move(*proto);
  for (const auto& e : errors) response->add_submit_errors(e);
  return Reply(ctx, grpc::Status::OK);
}

absl::StatusOr<lorad::v1::Sweep> LoradService::SweepProto(const storage::SweepRecord& sweep, bool with_jobs) {
  lorad::v1::Sweep out;
  out.set_id(sweep.id);
  out.set_name(sweep.name);
  out.set_created_unix_ms(sweep.created_ms);
  out.set_mode(sweep.mode);
  for (const auto& key : sweep.varied_keys) out.add_varied_keys(key);
  storage::JobFilter filter;
  filter.sweep = sweep.name;
  filter.page_size = 1000;
  std::vector<storage::JobRecord> jobs;
  while (true) {
    auto page = store_->ListJobs(filter);
    if (!page.ok()) return page.status();
    jobs.insert(jobs.end(), page->jobs.begin(), page->jobs.end());
    if (page->next_before_id <= 0) break;
    filter.before_id = page->next_before_id;
  }
  // Oldest first: the sweep file's order.
  std::sort(jobs.begin(), jobs.end(), [](const auto& a, const auto& b) { return a.id < b.id; });
  storage::Usage usage;
  for (const auto& job : jobs) {
    usage += job.usage;
    switch (job.state) {
      case storage::JobState::kSucceeded: out.set_jobs_succeeded(out.jobs_succeeded() + 1); break;
      case storage::JobState::kFailed: out.set_jobs_failed(out.jobs_failed() + 1); break;
      case storage::JobState::kCancelled: out.set_jobs_cancelled(out.jobs_cancelled() + 1); break;
      default: out.set_jobs_active(out.jobs_active() + 1); break;
    }
    if (!with_jobs) continue;
    auto* proto = out.add_jobs();
    ToProto(job, proto);
    auto hp = store_->GetHyperparameters(job.id);
    if (hp.ok()) proto->mutable_hyperparameters()->insert(hp->begin(), hp->end());
  }
  out.set_jobs_total(static_cast<int32_t>(jobs.size()));
  out.set_gpu_seconds(usage.gpu_seconds);
  out.set_cost(usage.cost);
  return out;
}

grpc::ServerUnaryReactor* LoradService::GetSweep(grpc::CallbackServerContext* ctx,
                                                 const lorad::v1::GetSweepRequest* request,
                                                 lorad::v1::Sweep* response) {
  if (auto s = Authorize(ctx); !s.ok()) return Reply(ctx, s);
  auto proto = QuerySweep(request->sweep_id(), request->name());
  if (!proto.ok()) return Reply(ctx, ToGrpcStatus(proto.status()));
  *response = std::move(*proto);
  return Reply(ctx, grpc::Status::OK);
}

absl::StatusOr<lorad::v1::Sweep> LoradService::QuerySweep(int64_t sweep_id, const std::string& name) {
  auto sweep = sweep_id != 0 ? store_->GetSweep(sweep_id) : store_->GetSweepByName(name);
  if (!sweep.ok()) return sweep.status();
  return SweepProto(*sweep, true);
}

grpc::ServerUnaryReactor* LoradService::ListSweeps(grpc::CallbackServerContext* ctx,
                                                   const lorad::v1::ListSweepsRequest*,
                                                   lorad::v1::ListSweepsResponse* response) {
  if (auto s = Authorize(ctx); !s.ok()) return Reply(ctx, s);
  auto sweeps = QuerySweeps();
  if (!sweeps.ok()) return Reply(ctx, ToGrpcStatus(sweeps.status()));
  *response = std::move(*sweeps);
  return Reply(ctx, grpc::Status::OK);
}

absl::StatusOr<lorad::v1::ListSweepsResponse> LoradService::QuerySweeps() {
  auto sweeps = store_->ListSweeps();
  if (!sweeps.ok()) return sweeps.status();
  lorad::v1::ListSweepsResponse out;
  for (const auto& sweep : *sweeps) {
    auto proto = SweepProto(sweep, false);
    if (!proto.ok()) return proto.status();
    *out.add_sweeps() = std::move(*proto);
  }
  return out;
}

grpc::ServerUnaryReactor* LoradService::CancelSweep(grpc::CallbackServerContext* ctx,
                                                    const lorad::v1::CancelSweepRequest* request,
                                                    lorad::v1::Sweep* response) {
  if (auto s = Authorize(ctx); !s.ok()) return Reply(ctx, s);
  auto sweep = store_->GetSweep(request->sweep_id());
  if (!sweep.ok()) return Reply(ctx, ToGrpcStatus(sweep.status()));
  auto before = SweepProto(*sweep, true);
  if (!before.ok()) return Reply(ctx, ToGrpcStatus(before.status()));
  const std::string reason =
      request->reason().empty() ? absl::StrCat("sweep ", sweep->name, " cancelled") : request->reason();
  for (const auto& job : before->jobs()) {
    if (job.state() != lorad::v1::JOB_STATE_QUEUED && job.state() != lorad::v1::JOB_STATE_RUNNING) continue;
    if (auto cancelled = CancelOne(job.id(), reason); !cancelled.ok()) {
      spdlog::warn("sweep {}: cannot cancel job {}: {}", sweep->id, job.id(), cancelled.status().ToString());
    }
  }
  auto after = SweepProto(*sweep, true);
  if (!after.ok()) return Reply(ctx, ToGrpcStatus(after.status()));
  *response = std::move(*after);
  return Reply(ctx, grpc::Status::OK);
}

}  // namespace lorad::server
