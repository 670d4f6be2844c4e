#include "client/client.h"

#include <fcntl.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <fstream>
#include <map>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "core/base/sha256.h"

namespace lorad::client {
namespace fs = std::filesystem;

namespace {

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// The .part file of a fetch, appended to with plain write(2): no user-space
// buffer to copy through, no flush or fsync per chunk, and every short write
// or error reported (a lost write would otherwise pass the checksum, which is
// taken over the bytes received, not the bytes stored).
class PartFile {
 public:
  PartFile() = default;
  PartFile(const PartFile&) = delete;
  PartFile& operator=(const PartFile&) = delete;
  ~PartFile() {
    if (fd_ >= 0) ::close(fd_);
  }

  absl::Status Open(const fs::path& path) {
    path_ = path.string();
    fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd_ < 0) return absl::PermissionDeniedError(absl::StrCat("cannot write ", path_, ": ", std::strerror(errno)));
    return absl::OkStatus();
  }

  absl::Status Append(std::string_view bytes) {
    while (!bytes.empty()) {
      const ssize_t n = ::write(fd_, bytes.data(), bytes.size());
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == ENOSPC || errno == EDQUOT)) {
        return absl::ResourceExhaustedError(
            absl::StrCat("writing ", path_, ": ", std::strerror(errno), "; free space and fetch again (it resumes)"));
      }
      if (n <= 0) {
        return absl::InternalError(
            absl::StrCat("writing ", path_, ": ", n < 0 ? std::strerror(errno) : "nothing written"));
      }
      bytes.remove_prefix(static_cast<size_t>(n));
    }
    return absl::OkStatus();
  }

  // Reports errors that only show at close (NFS, quota).
  absl::Status Close() {
    const int fd = fd_;
    fd_ = -1;
    if (fd >= 0 && ::close(fd) != 0) {
      return absl::ResourceExhaustedError(absl::StrCat("closing ", path_, ": ", std::strerror(errno)));
    }
    return absl::OkStatus();
  }

 private:
  std::string path_;
  int fd_ = -1;
};

// Hashes chunks on a thread of its own, in the order they are added, so the
// receiving thread only reads and writes. At most kMaxQueued chunks wait: that
// bounds memory, and a full queue stops the reads, which slows the daemon to
// the hash's pace through gRPC flow control. Hashed buffers come back through
// SpareBuffer() for the next read, so a long fetch allocates a handful of
// chunk buffers, not one per chunk.
class ChunkHasher {
 public:
  explicit ChunkHasher(lorad::Sha256 hash) : hash_(std::move(hash)), thread_([this] { Run(); }) {}
  ChunkHasher(const ChunkHasher&) = delete;
  ChunkHasher& operator=(const ChunkHasher&) = delete;
  // Stops without hashing what is still queued (HexDigest drains first).
  ~ChunkHasher() {
    {
      absl::MutexLock lock(&mu_);
      closing_ = true;
    }
    thread_.join();
  }

  // Queues `bytes` for hashing; blocks while kMaxQueued chunks are waiting.
  void Add(std::string bytes) {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(this, &ChunkHasher::HasRoom));
    queue_.push_back(std::move(bytes));
  }

  // A hashed buffer to reuse (empty if none is free yet).
  std::string SpareBuffer() {
    absl::MutexLock lock(&mu_);
    if (spare_.empty()) return std::string();
    std::string buffer = std::move(spare_.back());
    spare_.pop_back();
    return buffer;
  }

  // Waits until every added chunk is hashed, then finishes the hash; call once.
  std::string HexDigest() {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(this, &ChunkHasher::Drained));
    return hash_.HexDigest();
  }

 private:
  static constexpr size_t kMaxQueued = 4;

  bool HasRoom() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return queue_.size() < kMaxQueued; }
  bool Drained() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return queue_.empty() && !hashing_; }
  bool HasWork() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !queue_.empty() || closing_; }

  void Run() {
    absl::MutexLock lock(&mu_);
    while (true) {
      mu_.Await(absl::Condition(this, &ChunkHasher::HasWork));
      if (closing_) return;  // the fetch ended early: what is queued no longer counts
      std::string bytes = std::move(queue_.front());
      queue_.pop_front();
      hashing_ = true;
      mu_.Unlock();
      // hash_ is only touched here while hashing_ is set; HexDigest waits for it.
      hash_.Update(bytes);
      mu_.Lock();
      hashing_ = false;
      if (spare_.size() < kMaxQueued) {
        bytes.clear();  // keeps the capacity
        spare_.push_back(std::move(bytes));
      }
    }
  }

  absl::Mutex mu_;
  lorad::Sha256 hash_;  // written by the hashing thread only, read once drained
  std::deque<std::string> queue_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> spare_ ABSL_GUARDED_BY(mu_);
  bool hashing_ ABSL_GUARDED_BY(mu_) = false;
  bool closing_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;  // last: starts after the members it uses exist
};

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

