#include "server/models/model_rpc.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <optional>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "server/net/http_client.h"

namespace lorad::server {
namespace {

grpc::Status ToGrpc(const absl::Status& status) {
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

class ModelUpload final : public grpc::ServerReadReactor<lorad::v1::UploadModelRequest> {
 public:
  ModelUpload(ModelManager* manager, lorad::v1::Model* response) : manager_(manager), response_(response) {
    StartRead(&request_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) return Complete();  // the client closed its side, or the connection dropped
    const grpc::Status status = Consume();
    if (!status.ok()) return Stop(status);
    if (done_) return;
    StartRead(&request_);
  }

  void OnDone() override {
    CloseFile();
    if (ticket_ && !ticket_->ready) {
      if (!completed_) manager_->UploadProgress(ticket_->record.id, received_);
      manager_->EndUpload(ticket_->record.id);
    }
    delete this;
  }

 private:
  grpc::Status Consume() {
    if (request_.has_header()) {
      if (ticket_) return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "the upload header must come once, first");
      const auto& header = request_.header();
      auto ticket = manager_->BeginUpload(header.sha256(), header.size(), header.name(), header.offset());
      if (!ticket.ok()) return ToGrpc(ticket.status());
      ticket_ = std::move(*ticket);
      if (ticket_->ready) {  // stored already: nothing to send
        ToProto(ticket_->record, response_);
        done_ = true;
        Finish(grpc::Status::OK);
        return grpc::Status::OK;
      }
      received_ = header.offset();
      size_ = header.size();
      fd_ = ::open(ticket_->partial.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
      if (fd_ < 0 || ::ftruncate(fd_, received_) != 0) {
        return grpc::Status(grpc::StatusCode::INTERNAL,
                            absl::StrCat("cannot write ", ticket_->partial.string(), ": ", std::strerror(errno)));
      }
      return grpc::Status::OK;
    }
    if (!ticket_) return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "the upload header must come first");
    const std::string& data = request_.chunk();
    if (received_ + static_cast<int64_t>(data.size()) > size_) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          absl::StrCat("more bytes than the header's size of ", size_));
    }
    size_t written = 0;
    while (written < data.size()) {
      const ssize_t n = ::pwrite(fd_, data.data() + written, data.size() - written, received_ + written);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        return grpc::Status(errno == ENOSPC ? grpc::StatusCode::RESOURCE_EXHAUSTED : grpc::StatusCode::INTERNAL,
                            absl::StrCat("writing the model: ", std::strerror(errno)));
      }
      written += static_cast<size_t>(n);
    }
    received_ += static_cast<int64_t>(data.size());
    if (absl::Now() - last_report_ > absl::Milliseconds(250)) {
      last_report_ = absl::Now();
      manager_->UploadProgress(ticket_->record.id, received_);
    }
    return grpc::Status::OK;
  }

  void Complete() {
    if (!ticket_) return Stop(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "the upload sent no header"));
    CloseFile();
    manager_->UploadProgress(ticket_->record.id, received_);
    if (received_ < size_) {
      return Stop(grpc::Status(grpc::StatusCode::ABORTED,
                               absl::StrCat("upload stopped at byte ", received_, " of ", size_,
                                            "; the daemon keeps them: run the same upload again to resume")));
    }
    completed_ = true;
    // Hashing gigabytes does not belong in a reaction: the check pool answers.
    manager_->CompleteUploadAsync(ticket_->record.id, [this](absl::StatusOr<storage::ModelRecord> stored) {
      if (!stored.ok()) return Finish(ToGrpc(stored.status()));
      ToProto(*stored, response_);
      Finish(grpc::Status::OK);
    });
  }

  void Stop(const grpc::Status& status) {
    done_ = true;
    CloseFile();
    Finish(status);
  }

  void CloseFile() {
    if (fd_ >= 0) {
      ::fsync(fd_);
      ::close(fd_);
    }
    fd_ = -1;
  }

  ModelManager* manager_;
  lorad::v1::Model* response_;
  lorad::v1::UploadModelRequest request_;
  std::optional<ModelManager::UploadTicket> ticket_;
  int fd_ = -1;
  int64_t received_ = 0;
  int64_t size_ = 0;
  bool done_ = false;
  bool completed_ = false;
  absl::Time last_report_ = absl::InfinitePast();
};

