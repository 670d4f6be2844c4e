#include "server/service.h"

#include <atomic>
#include <filesystem>
#include <fstream>
#include <functional>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "core/base/clock.h"
#include "core/base/subprocess.h"
#include "server/advice.h"
#include "server/dataset_delete.h"
#include "server/dataset_tag.h"
#include "server/dataset_upload.h"
#include "server/job_config.h"
#include "server/paths.h"
#include "server/auth.h"
#include "server/server_info.h"
#include "server/usage_info.h"
#include "server/status_util.h"
#include "server/stream_reactors.h"
#include "spdlog/spdlog.h"

namespace lorad::server {
namespace {
namespace fs = std::filesystem;

void ToProto(const storage::ArtifactRecord& a, lorad::v1::Artifact* out) {
  out->set_id(a.id);
  out->set_job_id(a.job_id);
  out->set_kind(a.kind);
  out->set_name(a.name);
  out->set_bytes(a.bytes);
  out->set_sha256(a.sha256);
  out->set_step(a.step);
  out->set_created_unix_ms(a.created_ms);
  out->set_is_directory(a.is_directory);
  out->set_is_final(a.is_final);
}

// `lorad-curate --json` on `folder`: the report, or UNAVAILABLE with its
// stderr (also written to `stderr_log`), or CANCELLED once `should_stop`.
absl::StatusOr<std::string> CurationReport(const std::string& binary, const std::string& folder,
                                           const fs::path& stderr_log, std::function<bool()> should_stop) {
  if (should_stop()) return absl::CancelledError("the client went away before the report started");
  // kohya's default caption extension is .caption; most datasets use .txt.
  std::error_code ec;
  int txt = 0, caption = 0;
  for (auto it = fs::recursive_directory_iterator(folder, ec); !ec && it != fs::end(it); it.increment(ec)) {
    txt += it->path().extension() == ".txt" ? 1 : 0;
    caption += it->path().extension() == ".caption" ? 1 : 0;
  }
  SubprocessOptions options;
  options.argv = {binary, folder, "--json"};
  if (txt > caption) options.argv.insert(options.argv.end(), {"--caption-extension", ".txt"});
  options.should_stop = std::move(should_stop);
  auto run = RunSubprocess(options);
  if (!run.ok()) {
    if (run.status().code() == absl::StatusCode::kCancelled) return run.status();
    return absl::UnavailableError(absl::StrCat("curation report failed: ", run.status().message()));
  }
  std::ofstream(stderr_log) << run->stderr_tail;
  if (!run->succeeded()) {
    return absl::UnavailableError(absl::StrCat("curation report failed (", binary, ", ", run->Describe(),
                                               "): ", run->stderr_tail.substr(
                                                   run->stderr_tail.size() - std::min<size_t>(2000, run->stderr_tail.size()))));
  }
  return std::move(run->stdout_text);
}

std::string JobName(const lorad::v1::SubmitJobRequest& request) {
  if (!request.name().empty()) return request.name();
  return "job";
}

}  // namespace

void ToProto(const storage::JobRecord& job, lorad::v1::Job* out) {
  out->set_id(job.id);
  out->set_name(job.name);
  out->set_state(static_cast<lorad::v1::JobState>(job.state));
  out->set_priority(job.priority);
  out->set_request_id(job.request_id);
  out->set_sweep(job.sweep);
  out->set_dataset(job.dataset);
  out->set_config_toml(job.config_toml);
  out->set_dataset_config_toml(job.dataset_config_toml);
  out->set_created_unix_ms(job.created_ms);
  out->set_started_unix_ms(job.started_ms);
  out->set_finished_unix_ms(job.finished_ms);
  out->set_step(job.step);
  out->set_total_steps(job.total_steps);
  out->set_loss(job.loss);
  out->set_reason(job.reason);
  out->set_exit_code(job.exit_code);
  out->set_term_signal(job.term_signal);
  out->set_slot(job.slot);
  out->set_attempts(job.attempts);
  out->set_last_seq(job.last_seq);
  out->set_final_lora_path(job.final_lora_path);
  out->set_resumed_from_step(job.resumed_from_step);
  out->set_cancel_requested(job.cancel_requested);
  out->set_gpu_seconds(job.usage.gpu_seconds);
  out->set_cost(job.usage.cost);
}

LoradService::LoradService(const ServerConfig* config, storage::JobStore* store, EventHub* hub,
                           Scheduler* scheduler, std::vector<GpuInfo> gpus)
    : config_(config),
      store_(store),
      hub_(hub),
      scheduler_(scheduler),
      gpus_(std::move(gpus)),
      started_(std::chrono::steady_clock::now()),
      upload_budget_(config->max_upload_bytes, config->min_free_bytes, config->data_dir) {}

void LoradService::Shutdown() {
  curate_pool_.Shutdown();
  removal_pool_.Shutdown();
}

grpc::Status LoradService::Authorize(grpc::CallbackServerContext* ctx) const {
  return CheckBearerToken(config_->tokens, ctx->client_metadata());
}

grpc::ServerUnaryReactor* LoradService::Reply(grpc::CallbackServerContext* ctx,
                                              const grpc::Status& status) {
  auto* reactor = ctx->DefaultReactor();
  reactor->Finish(status);
  return reactor;
}

absl::StatusOr<LoradService::PendingSubmit> LoradService::PrepareSubmit(
    const lorad::v1::SubmitJobRequest& request) {
  if (request.config_toml().empty() && request.overrides().empty()) {
    return absl::InvalidArgumentError("config_toml is empty: send a kohya training config");
  }
  std::map<std::string, std::string> overrides(request.overrides().begin(), request.overrides().end());
  auto config = ApplyOverrides(request.config_toml(), overrides);
  if (!config.ok()) return config.status();
  // A model record named by name or hash becomes its file; the job then waits
  // in the queue until the model is READY (issue 13).
  int64_t model_id = 0;
  if (models_ != nullptr) {
    auto model = models_->ResolveJobModel(*config);
    if (!model.ok()) return model.status();
    *config = std::move(model->config_toml);
    model_id = model->model_id;
  }
  // Validate now (paths, then every value through the trainer's own parser) so
  // a bad job is refused with lorad-train's message rather than queued to fail.
  const JobRoots& roots = scheduler_->options().roots;
  auto dataset_dir = Scheduler::ResolveDataset(store_, roots, request.dataset());
  if (!dataset_dir.ok()) return dataset_dir.status();
  JobConfigInput input{*config, request.dataset_config_toml(), *dataset_dir,
                       config_->jobs_dir() / "validation"};
  auto prepared = PrepareJobConfig(input, roots);
  if (!prepared.ok()) return prepared.status();
  SubmitAdviceInput advice;
  if (!request.kind().empty()) {
    auto kind = planner::ParseTrainingKind(request.kind());
    if (!kind.ok()) return kind.status();
    advice.kind = *kind;
  }
  advice.config = prepared->train;
  advice.dataset_dir = *dataset_dir;
  advice.dataset_config = prepared->datasets;
  advice.force = request.force();
  if (!request.dataset().empty()) {
    if (auto dataset = store_->GetDataset(request.dataset()); dataset.ok()) {
      advice.curation_json = ReadCurationCache(CurationCachePath(config_->data_dir, dataset->id));
    }
  }

  PendingSubmit pending;
  pending.advice = AdviseSubmit(advice);
  storage::JobSpec& spec = pending.spec;
  spec.name = JobName(request);
  spec.priority = request.priority();
  spec.request_id = request.request_id();
  spec.sweep = request.sweep();
  spec.dataset = request.dataset();
  spec.config_toml = *config;
  spec.dataset_config_toml = request.dataset_config_toml();
  spec.model_id = model_id;
  spec.hyperparameters = prepared->hyperparameters;
  for (const auto& [key, value] : request.sweep_values()) spec.hyperparameters[key] = value;
  for (const char* daemon_key : {"output_dir", "logging_dir", "save_state"}) {
    spec.hyperparameters.erase(daemon_key);
  }
  return pending;
}

absl::StatusOr<storage::JobRecord> LoradService::CommitSubmit(const PendingSubmit& pending, bool defer_dispatch) {
  auto result = store_->Submit(pending.spec);
  if (!result.ok()) return result.status();
  for (const auto& event : result->events) hub_->Publish(event, false);
  if (!result->created) return result->job;
  if (!pending.advice.findings.empty()) {
    std::vector<storage::EventWrite> writes;
    for (const auto& finding : pending.advice.findings) {
      storage::EventWrite write;
      write.event.set_time_unix_ms(NowUnixMs());
      write.event.mutable_warning()->set_code(absl::StrCat("advisor.", finding.rule_id));
      write.event.mutable_warning()->set_message(
          absl::StrCat("[", planner::SeverityName(finding.severity), "] ", finding.message,
                       finding.citation.empty() ? "" : absl::StrCat(" (", finding.citation, ")")));
      writes.push_back(std::move(write));
    }
    auto stored = store_->AppendEvents(result->job.id, writes);
    if (stored.ok()) {
      for (const auto& event : *stored) hub_->Publish(event, false);
    } else {
      spdlog::warn("job {}: cannot record advisor findings: {}", result->job.id, stored.status().ToString());
    }
  }
  spdlog::info("job {} '{}' queued (priority {}, {} advisor finding(s))", result->job.id, result->job.name,
               pending.spec.priority, pending.advice.findings.size());
  if (!defer_dispatch) scheduler_->NotifyQueued();
  auto job = store_->GetJob(result->job.id);
  return job.ok() ? *job : result->job;
}

grpc::ServerUnaryReactor* LoradService::SubmitJob(grpc::CallbackServerContext* ctx,
                                                  const lorad::v1::SubmitJobRequest* request,
                                                  lorad::v1::Job* response) {
  if (auto s = Authorize(ctx); !s.ok()) return Reply(ctx, s);
  // An uploaded dataset is advised on with its curation report. Datasets are
  // content-addressed, so the report is computed once (lorad-curate, on the
  // curate pool: no RPC thread waits on image decoding) and kept.
  auto dataset = request->dataset().empty() ? absl::StatusOr<storage::DatasetRecord>(absl::NotFoundError("none"))
                                            : store_->GetDataset(request->dataset());
  std::error_code ec;
  if (!dataset.ok() || fs::exists(CurationCachePath(config_->data_dir, dataset->id), ec)) {
    return Reply(ctx, FinishSubmit(*request, response));
  }
  auto* reactor = ctx->DefaultReactor();
  const fs::path cache = CurationCachePath(config_->data_dir, dataset->id);
  const fs::path stderr_log = config_->logs_dir() / absl::StrCat("curate-", dataset->id, ".stderr");
  absl::Status queued = curate_pool_.Submit(
      [this, ctx, reactor, request, response, cache, stderr_log, id = dataset->id,
       folder = dataset->path](const std::atomic<bool>& stopping) {
        auto report = CurationReport(config_->curate_binary, folder, stderr_log, [ctx, &stopping] {
          return stopping.load() || ctx->IsCancelled();
        });
        if (stopping) {
          reactor->Finish(ToGrpcStatus(absl::UnavailableError("lorad is stopping")));
          return;
        }
        if (report.ok()) {
          if (absl::Status written = WriteCurationCache(cache, *report); !written.ok()) {
            spdlog::warn("dataset {}: curation report not kept: {}", id, written.ToString());
          }
        } else if (ctx->IsCancelled()) {
          reactor->Finish(grpc::Status(grpc::StatusCode::CANCELLED, "the client went away"));
          return;
        } else {
          spdlog::warn("dataset {}: no curation report for the advisor ({}); advising on its image counts", id,
                       report.status().ToString());
        }
        reactor->Finish(FinishSubmit(*request, response));
      });
  if (!queued.ok()) {
    // Every curate slot is taken: advise on the folder's counts rather than refuse the job.
    spdlog::info("dataset {}: {}; advising this submit on its image counts", dataset->id,
                 std::string(queued.message()));
    reactor->Finish(FinishSubmit(*request, response));
  }
  return reactor;
}

grpc::Status LoradService::FinishSubmit(const lorad::v1::SubmitJobRequest& request, lorad::v1::Job* response) {
  absl::ReaderMutexLock datasets_lock(&datasets_mu_);
  auto pending = PrepareSubmit(request);
  if (!pending.ok()) return ToGrpcStatus(pending.status());
  if (pending->advice.blocking()) {
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                        absl::StrCat("refused by the advisor (pass --force to run anyway): ",
                                     DescribeNeverFindings(pending->advice)));
  }
  auto job = CommitSubmit(*pending);
  if (!job.ok()) return ToGrpcStatus(job.status());
  ToProto(*job, response);
  return grpc::Status::OK;
}

