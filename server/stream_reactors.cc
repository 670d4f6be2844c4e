#include "server/stream_reactors.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <deque>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "core/base/sha256.h"
#include "server/status_util.h"

namespace lorad::server {
namespace {

class EventStream final : public grpc::ServerWriteReactor<lorad::v1::JobEvent> {
 public:
  EventStream(EventHub* hub, int64_t job_id, int64_t after_seq, bool follow)
      : hub_(hub), job_id_(job_id), follow_(follow), last_sent_(after_seq) {
    waker_ = hub_->Subscribe(job_id_, [this] { Pump(); });
    Pump();
  }

  void OnWriteDone(bool ok) override {
    absl::MutexLock lock(&mu_);
    write_in_flight_ = false;
    if (!ok) {
      FinishLocked(grpc::Status(grpc::StatusCode::UNAVAILABLE, "client went away"));
      return;
    }
    PumpLocked();
  }

  void OnCancel() override {
    absl::MutexLock lock(&mu_);
    FinishLocked(grpc::Status::CANCELLED);
  }

  void OnDone() override {
    waker_->Kill();  // no Pump runs after this returns
    hub_->Unsubscribe(job_id_, waker_);
    delete this;
  }

 private:
  void Pump() {
    absl::MutexLock lock(&mu_);
    PumpLocked();
  }

  void PumpLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_ || write_in_flight_) return;
    if (pending_.empty()) {
      auto batch = hub_->Fetch(job_id_, last_queued_ > last_sent_ ? last_queued_ : last_sent_, 256);
      if (!batch.ok()) {
        FinishLocked(ToGrpcStatus(batch.status()));
        return;
      }
      for (auto& e : batch->events) {
        last_queued_ = e.seq;
        pending_.push_back(std::move(e));
      }
      job_done_ = batch->done;
      if (pending_.empty() && (job_done_ || !follow_)) {
        FinishLocked(grpc::Status::OK);
        return;
      }
    }
    if (pending_.empty()) return;  // wait for the hub to wake us
    current_.Clear();
    current_.set_job_id(job_id_);
    current_.set_seq(pending_.front().seq);
    *current_.mutable_event() = std::move(pending_.front().event);
    last_sent_ = pending_.front().seq;
    pending_.pop_front();
    write_in_flight_ = true;
    StartWrite(&current_);
  }

  void FinishLocked(const grpc::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_) return;
    finished_ = true;
    Finish(status);
  }

  EventHub* hub_;
  const int64_t job_id_;
  const bool follow_;
  std::shared_ptr<Waker> waker_;
  absl::Mutex mu_;
  int64_t last_sent_ ABSL_GUARDED_BY(mu_);
  int64_t last_queued_ ABSL_GUARDED_BY(mu_) = 0;
  std::deque<storage::StoredEvent> pending_ ABSL_GUARDED_BY(mu_);
  lorad::v1::JobEvent current_ ABSL_GUARDED_BY(mu_);
  bool write_in_flight_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  bool job_done_ ABSL_GUARDED_BY(mu_) = false;
};

class ArtifactStream final : public grpc::ServerWriteReactor<lorad::v1::ArtifactChunk> {
 public:
  ArtifactStream(const storage::ArtifactRecord& artifact, int64_t offset, int chunk_bytes)
      : artifact_(artifact), offset_(offset), chunk_bytes_(chunk_bytes) {
    fd_ = ::open(artifact_.path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) {
      Finish(grpc::Status(grpc::StatusCode::NOT_FOUND,
                          absl::StrCat("artifact file ", artifact_.path, ": ", std::strerror(errno))));
      return;
    }
    total_ = ::lseek(fd_, 0, SEEK_END);
    if (offset_ < 0 || offset_ > total_) {
      Finish(grpc::Status(grpc::StatusCode::OUT_OF_RANGE,
                          absl::StrCat("offset ", offset_, " is outside the file (", total_, " bytes)")));
      return;
    }
    if (artifact_.bytes != 0 && artifact_.bytes != total_) {
      Finish(grpc::Status(grpc::StatusCode::DATA_LOSS,
                          absl::StrCat(artifact_.path, " changed size since it was recorded (",
                                       artifact_.bytes, " -> ", total_, " bytes)")));
      return;
    }
    SendNext();
  }

  void OnWriteDone(bool ok) override {
    if (!ok) {
      Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "client went away"));
      return;
    }
    if (sent_last_) {
      Finish(grpc::Status::OK);
      return;
    }
    SendNext();
  }

  void OnDone() override {
    if (fd_ >= 0) ::close(fd_);
    delete this;
  }

 private:
  // Reactions are serialised by gRPC (one write in flight), so no mutex is needed.
  void SendNext() {
    chunk_.Clear();
    std::string* data = chunk_.mutable_data();
    const int64_t want = std::min<int64_t>(chunk_bytes_, total_ - offset_);
    data->resize(static_cast<size_t>(want));
    int64_t got = 0;
    while (got < want) {
      const ssize_t r = ::pread(fd_, data->data() + got, static_cast<size_t>(want - got), offset_ + got);
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) {
        Finish(grpc::Status(grpc::StatusCode::DATA_LOSS,
                            absl::StrCat("reading ", artifact_.path, " at ", offset_ + got, ": ",
                                         r < 0 ? std::strerror(errno) : "file shrank")));
        return;
      }
      got += r;
    }
    chunk_.set_offset(offset_);
    chunk_.set_total_bytes(total_);
    offset_ += want;
    if (offset_ >= total_) {
      chunk_.set_last(true);
      std::string sha = artifact_.sha256;
      if (sha.empty()) {
        auto computed = Sha256File(artifact_.path);
        if (!computed.ok()) {
          Finish(ToGrpcStatus(computed.status()));
          return;
        }
        sha = *computed;
      }
      chunk_.set_sha256(sha);
      sent_last_ = true;
    }
    StartWrite(&chunk_);
  }

  storage::ArtifactRecord artifact_;
  int64_t offset_;
  const int chunk_bytes_;
  int fd_ = -1;
  int64_t total_ = 0;
  bool sent_last_ = false;
  lorad::v1::ArtifactChunk chunk_;
};

}  // namespace

grpc::ServerWriteReactor<lorad::v1::JobEvent>* NewEventStream(EventHub* hub, int64_t job_id,
                                                              int64_t after_seq, bool follow) {
  return new EventStream(hub, job_id, after_seq, follow);
}

grpc::ServerWriteReactor<lorad::v1::ArtifactChunk>* NewArtifactStream(
    const storage::ArtifactRecord& artifact, int64_t offset, int chunk_bytes) {
  return new ArtifactStream(artifact, offset, chunk_bytes);
}

}  // namespace lorad::server
