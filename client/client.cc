#include "client/client.h"

#include <cstdlib>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "core/base/sha256.h"

namespace lorad::client {
namespace fs = std::filesystem;

namespace {

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}


}  // namespace

absl::Status FromGrpc(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

Connection ConnectionFromEnv(Connection base) {
  if (const char* server = std::getenv("LORAD_SERVER"); server && *server && base.server.empty()) {
    base.server = server;
  }
  if (const char* token = std::getenv("LORAD_TOKEN"); token && *token && base.token.empty()) {
    base.token = token;
  }
  if (base.server.empty()) base.server = "127.0.0.1:50051";
  return base;
}

Client::Client(const Connection& connection) : connection_(connection) {
  std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials();
  if (connection.tls) {
    grpc::SslCredentialsOptions ssl;
    if (!connection.ca_file.empty()) ssl.pem_root_certs = ReadFile(connection.ca_file);
    credentials = grpc::SslCredentials(ssl);
  }
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(16 << 20);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 20000);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10000);
  // Reconnect quickly after a daemon restart (tail reconnects with its own backoff).
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 200);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 2000);
  channel_ = grpc::CreateCustomChannel(connection.server, credentials, args);
  stub_ = lorad::v1::Lorad::NewStub(channel_);
}

std::unique_ptr<grpc::ClientContext> Client::Context(bool stream) const {
  auto ctx = std::make_unique<grpc::ClientContext>();
  if (!connection_.token.empty()) ctx->AddMetadata("authorization", "Bearer " + connection_.token);
  if (!stream) ctx->set_deadline(std::chrono::system_clock::now() + connection_.timeout);
  return ctx;
}

absl::StatusOr<lorad::v1::Dataset> Client::UploadDataset(const fs::path& dir, const std::string& name) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    return absl::NotFoundError(absl::StrCat(dir.string(), " is not a folder"));
  }
  std::vector<fs::path> files;
  int64_t total = 0;
  for (auto it = fs::recursive_directory_iterator(dir, ec); !ec && it != fs::end(it); it.increment(ec)) {
    if (it->is_regular_file()) {
      files.push_back(fs::relative(it->path(), dir));
      total += static_cast<int64_t>(it->file_size());
    }
  }
  if (ec) return absl::InternalError(absl::StrCat("listing ", dir.string(), ": ", ec.message()));
  std::sort(files.begin(), files.end());
  auto ctx = Context(true);
  ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::hours(2));
  lorad::v1::Dataset response;
  auto writer = stub_->UploadDataset(ctx.get(), &response);
  lorad::v1::UploadDatasetRequest request;
  request.mutable_header()->set_name(name.empty() ? dir.filename().string() : name);
  request.mutable_header()->set_total_bytes(total);
  request.mutable_header()->set_file_count(static_cast<int>(files.size()));
  bool ok = writer->Write(request);
  std::string buffer(1 << 20, '\0');
  for (const auto& rel : files) {
    if (!ok) break;
    std::ifstream in(dir / rel, std::ios::binary);
    bool first = true;
    while (ok && (in || first)) {
      in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
      const auto n = static_cast<size_t>(in.gcount());
      if (n == 0 && !first) break;
      request.Clear();
      request.mutable_chunk()->set_path(rel.generic_string());
      request.mutable_chunk()->set_data(buffer.data(), n);
      ok = writer->Write(request);
      first = false;
    }
  }
  writer->WritesDone();
  grpc::Status status = writer->Finish();
  if (!status.ok()) return FromGrpc(status);
  return response;
}

absl::Status Client::FetchArtifact(const lorad::v1::Artifact& artifact, const fs::path& target,
                                   int64_t stop_after_bytes,
                                   const std::function<void(int64_t, int64_t)>& progress,
                                   int chunk_bytes) {
  const fs::path part = target.string() + ".part";
  std::error_code ec;
  fs::create_directories(target.parent_path().empty() ? fs::path(".") : target.parent_path(), ec);
  int64_t offset = fs::exists(part, ec) ? static_cast<int64_t>(fs::file_size(part, ec)) : 0;
  if (offset > artifact.bytes()) {
    fs::remove(part, ec);
    offset = 0;
  }
  lorad::Sha256 hash;
  if (offset > 0) {  // the part already on disk counts towards the checksum
    std::ifstream in(part, std::ios::binary);
    std::string buffer(1 << 20, '\0');
    int64_t left = offset;
    while (left > 0 && in) {
      in.read(buffer.data(), static_cast<std::streamsize>(std::min<int64_t>(left, buffer.size())));
      hash.Update(std::string_view(buffer.data(), static_cast<size_t>(in.gcount())));
      left -= in.gcount();
    }
  }
  std::ofstream out(part, std::ios::binary | std::ios::app);
  if (!out) return absl::PermissionDeniedError(absl::StrCat("cannot write ", part.string()));
  auto ctx = Context(true);
  lorad::v1::FetchArtifactRequest request;
  request.set_artifact_id(artifact.id());
  request.set_offset(offset);
  request.set_chunk_bytes(chunk_bytes);
  auto reader = stub_->FetchArtifact(ctx.get(), request);
  lorad::v1::ArtifactChunk chunk;
  std::string server_sha;
  int64_t received = 0;
  while (reader->Read(&chunk)) {
    if (chunk.offset() != offset) {
      ctx->TryCancel();
      reader->Finish();
      return absl::DataLossError(absl::StrCat("chunk at offset ", chunk.offset(), ", expected ", offset));
    }
    out.write(chunk.data().data(), static_cast<std::streamsize>(chunk.data().size()));
    hash.Update(chunk.data());
    offset += static_cast<int64_t>(chunk.data().size());
    received += static_cast<int64_t>(chunk.data().size());
    if (progress) progress(offset, chunk.total_bytes());
    if (chunk.last()) server_sha = chunk.sha256();
    if (stop_after_bytes > 0 && received >= stop_after_bytes && !chunk.last()) {
      out.close();
      ctx->TryCancel();
      reader->Finish();
      return absl::AbortedError(absl::StrCat("stopped after ", received, " bytes (as asked)"));
    }
  }
  out.close();
  grpc::Status status = reader->Finish();
  if (!status.ok()) return FromGrpc(status);  // keep the .part: the next fetch resumes
  const std::string local_sha = hash.HexDigest();
  if (server_sha.empty() || local_sha != server_sha) {
    fs::remove(part, ec);
    return absl::DataLossError(absl::StrCat("sha256 mismatch for ", artifact.name(), ": got ", local_sha,
                                            ", daemon says ", server_sha, "; fetch again"));
  }
  fs::rename(part, target, ec);
  if (ec) return absl::InternalError(absl::StrCat("renaming into ", target.string(), ": ", ec.message()));
  return absl::OkStatus();
}

}  // namespace lorad::client