absl::StatusOr<std::string> LocalDatasetId(const fs::path& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return absl::NotFoundError(absl::StrCat(dir.string(), " is not a folder"));
  std::map<std::string, std::string> files;  // sorted as the daemon sorts them
  for (auto it = fs::recursive_directory_iterator(dir, ec); !ec && it != fs::end(it); it.increment(ec)) {
    if (!it->is_regular_file()) continue;
    auto sha = lorad::Sha256File(it->path());
    if (!sha.ok()) return sha.status();
    files[fs::relative(it->path(), dir).generic_string()] = *sha;
  }
  if (ec) return absl::InternalError(absl::StrCat("listing ", dir.string(), ": ", ec.message()));
  if (files.empty()) return absl::InvalidArgumentError(absl::StrCat(dir.string(), " holds no files"));
  lorad::Sha256 id;
  for (const auto& [path, sha] : files) id.Update(absl::StrCat(path, "\t", sha, "\n"));
  return id.HexDigest().substr(0, 32);
}

absl::StatusOr<Client::EnsuredDataset> Client::EnsureDataset(const fs::path& dir, const std::string& name) {
  auto id = LocalDatasetId(dir);
  if (!id.ok()) return id.status();
  lorad::v1::ListDatasetsResponse known;
  auto ctx = Context();
  if (grpc::Status status = stub_->ListDatasets(ctx.get(), {}, &known); !status.ok()) return FromGrpc(status);
  for (const auto& dataset : known.datasets()) {
    if (dataset.id() == *id) return EnsuredDataset{dataset, false};
  }
  auto uploaded = UploadDataset(dir, name);
  if (!uploaded.ok()) return uploaded.status();
  if (uploaded->id() != *id) {
    // The folder changed while it was read, or the daemon hashes differently.
    return absl::DataLossError(absl::StrCat("uploaded ", dir.string(), " as dataset ", uploaded->id(),
                                            " but its files hash to ", *id, " here; was it being modified?"));
  }
  return EnsuredDataset{*uploaded, true};
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
  PartFile out;
  if (auto s = out.Open(part); !s.ok()) return s;
  // From here the hash runs on its own thread: the tree's SHA-256 is the slowest
  // stage of a fetch, several times slower than the stream, so it should never
  // wait on a network read or a file write.
  ChunkHasher hasher(std::move(hash));
  auto ctx = Context(true);
  lorad::v1::FetchArtifactRequest request;
  request.set_artifact_id(artifact.id());
  request.set_offset(offset);
  request.set_chunk_bytes(chunk_bytes);
  auto reader = stub_->FetchArtifact(ctx.get(), request);
  lorad::v1::ArtifactChunk chunk;
  std::string server_sha;
  int64_t received = 0;
  while (true) {
    // Parse into a buffer the hasher has finished with: its capacity is reused.
    *chunk.mutable_data() = hasher.SpareBuffer();
    if (!reader->Read(&chunk)) break;
    absl::Status failed;
    if (chunk.offset() != offset) {
      failed = absl::DataLossError(absl::StrCat("chunk at offset ", chunk.offset(), ", expected ", offset));
    } else {
      failed = out.Append(chunk.data());
    }
    if (!failed.ok()) {
      ctx->TryCancel();
      reader->Finish();
      return failed;  // the .part holds a prefix of the file: the next fetch resumes from its end
    }
    const auto size = static_cast<int64_t>(chunk.data().size());
    hasher.Add(std::move(*chunk.mutable_data()));
    offset += size;
    received += size;
    if (progress) progress(offset, chunk.total_bytes());
    if (chunk.last()) server_sha = chunk.sha256();
    if (stop_after_bytes > 0 && received >= stop_after_bytes && !chunk.last()) {
      ctx->TryCancel();
      reader->Finish();
      return absl::AbortedError(absl::StrCat("stopped after ", received, " bytes (as asked)"));
    }
  }
  grpc::Status status = reader->Finish();
  if (!status.ok()) return FromGrpc(status);  // keep the .part: the next fetch resumes
  if (auto s = out.Close(); !s.ok()) return s;
  const std::string local_sha = hasher.HexDigest();
  if (server_sha.empty() || local_sha != server_sha) {
    fs::remove(part, ec);
    return absl::DataLossError(absl::StrCat("sha256 mismatch for ", artifact.name(), ": got ", local_sha,
                                            ", daemon says ", server_sha, "; fetch again"));
  }
  fs::rename(part, target, ec);
  if (ec) return absl::InternalError(absl::StrCat("renaming into ", target.string(), ": ", ec.message()));
  return absl::OkStatus();
}

