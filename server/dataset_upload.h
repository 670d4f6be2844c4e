// UploadDataset: a client-streaming reactor that writes files into a private
// incoming folder, enforces size/count limits and safe relative paths, then
// stores the dataset under its content hash (sha256 over sorted path + file
// sha256 lines) with an atomic rename. Re-uploading the same files yields the
// same id and keeps the first copy.
#pragma once

#include <grpcpp/grpcpp.h>

#include "absl/synchronization/mutex.h"
#include "lorad/v1/lorad.grpc.pb.h"
#include "server/config.h"
#include "server/upload_budget.h"
#include "storage/job_store.h"

namespace lorad::server {

// `budget` (shared by all uploads in flight) is charged per chunk and given back when the call ends.
// `datasets_mu` is held shared while the finished upload is stored (DeleteDataset holds it exclusively).
grpc::ServerReadReactor<lorad::v1::UploadDatasetRequest>* NewDatasetUpload(
    const ServerConfig* config, UploadBudget* budget, absl::Mutex* datasets_mu, storage::JobStore* store,
    lorad::v1::Dataset* response);

template <typename T>
grpc::ServerReadReactor<T>* FailedUpload(const grpc::Status& status) {
  class Failed : public grpc::ServerReadReactor<T> {
   public:
    explicit Failed(const grpc::Status& s) { this->Finish(s); }
    void OnDone() override { delete this; }
  };
  return new Failed(status);
}

void ToProto(const storage::DatasetRecord& dataset, lorad::v1::Dataset* out);

}  // namespace lorad::server
