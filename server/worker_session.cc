#include "server/worker_session.h"

#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <string>

#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "core/base/clock.h"
#include "proto/event_stream.h"

namespace lorad::server {
namespace {
using Clock = std::chrono::steady_clock;

// Keeps the last lines a worker wrote to stderr, for a failure reason.
class StderrTail {
 public:
  void Append(const char* data, size_t n) {
    text_.append(data, n);
    if (text_.size() > 16384) text_.erase(0, text_.size() - 8192);
  }
  std::string LastLines(int count) const {
    std::vector<std::string> lines = absl::StrSplit(text_, '\n', absl::SkipWhitespace());
    if (static_cast<int>(lines.size()) > count) lines.erase(lines.begin(), lines.end() - count);
    return absl::StrJoin(lines, "\n");
  }

 private:
  std::string text_;
};

class Session {
 public:
  Session(WorkerProcess* worker, const WorkerSessionOptions& options)
      : worker_(worker), options_(options), log_(options.log_path, std::ios::app) {
    report_.last_step = options.first_step;
  }

  WorkerReport Run() {
    bool exited = false;
    while (events_open_ || stderr_open_) {
      pollfd fds[2];
      int n = 0;
      if (events_open_) fds[n++] = {worker_->events_fd(), POLLIN, 0};
      if (stderr_open_) fds[n++] = {worker_->stderr_fd(), POLLIN, 0};
      ::poll(fds, n, exited ? 0 : 100);
      if (events_open_) ReadEvents();
      if (stderr_open_) ReadStderr();
      SignalIfAsked();
      if (exited) break;  // one last non-blocking drain happened above
      if (worker_->TryWait(&report_.exit)) exited = true;  // grandchildren may hold the pipes
    }
    report_.exit = worker_->Wait();
    report_.stderr_tail = tail_.LastLines(8);
    return std::move(report_);
  }

 private:
  void ReadEvents() {
    while (true) {
      const ssize_t r = ::read(worker_->events_fd(), buffer_, sizeof(buffer_));
      if (r > 0) {
        decoder_.Append(buffer_, static_cast<size_t>(r));
        continue;
      }
      if (r == 0) events_open_ = false;
      break;  // EAGAIN or EOF
    }
    std::vector<storage::EventWrite> burst;
    while (report_.stream_error.empty()) {
      auto next = decoder_.Next();
      if (!next.ok()) {
        report_.stream_error = std::string(next.status().message());
        worker_->Signal(SIGKILL);  // a corrupt event stream cannot be trusted
        break;
      }
      if (!next->has_value()) break;
      Map(std::move(**next), &burst);
    }
    // The burst read from the pipe is committed in one transaction.
    if (!burst.empty()) options_.commit(burst);
    if (!events_open_) worker_->CloseEvents();
  }

  void Map(lorad::v1::Event event, std::vector<storage::EventWrite>* burst) {
    std::optional<ArtifactFile> file;
    if (auto reported = ReportedArtifactPath(event)) {
      const bool has_sha = event.has_checkpoint() ? !event.checkpoint().sha256().empty()
                                                  : !event.sample().sha256().empty();
      file = InspectArtifactFile(*reported, options_.job, !has_sha);
    }
    MappedEvent mapped = MapWorkerEvent(std::move(event), file, options_.job, NowUnixMs());
    if (mapped.finished) report_.finished = std::move(mapped.finished);
    if (mapped.step) report_.last_step = *mapped.step;
    if (mapped.lora) report_.last_lora = *mapped.lora;
    for (auto& write : mapped.writes) burst->push_back(std::move(write));
  }

  void ReadStderr() {
    while (true) {
      const ssize_t r = ::read(worker_->stderr_fd(), buffer_, sizeof(buffer_));
      if (r > 0) {
        tail_.Append(buffer_, static_cast<size_t>(r));
        log_.write(buffer_, r);
        continue;
      }
      if (r == 0) stderr_open_ = false;
      break;
    }
    log_.flush();
    if (!stderr_open_) worker_->CloseStderr();
  }

  void SignalIfAsked() {
    if (!signalled_ && options_.stop_requested()) {
      worker_->Signal(SIGTERM);
      signalled_ = true;
      kill_at_ = Clock::now() + std::chrono::milliseconds(static_cast<int64_t>(options_.grace_s * 1000));
    }
    if (signalled_ && !killed_ && Clock::now() >= kill_at_) {
      worker_->Signal(SIGKILL);
      killed_ = true;
    }
  }

  WorkerProcess* worker_;  // borrowed for Run()
  const WorkerSessionOptions& options_;
  std::ofstream log_;
  StderrTail tail_;
  events::EventDecoder decoder_;
  WorkerReport report_;
  bool events_open_ = true;
  bool stderr_open_ = true;
  bool signalled_ = false;
  bool killed_ = false;
  Clock::time_point kill_at_;
  char buffer_[65536];
};

}  // namespace

WorkerReport SuperviseWorker(WorkerProcess* worker, const WorkerSessionOptions& options) {
  return Session(worker, options).Run();
}

}  // namespace lorad::server
