// LoradService's model RPCs (issue 13): thin answers over ModelManager.
#include "absl/strings/str_cat.h"
#include "server/dataset_upload.h"
#include "server/models/model_rpc.h"
#include "server/service.h"
#include "server/status_util.h"

namespace lorad::server {
namespace {

const grpc::Status kNoModels(grpc::StatusCode::UNAVAILABLE, "this daemon keeps no model records");

template <typename T>
grpc::ServerWriteReactor<T>* FailedWrite(const grpc::Status& status) {
  class Failed : public grpc::ServerWriteReactor<T> {
   public:
    explicit Failed(const grpc::Status& s) { this->Finish(s); }
    void OnDone() override { delete this; }
  };
  return new Failed(status);
}

}  // namespace

grpc::ServerReadReactor<lorad::v1::UploadModelRequest>* LoradService::UploadModel(grpc::CallbackServerContext* ctx,
                                                                                  lorad::v1::Model* response) {
  if (auto s = Authorize(ctx); !s.ok()) return FailedUpload<lorad::v1::UploadModelRequest>(s);
  if (models_ == nullptr) return FailedUpload<lorad::v1::UploadModelRequest>(kNoModels);
  return NewModelUpload(models_, response);
}

grpc::ServerUnaryReactor* LoradService::PullModel(grpc::CallbackServerContext* ctx,
                                                  const lorad::v1::PullModelRequest* request,
                                                  lorad::v1::Model* response) {
  if (auto s = Authorize(ctx); !s.ok()) return Reply(ctx, s);
  if (models_ == nullptr) return Reply(ctx, kNoModels);
  auto model = models_->Pull(request->url(), request->sha256(), request->name());
  if (!model.ok()) return Reply(ctx, ToGrpcStatus(model.status()));
  ToProto(*model, response);
  return Reply(ctx, grpc::Status::OK);
}

grpc::ServerUnaryReactor* LoradService::GetModel(grpc::CallbackServerContext* ctx,
                                                 const lorad::v1::GetModelRequest* request,
                                                 lorad::v1::Model* response) {
  if (auto s = Authorize(ctx); !s.ok()) return Reply(ctx, s);
  if (models_ == nullptr) return Reply(ctx, kNoModels);
  auto model = models_->Find(request->model());
  if (!model.ok()) return Reply(ctx, ToGrpcStatus(model.status()));
  ToProto(*model, response);
  return Reply(ctx, grpc::Status::OK);
}

grpc::ServerUnaryReactor* LoradService::ListModels(grpc::CallbackServerContext* ctx,
                                                   const lorad::v1::ListModelsRequest*,
                                                   lorad::v1::ListModelsResponse* response) {
  if (auto s = Authorize(ctx); !s.ok()) return Reply(ctx, s);
  if (models_ == nullptr) return Reply(ctx, kNoModels);
  auto models = models_->List();
  if (!models.ok()) return Reply(ctx, ToGrpcStatus(models.status()));
  for (const auto& model : *models) ToProto(model, response->add_models());
  return Reply(ctx, grpc::Status::OK);
}

grpc::ServerUnaryReactor* LoradService::DeleteModel(grpc::CallbackServerContext* ctx,
                                                    const lorad::v1::DeleteModelRequest* request,
                                                    lorad::v1::DeleteModelResponse* response) {
  if (auto s = Authorize(ctx); !s.ok()) return Reply(ctx, s);
  if (models_ == nullptr) return Reply(ctx, kNoModels);
  auto model = models_->Delete(request->model());
  if (!model.ok()) return Reply(ctx, ToGrpcStatus(model.status()));
  ToProto(*model, response->mutable_model());
  return Reply(ctx, grpc::Status::OK);
}

grpc::ServerWriteReactor<lorad::v1::Model>* LoradService::WatchModel(grpc::CallbackServerContext* ctx,
                                                                     const lorad::v1::GetModelRequest* request) {
  if (auto s = Authorize(ctx); !s.ok()) return FailedWrite<lorad::v1::Model>(s);
  if (models_ == nullptr) return FailedWrite<lorad::v1::Model>(kNoModels);
  auto model = models_->Find(request->model());
  if (!model.ok()) return FailedWrite<lorad::v1::Model>(ToGrpcStatus(model.status()));
  return NewModelWatch(models_, *model);
}

}  // namespace lorad::server