grpc::ServerUnaryReactor* LoradService::GetJob(grpc::CallbackServerContext* ctx,
                                               const lorad::v1::GetJobRequest* request,
                                               lorad::v1::Job* response) {
  if (auto s = Authorize(ctx); !s.ok()) return Reply(ctx, s);
  auto job = QueryJob(request->job_id());
  if (!job.ok()) return Reply(ctx, ToGrpcStatus(job.status()));
  *response = std::move(*job);
  return Reply(ctx, grpc::Status::OK);
}

absl::StatusOr<lorad::v1::Job> LoradService::QueryJob(int64_t job_id) {
  auto job = store_->GetJob(job_id);
  if (!job.ok()) return job.status();
  lorad::v1::Job out;
  ToProto(*job, &out);
  auto hp = store_->GetHyperparameters(job_id);
  if (hp.ok()) out.mutable_hyperparameters()->insert(hp->begin(), hp->end());
  return out;
}

grpc::ServerUnaryReactor* LoradService::ListJobs(grpc::CallbackServerContext* ctx,
                                                 const lorad::v1::ListJobsRequest* request,
                                                 lorad::v1::ListJobsResponse* response) {
  if (auto s = Authorize(ctx); !s.ok()) return Reply(ctx, s);
  auto page = QueryJobs(*request);
  if (!page.ok()) return Reply(ctx, ToGrpcStatus(page.status()));
  *response = std::move(*page);
  return Reply(ctx, grpc::Status::OK);
}