bool Terminal(const lorad::v1::Model& model) {
  return model.state() == lorad::v1::MODEL_READY || model.state() == lorad::v1::MODEL_FAILED;
}

class ModelWatch final : public grpc::ServerWriteReactor<lorad::v1::Model> {
 public:
  // What the manager's watcher reaches: null once the reactor is gone.
  struct Link {
    absl::Mutex mu;
    ModelWatch* watch ABSL_GUARDED_BY(mu) = nullptr;
  };

  ModelWatch(ModelManager* manager, const storage::ModelRecord& model)
      : manager_(manager), link_(std::make_shared<Link>()) {
    {
      absl::MutexLock lock(&link_->mu);
      link_->watch = this;
    }
    std::shared_ptr<Link> link = link_;
    token_ = manager_->Watch(model.id, [link](const storage::ModelRecord& changed) {
      absl::MutexLock lock(&link->mu);
      if (link->watch != nullptr) link->watch->Offer(changed);
    });
    Offer(model);
  }

  void OnWriteDone(bool ok) override {
    absl::MutexLock lock(&mu_);
    if (!ok) return FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "the client went away"));
    if (Terminal(current_)) return FinishLocked(grpc::Status::OK);
    if (pending_) {
      current_ = std::move(*pending_);
      pending_.reset();
      StartWrite(&current_);
      return;
    }
    writing_ = false;
  }

  void OnCancel() override {
    absl::MutexLock lock(&mu_);
    FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled"));
  }

  void OnDone() override {
    {
      absl::MutexLock lock(&link_->mu);
      link_->watch = nullptr;
    }
    manager_->Unwatch(token_);
    delete this;
  }

 private:
  void Offer(const storage::ModelRecord& model) {
    absl::MutexLock lock(&mu_);
    if (finished_) return;
    lorad::v1::Model proto;
    ToProto(model, &proto);
    if (writing_) {
      pending_ = std::move(proto);  // only the latest matters
      return;
    }
    writing_ = true;
    current_ = std::move(proto);
    StartWrite(&current_);
  }

  void FinishLocked(const grpc::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_) return;
    finished_ = true;
    Finish(status);
  }

  ModelManager* manager_;
  std::shared_ptr<Link> link_;
  int64_t token_ = 0;
  absl::Mutex mu_;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  lorad::v1::Model current_ ABSL_GUARDED_BY(mu_);
  std::optional<lorad::v1::Model> pending_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

void ToProto(const storage::ModelRecord& m, lorad::v1::Model* out) {
  out->set_id(m.id);
  out->set_sha256(m.sha256);
  out->set_name(m.name);
  out->set_bytes(m.bytes);
  out->set_bytes_done(m.state == storage::ModelState::kReady ? m.bytes : m.bytes_done);
  out->set_family(m.family);
  out->set_prediction(m.prediction);
  out->set_lineage(m.lineage);
  out->set_source_url(net::RedactUrl(m.source_url));
  out->set_state(static_cast<lorad::v1::ModelState>(static_cast<int>(m.state)));
  out->set_reason(m.reason);
  out->set_created_unix_ms(m.created_ms);
  out->set_path(m.path);
}

grpc::ServerReadReactor<lorad::v1::UploadModelRequest>* NewModelUpload(ModelManager* manager,
                                                                      lorad::v1::Model* response) {
  return new ModelUpload(manager, response);
}

grpc::ServerWriteReactor<lorad::v1::Model>* NewModelWatch(ModelManager* manager, const storage::ModelRecord& model) {
  return new ModelWatch(manager, model);
}

}  // namespace lorad::server
