// Client helpers shared by loractl, the integration tests and the benchmark:
// channel + auth, dataset folder upload, resumable verified artifact download.
#pragma once

#include <chrono>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>

#include <grpcpp/grpcpp.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "lorad/v1/lorad.grpc.pb.h"

namespace lorad::client {

struct Connection {
  std::string server = "127.0.0.1:50051";
  std::string token;
  bool tls = false;
  std::string ca_file;  // PEM; empty: system roots
  std::chrono::milliseconds timeout{30000};
};

// LORAD_SERVER / LORAD_TOKEN fill what flags left empty.
Connection ConnectionFromEnv(Connection base);

class Client {
 public:
  explicit Client(const Connection& connection);
  lorad::v1::Lorad::Stub* stub() { return stub_.get(); }
  // A context with the bearer token and, unless `stream`, the call deadline.
  std::unique_ptr<grpc::ClientContext> Context(bool stream = false) const;
  const Connection& connection() const { return connection_; }

  // Uploads every regular file under `dir` (relative paths, sorted), in 1 MiB chunks.
  absl::StatusOr<lorad::v1::Dataset> UploadDataset(const std::filesystem::path& dir,
                                                   const std::string& name);
  // The dataset `dir` holds, on the daemon: its content id is computed here
  // (LocalDatasetId) and the daemon asked for it; only a dataset it lacks is
  // uploaded, so an unchanged folder is never sent twice.
  struct EnsuredDataset {
    lorad::v1::Dataset dataset;
    bool uploaded = false;
  };
  absl::StatusOr<EnsuredDataset> EnsureDataset(const std::filesystem::path& dir, const std::string& name);
  // Downloads an artifact to `target`, resuming from `target`.part when present,
  // verifying the final sha256; renames into place on success. DATA_LOSS on a
  // checksum mismatch (the .part file is removed so the next try starts over).
  // The checksum is computed on a second thread while chunks arrive.
  // `stop_after_bytes` > 0 aborts after that many bytes (tests interrupt with it).
  absl::Status FetchArtifact(const lorad::v1::Artifact& artifact, const std::filesystem::path& target,
                             int64_t stop_after_bytes = 0,
                             const std::function<void(int64_t, int64_t)>& progress = nullptr,
                             int chunk_bytes = 0);

  // Uploads a base model (issue 13): hashes the file, asks the daemon what it
  // holds of it (nothing, a part from a dropped upload, or all of it) and
  // sends the rest from there, in 1 MiB chunks; the daemon verifies the
  // sha256. A dropped connection is retried (up to 5 tries) from the bytes the
  // daemon kept. `stop_after_bytes` > 0 cancels the call after that many bytes
  // (tests interrupt with it; ABORTED, no retry). `progress(sent, total)`.
  absl::StatusOr<lorad::v1::Model> UploadModel(const std::filesystem::path& file, const std::string& name,
                                               int64_t stop_after_bytes = 0,
                                               const std::function<void(int64_t, int64_t)>& progress = nullptr);

 private:
  Connection connection_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<lorad::v1::Lorad::Stub> stub_;
};

absl::Status FromGrpc(const grpc::Status& status);

// The id the daemon gives the upload of `dir` (server/dataset_upload.cc):
// the first 32 hex digits of the sha256 over "<relative path>\t<file
// sha256>\n" for every regular file, sorted by path.
absl::StatusOr<std::string> LocalDatasetId(const std::filesystem::path& dir);

}  // namespace lorad::client