absl::StatusOr<lorad::v1::ListJobsResponse> LoradService::QueryJobs(const lorad::v1::ListJobsRequest& request) {
  storage::JobFilter filter;
  for (int state : request.states()) {
    if (state < 1 || state > 5) return absl::InvalidArgumentError("unknown job state in filter");
    filter.states.push_back(static_cast<storage::JobState>(state));
  }
  filter.name_contains = request.name_contains();
  filter.sweep = request.sweep();
  filter.page_size = request.page_size();
  if (!request.page_token().empty() && !absl::SimpleAtoi(request.page_token(), &filter.before_id)) {
    return absl::InvalidArgumentError("malformed page_token");
  }
  auto page = store_->ListJobs(filter);
  if (!page.ok()) return page.status();
  lorad::v1::ListJobsResponse out;
  for (const auto& job : page->jobs) ToProto(job, out.add_jobs());
  if (page->next_before_id > 0) out.set_next_page_token(std::to_string(page->next_before_id));
  return out;
}

absl::StatusOr<storage::JobRecord> LoradService::CancelOne(int64_t job_id, const std::string& reason) {
  auto result = store_->RequestCancel(job_id, reason);
  if (!result.ok()) return result.status();
  for (const auto& event : result->events) {
    hub_->Publish(event, storage::IsTerminal(result->job.state) && event.event.has_finished());
  }
  if (result->needs_signal) scheduler_->Cancel(job_id);
  return result->job;
}

