// LoradService: the lorad.v1.Lorad gRPC service on the callback API. Unary RPCs
// answer inline (short SQLite transactions); streams are reactors with one
// write in flight (modelled on gRPC's health WatchReactor). Nothing that can
// block runs inside a reaction: InspectDataset's lorad-curate runs on a small
// pool the service owns, and GetServerInfo answers from the GPU list read once
// at start. Thread-safe.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "lorad/v1/lorad.grpc.pb.h"
#include "core/planner/advisor.h"
#include "server/config.h"
#include "server/event_hub.h"
#include "server/idle_switch.h"
#include "server/models/model_manager.h"
#include "server/scheduler.h"
#include "server/server_info.h"
#include "server/task_pool.h"
#include "server/upload_budget.h"
#include "storage/job_store.h"

namespace lorad::server {

class LoradService final : public lorad::v1::Lorad::CallbackService {
 public:
  // `config`, `store`, `hub` and `scheduler` are borrowed and must outlive the
  // service; `gpus` is the machine's GPU list, read once at daemon start.
  LoradService(const ServerConfig* config, storage::JobStore* store, EventHub* hub,
               Scheduler* scheduler, std::vector<GpuInfo> gpus);
  // The idle switch GetServerInfo reports on (borrowed; outlives the
  // service); none: the switch is off. Call before the server starts.
  void SetIdleSwitch(const IdleSwitch* idle_switch) { idle_switch_ = idle_switch; }
  // The model records (borrowed; outlives the service); none: the model RPCs
  // answer UNAVAILABLE and jobs name models by path only. Call before the server starts.
  void SetModelManager(ModelManager* models) { models_ = models; }
  // Stops the background work (running curation reports are killed and
  // answered UNAVAILABLE) and joins its threads; call before the gRPC server
  // shuts down. Idempotent; the destructor does it too.
  void Shutdown();

