#include "server/worker_session.h"

#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "core/base/clock.h"

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
  std::string LastLines(int count) const { return server::LastLines(text_, count); }

 private:
  std::string text_;
};

std::filesystem::path RankLogPath(const std::filesystem::path& log_path, size_t rank) {
  if (rank == 0) return log_path;
  std::filesystem::path path = log_path;
  path.replace_filename(absl::StrCat(log_path.stem().string(), ".rank", rank, log_path.extension().string()));
  return path;
}

bool CleanExit(const ExitInfo& exit) { return exit.exit_code == 0 && exit.term_signal == 0; }

struct Rank {
  WorkerProcess* process = nullptr;  // borrowed
  std::ofstream log;
  StderrTail tail;
  bool stderr_open = true;
  bool exited = false;
  ExitInfo exit;
};

class Session {
 public:
  Session(const std::vector<WorkerProcess*>& ranks, const WorkerSessionOptions& options)
      : options_(options), ingest_(options, &report_) {
    report_.last_step = options.first_step;
    for (size_t r = 0; r < ranks.size(); ++r) {
      auto rank = std::make_unique<Rank>();
      rank->process = ranks[r];
      rank->log.open(RankLogPath(options.log_path, r), std::ios::app);
      ranks_.push_back(std::move(rank));
    }
  }

  WorkerReport Run() {
    bool all_exited = false;
    while (true) {
      std::vector<pollfd> fds;
      if (events_open_) fds.push_back({ranks_[0]->process->events_fd(), POLLIN, 0});
      for (auto& rank : ranks_) {
        if (rank->stderr_open) fds.push_back({rank->process->stderr_fd(), POLLIN, 0});
      }
      if (fds.empty() && all_exited) break;
      ::poll(fds.data(), fds.size(), all_exited ? 0 : 100);
      if (events_open_) ReadEvents();
      for (auto& rank : ranks_) ReadStderr(*rank);
      SignalIfAsked();
      if (all_exited) break;  // one last non-blocking drain happened above
      all_exited = ReapExited();  // grandchildren may hold the pipes
    }
    for (size_t r = 0; r < ranks_.size(); ++r) {
      ranks_[r]->exit = ranks_[r]->process->Wait();
    }
    report_.exit = ranks_[0]->exit;
    report_.stderr_tail = ranks_[0]->tail.LastLines(8);
    if (first_failed_ > 0) {
      const Rank& failed = *ranks_[first_failed_];
      report_.first_failure = absl::StrCat("rank ", first_failed_, " of ", ranks_.size(), " failed first: lorad-train ",
                                       DescribeTrainerExit(failed.exit));
      const std::string tail = failed.tail.LastLines(8);
      if (!tail.empty()) absl::StrAppend(&report_.first_failure, "; its last stderr lines:\n", tail);
    }
    return std::move(report_);
  }

 private:
  void ReadEvents() {
    WorkerProcess* rank0 = ranks_[0]->process;
    while (true) {
      const ssize_t r = ::read(rank0->events_fd(), buffer_, sizeof(buffer_));
      if (r > 0) {
        if (!ingest_.Feed(buffer_, static_cast<size_t>(r))) {
          SignalAll(SIGKILL);  // a corrupt event stream cannot be trusted
          events_open_ = false;
          break;
        }
        continue;
      }
      if (r == 0) events_open_ = false;
      break;  // EAGAIN or EOF
    }
    if (!events_open_) rank0->CloseEvents();
  }

  void ReadStderr(Rank& rank) {
    if (!rank.stderr_open) return;
    while (true) {
      const ssize_t r = ::read(rank.process->stderr_fd(), buffer_, sizeof(buffer_));
      if (r > 0) {
        rank.tail.Append(buffer_, static_cast<size_t>(r));
        rank.log.write(buffer_, r);
        continue;
      }
      if (r == 0) rank.stderr_open = false;
      break;
    }
    rank.log.flush();
    if (!rank.stderr_open) rank.process->CloseStderr();
  }