grpc::ServerUnaryReactor* LoradService::CancelJob(grpc::CallbackServerContext* ctx,
                                                  const lorad::v1::CancelJobRequest* request,
                                                  lorad::v1::Job* response) {
  if (auto s = Authorize(ctx); !s.ok()) return Reply(ctx, s);
  auto job = Cancel(request->job_id(), request->reason());
  if (!job.ok()) return Reply(ctx, ToGrpcStatus(job.status()));
  *response = std::move(*job);
  return Reply(ctx, grpc::Status::OK);
}

absl::StatusOr<lorad::v1::Job> LoradService::Cancel(int64_t job_id, const std::string& reason) {
  auto job = CancelOne(job_id, reason);
  if (!job.ok()) return job.status();
  lorad::v1::Job out;
  ToProto(*job, &out);
  return out;
}

grpc::ServerWriteReactor<lorad::v1::JobEvent>* LoradService::StreamEvents(
    grpc::CallbackServerContext* ctx, const lorad::v1::StreamEventsRequest* request) {
  if (auto s = Authorize(ctx); !s.ok()) return FailedStream<lorad::v1::JobEvent>(s);
  if (request->after_seq() < 0) {
    return FailedStream<lorad::v1::JobEvent>(
        grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "after_seq must be >= 0"));
  }
  return NewEventStream(hub_, request->job_id(), request->after_seq(), !request->no_follow());
}

