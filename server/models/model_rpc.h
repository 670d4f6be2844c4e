// The model RPCs' reactors (issue 13): UploadModel (client streaming, resumable
// at the bytes already received, verified on the check pool before it is
// answered) and WatchModel (the record after each change; one write in flight,
// as the job event stream does).
#pragma once

#include <grpcpp/grpcpp.h>

#include "lorad/v1/lorad.grpc.pb.h"
#include "server/models/model_manager.h"
#include "storage/job_store.h"

namespace lorad::server {

void ToProto(const storage::ModelRecord& model, lorad::v1::Model* out);

// `manager` is borrowed and outlives the call.
grpc::ServerReadReactor<lorad::v1::UploadModelRequest>* NewModelUpload(ModelManager* manager,
                                                                      lorad::v1::Model* response);
grpc::ServerWriteReactor<lorad::v1::Model>* NewModelWatch(ModelManager* manager, const storage::ModelRecord& model);

}  // namespace lorad::server