  // Reaps the ranks that exited; the first exit decides what the others get.
  // True once all have exited.
  bool ReapExited() {
    bool all = true;
    for (size_t r = 0; r < ranks_.size(); ++r) {
      Rank& rank = *ranks_[r];
      if (rank.exited) continue;
      if (!rank.process->TryWait(&rank.exit)) {
        all = false;
        continue;
      }
      rank.exited = true;
      if (ranks_.size() == 1 || signalled_) continue;
      if (!CleanExit(rank.exit)) {
        // A dead peer: the others would wait in a collective until its timeout.
        if (first_failed_ < 0) first_failed_ = static_cast<int>(r);
        StartStop();
      } else if (!peer_deadline_) {
        peer_deadline_ = Clock::now() + Grace();
      }
    }
    if (!all && peer_deadline_ && Clock::now() >= *peer_deadline_) SignalAll(SIGKILL);
    return all;
  }

  std::chrono::milliseconds Grace() const {
    return std::chrono::milliseconds(static_cast<int64_t>(options_.grace_s * 1000));
  }

  void SignalAll(int sig) {
    for (auto& rank : ranks_) {
      if (!rank->exited) rank->process->Signal(sig);
    }
  }

  void StartStop() {
    SignalAll(SIGTERM);
    signalled_ = true;
    kill_at_ = Clock::now() + Grace();
  }

  void SignalIfAsked() {
    const bool asked = (options_.cancel_requested && options_.cancel_requested()) ||
                       (options_.daemon_stopping && options_.daemon_stopping());
    if (!signalled_ && asked) StartStop();
    if (signalled_ && !killed_ && Clock::now() >= kill_at_) {
      SignalAll(SIGKILL);
      killed_ = true;
    }
  }

  const WorkerSessionOptions& options_;
  WorkerReport report_;
  EventIngest ingest_;
  std::vector<std::unique_ptr<Rank>> ranks_;
  bool events_open_ = true;
  bool signalled_ = false;
  bool killed_ = false;
  int first_failed_ = -1;
  std::optional<Clock::time_point> peer_deadline_;
  Clock::time_point kill_at_;
  char buffer_[65536];
};

}  // namespace

std::string LastLines(const std::string& text, int count) {
  std::vector<std::string> lines = absl::StrSplit(text, '\n', absl::SkipWhitespace());
  if (static_cast<int>(lines.size()) > count) lines.erase(lines.begin(), lines.end() - count);
  return absl::StrJoin(lines, "\n");
}

EventIngest::EventIngest(const WorkerSessionOptions& options, WorkerReport* report, bool stamp_offsets,
                         int64_t base_offset)
    : options_(options), report_(report), stamp_offsets_(stamp_offsets), fed_(base_offset), offset_(base_offset) {}

bool EventIngest::Feed(const char* data, size_t size) {
  if (!report_->stream_error.empty()) return false;
  decoder_.Append(data, size);
  fed_ += static_cast<int64_t>(size);
  std::vector<storage::EventWrite> burst;
  while (true) {
    auto next = decoder_.Next();
    if (!next.ok()) {
      report_->stream_error = std::string(next.status().message());
      break;
    }
    if (!next->has_value()) break;
    offset_ = fed_ - static_cast<int64_t>(decoder_.pending_bytes());
    lorad::v1::Event event = std::move(**next);
    std::optional<ArtifactFile> file;
    if (auto reported = ReportedArtifactPath(event)) {
      const bool has_sha = event.has_checkpoint() ? !event.checkpoint().sha256().empty()
                                                  : !event.sample().sha256().empty();
      file = InspectArtifactFile(*reported, options_.job, !has_sha);
    }
    MappedEvent mapped = MapWorkerEvent(std::move(event), file, options_.job, NowUnixMs());
    if (mapped.finished) report_->finished = std::move(mapped.finished);
    if (mapped.step) report_->last_step = *mapped.step;
    if (mapped.lora) report_->last_lora = *mapped.lora;
    for (auto& write : mapped.writes) {
      // Every write of one event commits in the same burst: the highest
      // recorded offset always ends a whole event.
      if (stamp_offsets_) write.event.set_source_offset(offset_);
      burst.push_back(std::move(write));
    }
  }
  // The burst read at once is committed in one transaction.
  if (!burst.empty()) options_.commit(burst);
  return report_->stream_error.empty();
}

WorkerReport SuperviseWorkers(const std::vector<WorkerProcess*>& ranks, const WorkerSessionOptions& options) {
  return Session(ranks, options).Run();
}

WorkerReport SuperviseWorker(WorkerProcess* worker, const WorkerSessionOptions& options) {
  return SuperviseWorkers({worker}, options);
}

}  // namespace lorad::server