grpc::ServerUnaryReactor* LoradService::ListArtifacts(grpc::CallbackServerContext* ctx,
                                                      const lorad::v1::ListArtifactsRequest* request,
                                                      lorad::v1::ListArtifactsResponse* response) {
  if (auto s = Authorize(ctx); !s.ok()) return Reply(ctx, s);
  auto artifacts = QueryArtifacts(request->job_id(), request->kind());
  if (!artifacts.ok()) return Reply(ctx, ToGrpcStatus(artifacts.status()));
  *response = std::move(*artifacts);
  return Reply(ctx, grpc::Status::OK);
}

absl::StatusOr<lorad::v1::ListArtifactsResponse> LoradService::QueryArtifacts(int64_t job_id,
                                                                             lorad::v1::ArtifactKind kind) {
  if (auto job = store_->GetJob(job_id); !job.ok()) return job.status();
  auto artifacts = store_->ListArtifacts(job_id, kind);
  if (!artifacts.ok()) return artifacts.status();
  lorad::v1::ListArtifactsResponse out;
  for (const auto& a : *artifacts) ToProto(a, out.add_artifacts());
  return out;
}

absl::StatusOr<storage::ArtifactRecord> LoradService::ReadableArtifact(int64_t artifact_id) {
  auto artifact = store_->GetArtifact(artifact_id);
  if (!artifact.ok()) return artifact.status();
  if (artifact->is_directory) {
    return absl::FailedPreconditionError(absl::StrCat("artifact ", artifact->id, " (", artifact->name,
                                                      ") is a training-state folder; only files can be fetched"));
  }
  // Workers only get artifacts recorded inside their job folder; a record (or
  // a symlink swapped in since) that resolves elsewhere is never served.
  if (!IsWithin(config_->jobs_dir(), artifact->path)) {
    return absl::PermissionDeniedError(absl::StrCat("artifact ", artifact->id, " (", artifact->name,
                                                    ") lies outside the daemon's jobs folder; not served"));
  }
  return artifact;
}

absl::StatusOr<storage::ArtifactRecord> LoradService::ReadableArtifactByName(int64_t job_id,
                                                                           const std::string& name) {
  if (absl::Status valid = ValidateRelativePath(name); !valid.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("artifact name \"", name, "\": ", valid.message()));
  }
  auto artifacts = QueryArtifacts(job_id, lorad::v1::ARTIFACT_KIND_UNSPECIFIED);
  if (!artifacts.ok()) return artifacts.status();
  for (const auto& a : artifacts->artifacts()) {
    if (a.name() == name) return ReadableArtifact(a.id());
  }
  return absl::NotFoundError(absl::StrCat("job ", job_id, " has no artifact named \"", name,
                                          "\" (see its artifact list)"));
}

grpc::ServerWriteReactor<lorad::v1::ArtifactChunk>* LoradService::FetchArtifact(
    grpc::CallbackServerContext* ctx, const lorad::v1::FetchArtifactRequest* request) {
  if (auto s = Authorize(ctx); !s.ok()) return FailedStream<lorad::v1::ArtifactChunk>(s);
  auto artifact = ReadableArtifact(request->artifact_id());
  if (!artifact.ok()) return FailedStream<lorad::v1::ArtifactChunk>(ToGrpcStatus(artifact.status()));
  const int chunk = request->chunk_bytes() <= 0 ? (1 << 20) : std::min(request->chunk_bytes(), 4 << 20);
  return NewArtifactStream(*artifact, request->offset(), chunk);
}

grpc::ServerReadReactor<lorad::v1::UploadDatasetRequest>* LoradService::UploadDataset(
    grpc::CallbackServerContext* ctx, lorad::v1::Dataset* response) {
  if (auto s = Authorize(ctx); !s.ok()) return FailedUpload<lorad::v1::UploadDatasetRequest>(s);
  return NewDatasetUpload(config_, &upload_budget_, &datasets_mu_, store_, response);
}

grpc::ServerUnaryReactor* LoradService::ListDatasets(grpc::CallbackServerContext* ctx,
                                                     const lorad::v1::ListDatasetsRequest*,
                                                     lorad::v1::ListDatasetsResponse* response) {
  if (auto s = Authorize(ctx); !s.ok()) return Reply(ctx, s);
  auto datasets = QueryDatasets();
  if (!datasets.ok()) return Reply(ctx, ToGrpcStatus(datasets.status()));
  *response = std::move(*datasets);
  return Reply(ctx, grpc::Status::OK);
}