absl::StatusOr<lorad::v1::Model> Client::UploadModel(const fs::path& file, const std::string& name,
                                                     int64_t stop_after_bytes,
                                                     const std::function<void(int64_t, int64_t)>& progress) {
  std::error_code ec;
  const int64_t size = fs::is_regular_file(file, ec) ? static_cast<int64_t>(fs::file_size(file, ec)) : -1;
  if (size <= 0) return absl::NotFoundError(absl::StrCat(file.string(), " is not a non-empty file"));
  auto sha256 = lorad::Sha256File(file);
  if (!sha256.ok()) return sha256.status();
  std::string model_name = name;
  if (model_name.empty()) {
    model_name = file.stem().string();
    for (char& c : model_name) {
      if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-') c = '_';
    }
  }
  absl::Status last;
  for (int attempt = 1; attempt <= 5; ++attempt) {
    if (attempt > 1) std::this_thread::sleep_for(std::chrono::seconds(1));
    // What the daemon holds of this file already.
    int64_t offset = 0;
    {
      lorad::v1::GetModelRequest request;
      request.set_model(absl::StrCat("sha256:", *sha256));
      lorad::v1::Model held;
      auto ctx = Context();
      grpc::Status status = stub_->GetModel(ctx.get(), request, &held);
      if (status.ok() && held.state() == lorad::v1::MODEL_READY) return held;
      if (status.ok() && held.state() == lorad::v1::MODEL_UPLOADING) offset = held.bytes_done();
      if (!status.ok() && status.error_code() != grpc::StatusCode::NOT_FOUND) {
        last = FromGrpc(status);
        if (status.error_code() == grpc::StatusCode::UNAVAILABLE) continue;
        return last;
      }
    }
    auto ctx = Context(true);
    ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::hours(6));
    lorad::v1::Model response;
    auto writer = stub_->UploadModel(ctx.get(), &response);
    lorad::v1::UploadModelRequest request;
    auto* header = request.mutable_header();
    header->set_sha256(*sha256);
    header->set_size(size);
    header->set_name(model_name);
    header->set_offset(offset);
    bool ok = writer->Write(request);
    std::ifstream in(file, std::ios::binary);
    in.seekg(offset);
    std::string buffer(1 << 20, '\0');
    int64_t sent = offset;
    int64_t this_call = 0;
    bool stopped = false;
    while (ok && sent < size) {
      in.read(buffer.data(), static_cast<std::streamsize>(std::min<int64_t>(buffer.size(), size - sent)));
      const auto n = static_cast<size_t>(in.gcount());
      if (n == 0) return absl::DataLossError(absl::StrCat(file.string(), " changed while it was uploaded"));
      request.Clear();
      request.set_chunk(buffer.data(), n);
      ok = writer->Write(request);
      sent += static_cast<int64_t>(n);
      this_call += static_cast<int64_t>(n);
      if (progress) progress(sent, size);
      if (stop_after_bytes > 0 && this_call >= stop_after_bytes && sent < size) {
        stopped = true;
        ctx->TryCancel();
        break;
      }
    }
    if (!stopped) writer->WritesDone();
    grpc::Status status = writer->Finish();
    if (stopped) return absl::AbortedError(absl::StrCat("stopped after ", this_call, " bytes (as asked)"));
    if (status.ok()) return response;
    last = FromGrpc(status);
    // A dropped connection or the daemon still closing the last call: again, from what it kept.
    const auto code = status.error_code();
    if (code != grpc::StatusCode::UNAVAILABLE && code != grpc::StatusCode::ABORTED &&
        code != grpc::StatusCode::FAILED_PRECONDITION) {
      return last;
    }
  }
  return last;
}

}  // namespace lorad::client