  grpc::ServerUnaryReactor* SubmitJob(grpc::CallbackServerContext* ctx,
                                      const lorad::v1::SubmitJobRequest* request,
                                      lorad::v1::Job* response) override;
  grpc::ServerUnaryReactor* GetJob(grpc::CallbackServerContext* ctx,
                                   const lorad::v1::GetJobRequest* request,
                                   lorad::v1::Job* response) override;
  grpc::ServerUnaryReactor* ListJobs(grpc::CallbackServerContext* ctx,
                                     const lorad::v1::ListJobsRequest* request,
                                     lorad::v1::ListJobsResponse* response) override;
  grpc::ServerUnaryReactor* CancelJob(grpc::CallbackServerContext* ctx,
                                      const lorad::v1::CancelJobRequest* request,
                                      lorad::v1::Job* response) override;
  grpc::ServerWriteReactor<lorad::v1::JobEvent>* StreamEvents(
      grpc::CallbackServerContext* ctx, const lorad::v1::StreamEventsRequest* request) override;
  grpc::ServerUnaryReactor* ListArtifacts(grpc::CallbackServerContext* ctx,
                                          const lorad::v1::ListArtifactsRequest* request,
                                          lorad::v1::ListArtifactsResponse* response) override;
  grpc::ServerWriteReactor<lorad::v1::ArtifactChunk>* FetchArtifact(
      grpc::CallbackServerContext* ctx, const lorad::v1::FetchArtifactRequest* request) override;
  grpc::ServerReadReactor<lorad::v1::UploadDatasetRequest>* UploadDataset(
      grpc::CallbackServerContext* ctx, lorad::v1::Dataset* response) override;
  grpc::ServerUnaryReactor* ListDatasets(grpc::CallbackServerContext* ctx,
                                         const lorad::v1::ListDatasetsRequest* request,
                                         lorad::v1::ListDatasetsResponse* response) override;
  grpc::ServerUnaryReactor* InspectDataset(grpc::CallbackServerContext* ctx,
                                           const lorad::v1::InspectDatasetRequest* request,
                                           lorad::v1::InspectDatasetResponse* response) override;
  grpc::ServerUnaryReactor* DeleteDataset(grpc::CallbackServerContext* ctx,
                                          const lorad::v1::DeleteDatasetRequest* request,
                                          lorad::v1::DeleteDatasetResponse* response) override;
  // Runs lorad-tag on a copy of the dataset (server/dataset_tag.h), on the curate pool.
  grpc::ServerUnaryReactor* TagDataset(grpc::CallbackServerContext* ctx,
                                       const lorad::v1::TagDatasetRequest* request,
                                       lorad::v1::TagDatasetResponse* response) override;
  // Models as records (server/models/model_service.cc).
  grpc::ServerReadReactor<lorad::v1::UploadModelRequest>* UploadModel(grpc::CallbackServerContext* ctx,
                                                                      lorad::v1::Model* response) override;
  grpc::ServerUnaryReactor* PullModel(grpc::CallbackServerContext* ctx, const lorad::v1::PullModelRequest* request,
                                      lorad::v1::Model* response) override;
  grpc::ServerUnaryReactor* GetModel(grpc::CallbackServerContext* ctx, const lorad::v1::GetModelRequest* request,
                                     lorad::v1::Model* response) override;
  grpc::ServerUnaryReactor* ListModels(grpc::CallbackServerContext* ctx, const lorad::v1::ListModelsRequest* request,
                                       lorad::v1::ListModelsResponse* response) override;
  grpc::ServerUnaryReactor* DeleteModel(grpc::CallbackServerContext* ctx, const lorad::v1::DeleteModelRequest* request,
                                        lorad::v1::DeleteModelResponse* response) override;
  grpc::ServerWriteReactor<lorad::v1::Model>* WatchModel(grpc::CallbackServerContext* ctx,
                                                         const lorad::v1::GetModelRequest* request) override;
  grpc::ServerUnaryReactor* GetServerInfo(grpc::CallbackServerContext* ctx,
                                          const lorad::v1::GetServerInfoRequest* request,
                                          lorad::v1::ServerInfo* response) override;
  // Sweeps (server/sweep_service.cc).
  grpc::ServerUnaryReactor* SubmitSweep(grpc::CallbackServerContext* ctx,
                                        const lorad::v1::SubmitSweepRequest* request,
                                        lorad::v1::Sweep* response) override;
  grpc::ServerUnaryReactor* GetSweep(grpc::CallbackServerContext* ctx,
                                     const lorad::v1::GetSweepRequest* request,
                                     lorad::v1::Sweep* response) override;
  grpc::ServerUnaryReactor* ListSweeps(grpc::CallbackServerContext* ctx,
                                       const lorad::v1::ListSweepsRequest* request,
                                       lorad::v1::ListSweepsResponse* response) override;
  grpc::ServerUnaryReactor* CancelSweep(grpc::CallbackServerContext* ctx,
                                        const lorad::v1::CancelSweepRequest* request,
                                        lorad::v1::Sweep* response) override;

  // The queries behind the RPCs, without a call context: the gRPC handlers and
  // the HTTP dashboard (server/http_server.h) both answer from these, so the
  // two can never disagree. The caller has checked the token.
  // The job with its hyperparameters (GetJob).
  absl::StatusOr<lorad::v1::Job> QueryJob(int64_t job_id);
  // A page of jobs, newest first (ListJobs).
  absl::StatusOr<lorad::v1::ListJobsResponse> QueryJobs(const lorad::v1::ListJobsRequest& request);
  // Records the cancel, publishes its events, signals a running worker (CancelJob).
  absl::StatusOr<lorad::v1::Job> Cancel(int64_t job_id, const std::string& reason);
  absl::StatusOr<lorad::v1::ListArtifactsResponse> QueryArtifacts(int64_t job_id, lorad::v1::ArtifactKind kind);
  // An artifact a client may read (FetchArtifact's checks): a file, not a
  // training-state folder, whose path lies inside the daemon's jobs folder.
  // FAILED_PRECONDITION for a folder, PERMISSION_DENIED outside the jobs folder.
  absl::StatusOr<storage::ArtifactRecord> ReadableArtifact(int64_t artifact_id);
  // The same, by the name ListArtifacts reports ("tiny-000004.safetensors",
  // "sample/x.png"); a name with "..", "." or empty components is INVALID_ARGUMENT.
  absl::StatusOr<storage::ArtifactRecord> ReadableArtifactByName(int64_t job_id, const std::string& name);
  absl::StatusOr<lorad::v1::ListDatasetsResponse> QueryDatasets();
  lorad::v1::ServerInfo QueryServerInfo();
  // By id, or by name when `sweep_id` is 0; with jobs and hyperparameters (GetSweep).
  absl::StatusOr<lorad::v1::Sweep> QuerySweep(int64_t sweep_id, const std::string& name);
  absl::StatusOr<lorad::v1::ListSweepsResponse> QuerySweeps();
  // The dataset's curation report (InspectDataset): the kept one, else
  // lorad-curate on the curate pool. `done` runs exactly once, on the pool or
  // in this call; `cancelled` is polled while lorad-curate runs.
  void CurationReportAsync(const storage::DatasetRecord& dataset, std::function<bool()> cancelled,
                           std::function<void(absl::StatusOr<std::string>)> done);