absl::StatusOr<lorad::v1::ListDatasetsResponse> LoradService::QueryDatasets() {
  auto datasets = store_->ListDatasets();
  if (!datasets.ok()) return datasets.status();
  lorad::v1::ListDatasetsResponse out;
  for (const auto& d : *datasets) ToProto(d, out.add_datasets());
  return out;
}

grpc::ServerUnaryReactor* LoradService::InspectDataset(grpc::CallbackServerContext* ctx,
                                                       const lorad::v1::InspectDatasetRequest* request,
                                                       lorad::v1::InspectDatasetResponse* response) {
  if (auto s = Authorize(ctx); !s.ok()) return Reply(ctx, s);
  auto dataset = store_->GetDataset(request->dataset_id());
  if (!dataset.ok()) return Reply(ctx, ToGrpcStatus(dataset.status()));
  ToProto(*dataset, response->mutable_dataset());
  // ctx, reactor and response stay valid until reactor->Finish, which `done`
  // calls exactly once.
  auto* reactor = ctx->DefaultReactor();
  CurationReportAsync(*dataset, [ctx] { return ctx->IsCancelled(); },
                      [reactor, response](absl::StatusOr<std::string> report) {
                        if (!report.ok()) {
                          reactor->Finish(ToGrpcStatus(report.status()));
                          return;
                        }
                        response->set_report_json(std::move(*report));
                        reactor->Finish(grpc::Status::OK);
                      });
  return reactor;
}

void LoradService::CurationReportAsync(const storage::DatasetRecord& dataset, std::function<bool()> cancelled,
                                       std::function<void(absl::StatusOr<std::string>)> done) {
  // The curation report decodes every image (OpenCV): `lorad-curate --json`
  // runs as a child process on the curate pool, so neither a bad image nor a
  // slow folder holds a request thread; a departed client or a stopping daemon
  // kills it. The report of a dataset is kept once computed (its content never changes).
  const fs::path cache = CurationCachePath(config_->data_dir, dataset.id);
  if (std::string kept = ReadCurationCache(cache); !kept.empty()) {
    done(std::move(kept));
    return;
  }
  const fs::path stderr_log = config_->logs_dir() / absl::StrCat("curate-", dataset.id, ".stderr");
  // The task owns `done` until it runs; a refused Submit leaves it here.
  auto shared_done = std::make_shared<std::function<void(absl::StatusOr<std::string>)>>(std::move(done));
  absl::Status queued = curate_pool_.Submit(
      [cancelled = std::move(cancelled), shared_done, stderr_log, cache, binary = config_->curate_binary,
       folder = dataset.path](const std::atomic<bool>& stopping) {
        auto report = CurationReport(binary, folder, stderr_log, [&cancelled, &stopping] {
          return stopping.load() || cancelled();
        });
        if (!report.ok()) {
          (*shared_done)(stopping ? absl::UnavailableError("lorad is stopping") : report.status());
          return;
        }
        if (absl::Status written = WriteCurationCache(cache, *report); !written.ok()) {
          spdlog::warn("curation report not kept: {}", written.ToString());
        }
        (*shared_done)(std::move(*report));
      });
  if (!queued.ok()) (*shared_done)(queued);
}

