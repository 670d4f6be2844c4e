// Server-streaming reactors: StreamEvents (replay then follow) and
// FetchArtifact (chunks from an offset). One write in flight each; OnCancel
// finishes, OnDone unregisters and deletes.
#pragma once

#include <grpcpp/grpcpp.h>

#include "lorad/v1/lorad.grpc.pb.h"
#include "server/event_hub.h"
#include "storage/job_store.h"

namespace lorad::server {

// Each New* returns a reactor that owns itself: gRPC holds it until OnDone,
// which deletes it. `hub` is borrowed and must outlive every stream (the
// daemon shuts the hub down, which ends them, before destroying it). An
// unknown job id finishes the stream with NOT_FOUND; a missing artifact file
// with NOT_FOUND, an offset past its end with OUT_OF_RANGE.
grpc::ServerWriteReactor<lorad::v1::JobEvent>* NewEventStream(EventHub* hub, int64_t job_id,
                                                              int64_t after_seq, bool follow);

grpc::ServerWriteReactor<lorad::v1::ArtifactChunk>* NewArtifactStream(
    const storage::ArtifactRecord& artifact, int64_t offset, int chunk_bytes);

// A stream that finishes at once with `status` (auth and argument errors).
template <typename T>
grpc::ServerWriteReactor<T>* FailedStream(const grpc::Status& status) {
  class Failed : public grpc::ServerWriteReactor<T> {
   public:
    explicit Failed(const grpc::Status& s) { this->Finish(s); }
    void OnDone() override { delete this; }
  };
  return new Failed(status);
}

}  // namespace lorad::server