 private:
  // A validated submit, not yet recorded: the spec to store and the advisor's
  // findings to attach.
  struct PendingSubmit {
    storage::JobSpec spec;
    planner::AdviceReport advice;
  };
  // SubmitJob's checks: overrides, dataset resolution, path confinement, TOML,
  // advisor. Does not refuse on "never" findings (the caller decides).
  absl::StatusOr<PendingSubmit> PrepareSubmit(const lorad::v1::SubmitJobRequest& request);
  // SubmitJob after its curation report is in place: prepares under the
  // datasets lock, refuses on "never" findings, records, fills `response`.
  grpc::Status FinishSubmit(const lorad::v1::SubmitJobRequest& request, lorad::v1::Job* response);
  // Records the job (idempotent by request_id), attaches one Warning event per
  // finding to a newly created job, and (unless `defer_dispatch`, as a sweep
  // does until all its jobs are recorded) wakes the scheduler.
  absl::StatusOr<storage::JobRecord> CommitSubmit(const PendingSubmit& pending, bool defer_dispatch = false);
  // CancelJob's path: records the cancel, publishes, signals a running worker.
  absl::StatusOr<storage::JobRecord> CancelOne(int64_t job_id, const std::string& reason);
  // The sweep with counts and, when `with_jobs`, its jobs (with hyperparameters).
  absl::StatusOr<lorad::v1::Sweep> SweepProto(const storage::SweepRecord& sweep, bool with_jobs);
  // OK, or UNAUTHENTICATED when tokens are configured and the call's
  // `authorization: Bearer <token>` matches none.
  grpc::Status Authorize(grpc::CallbackServerContext* ctx) const;
  grpc::ServerUnaryReactor* Reply(grpc::CallbackServerContext* ctx, const grpc::Status& status);

  const ServerConfig* config_;  // borrowed, as are the next three
  storage::JobStore* store_;
  EventHub* hub_;
  Scheduler* scheduler_;
  const std::vector<GpuInfo> gpus_;
  const IdleSwitch* idle_switch_ = nullptr;  // borrowed; null: off
  ModelManager* models_ = nullptr;           // borrowed; null: no model records
  const std::chrono::steady_clock::time_point started_;
  // Guards no member but the datasets root's meaning: submits (which resolve
  // and record a dataset) and an upload's final store hold it shared;
  // DeleteDataset holds it exclusively from its check for jobs that read the
  // dataset until the folder is renamed away, so no job is queued on, and no
  // upload lands in, a folder being deleted.
  absl::Mutex datasets_mu_;
  // lorad-curate runs: two at once, four more may wait; beyond that
  // InspectDataset answers RESOURCE_EXHAUSTED (and SubmitJob advises on the
  // folder's counts). Declared last: destroyed (and
  // joined) first, while the members its tasks use still exist.
  TaskPool curate_pool_{"curation reports", 2, 4};
  // Removes deleted datasets' hidden folders (many files: not inside an RPC).
  // One at a time; a stopping daemon leaves the queued ones to its next start.
  TaskPool removal_pool_{"dataset removals", 1, 64};
  // Shared by every UploadDataset in flight.
  UploadBudget upload_budget_;
};

// Fills a lorad.v1.Job from the store's record.
void ToProto(const storage::JobRecord& job, lorad::v1::Job* out);

}  // namespace lorad::server