grpc::ServerUnaryReactor* LoradService::DeleteDataset(grpc::CallbackServerContext* ctx,
                                                      const lorad::v1::DeleteDatasetRequest* request,
                                                      lorad::v1::DeleteDatasetResponse* response) {
  if (auto s = Authorize(ctx); !s.ok()) return Reply(ctx, s);
  absl::StatusOr<DeletedDataset> deleted;
  {
    absl::MutexLock datasets_lock(&datasets_mu_);
    deleted = DeleteStoredDataset(store_, scheduler_->options().roots, config_->jobs_dir(), request->dataset());
  }
  if (!deleted.ok()) return Reply(ctx, ToGrpcStatus(deleted.status()));
  if (!deleted->dataset.id.empty()) {
    std::error_code ec;
    fs::remove(CurationCachePath(config_->data_dir, deleted->dataset.id), ec);
  }
  ToProto(deleted->dataset, response->mutable_dataset());
  response->set_folder_deleted(!deleted->hidden.empty());
  spdlog::info("dataset {} ('{}', {}) deleted{}", deleted->dataset.id.empty() ? "folder" : deleted->dataset.id,
               deleted->dataset.name, deleted->dataset.path,
               deleted->hidden.empty() ? "; its folder was missing or outside the datasets root, left as it was"
                                       : "");
  if (!deleted->hidden.empty()) {
    auto remove = [hidden = deleted->hidden](const std::atomic<bool>& stopping) {
      if (stopping) {
        spdlog::info("{} is left for the next start to remove (lorad is stopping)", hidden.string());
        return;
      }
      auto freed = RemoveHiddenDataset(hidden);
      if (freed.ok()) {
        spdlog::info("removed {} ({} bytes freed)", hidden.string(), *freed);
      } else {
        spdlog::warn("{}", std::string(freed.status().message()));
      }
    };
    // With the queue full, the RPC thread removes it itself rather than leave
    // the disk taken until the next start; a stopping daemon leaves it to that start.
    if (absl::Status queued = removal_pool_.Submit(remove); queued.code() == absl::StatusCode::kResourceExhausted) {
      std::atomic<bool> not_stopping{false};
      remove(not_stopping);
    }
  }
  return Reply(ctx, grpc::Status::OK);
}

grpc::ServerUnaryReactor* LoradService::TagDataset(grpc::CallbackServerContext* ctx,
                                                   const lorad::v1::TagDatasetRequest* request,
                                                   lorad::v1::TagDatasetResponse* response) {
  if (auto s = Authorize(ctx); !s.ok()) return Reply(ctx, s);
  // Tagging decodes every image and runs a network (OpenCV): lorad-tag runs as
  // a child process on the curate pool, like InspectDataset's report; ctx,
  // request, reactor and response stay valid until reactor->Finish.
  auto* reactor = ctx->DefaultReactor();
  TagJob job{config_->tag_binary, config_->datasets_root, config_->models_root,
             config_->logs_dir() / "tag-last.stderr"};
  absl::Status queued = curate_pool_.Submit([this, ctx, reactor, request, response,
                                             job = std::move(job)](const std::atomic<bool>& stopping) {
    auto tagged = TagStoredDataset(store_, &datasets_mu_, job, *request, [ctx, &stopping] {
      return stopping.load() || ctx->IsCancelled();
    });
    if (!tagged.ok()) {
      reactor->Finish(ToGrpcStatus(stopping ? absl::UnavailableError("lorad is stopping") : tagged.status()));
      return;
    }
    *response = std::move(*tagged);
    reactor->Finish(grpc::Status::OK);
  });
  if (!queued.ok()) reactor->Finish(ToGrpcStatus(queued));
  return reactor;
}

grpc::ServerUnaryReactor* LoradService::GetServerInfo(grpc::CallbackServerContext* ctx,
                                                      const lorad::v1::GetServerInfoRequest*,
                                                      lorad::v1::ServerInfo* response) {
  if (auto s = Authorize(ctx); !s.ok()) return Reply(ctx, s);
  *response = QueryServerInfo();
  return Reply(ctx, grpc::Status::OK);
}

lorad::v1::ServerInfo LoradService::QueryServerInfo() {
  lorad::v1::ServerInfo info;
  lorad::v1::ServerInfo* response = &info;
  response->set_version(LORAD_VERSION);
  response->set_libtorch_version(LibTorchVersion());
  response->set_cuda_available(LibTorchHasCuda() && !gpus_.empty());
  for (const auto& g : gpus_) {
    auto* gpu = response->add_gpus();
    gpu->set_index(g.index);
    gpu->set_name(g.name);
    gpu->set_memory_total_bytes(g.memory_total_bytes);
    gpu->set_memory_free_bytes(g.memory_free_bytes);
  }
  auto queued = store_->CountJobs(storage::JobState::kQueued);
  response->set_queue_length(queued.ok() ? static_cast<int32_t>(*queued) : -1);
  response->set_slots(scheduler_->slots());
  response->set_running(scheduler_->running());
  response->set_data_dir(config_->data_dir.string());
  response->set_uptime_s(std::chrono::duration_cast<std::chrono::seconds>(
                             std::chrono::steady_clock::now() - started_)
                             .count());
  response->set_worker_binary(config_->worker_binary);
  FillUsageAndIdle(*config_, store_, idle_switch_, response);
  return info;
}

}  // namespace lorad::server
