// The worker session loop: supervises the lorad-train ranks of one local
// attempt until they have all exited. Reads rank 0's events pipe (each burst
// mapped by MapWorkerEvent and handed to `commit` at once), appends each
// rank's stderr to its log and keeps the tails, and turns a stop request into
// SIGTERM to every rank, then SIGKILL after the grace period. A rank that
// fails (non-zero exit or a signal) gets the others SIGTERMed at once and
// SIGKILLed after the grace period; a rank that exits cleanly gives the others
// the grace period to follow. A corrupt events stream kills the ranks (it
// cannot be trusted).
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <vector>

#include "proto/event_stream.h"
#include "server/artifact_events.h"
#include "server/job_outcome.h"
#include "server/worker_process.h"
#include "storage/job_store.h"

namespace lorad::server {

struct WorkerSessionOptions {
  JobFolder job;                      // artifacts must lie inside it
  std::filesystem::path log_path;     // rank 0's stderr is appended here (rank r: <stem>.rank<r><ext>)
  int64_t first_step = 0;             // the job's step before this attempt
  double grace_s = 30;                // SIGTERM -> SIGKILL
  // Polled about every 100 ms. A cancel stops the attempt; the daemon
  // stopping stops a local attempt too (it resumes on the next start), while
  // an executor whose attempts outlive the daemon detaches instead.
  std::function<bool()> cancel_requested;
  std::function<bool()> daemon_stopping;
  // Records one burst of events (one transaction); called on this thread.
  std::function<void(const std::vector<storage::EventWrite>&)> commit;
};

// Decodes a worker's framed events as their bytes arrive, maps them
// (MapWorkerEvent, with InspectArtifactFile for reported files), hands each
// burst to options.commit and keeps what the report needs (Finished, last
// step, last LoRA). With `stamp_offsets`, every write carries the source
// offset just past its event (Event.source_offset), counted from
// `base_offset`. Not thread-safe.
class EventIngest {
 public:
  EventIngest(const WorkerSessionOptions& options, WorkerReport* report, bool stamp_offsets = false,
              int64_t base_offset = 0);
  // Feeds bytes and commits the complete events among them. False once the
  // stream is corrupt (report->stream_error is then set; nothing more is read).
  bool Feed(const char* data, size_t size);
  // Source offset just past the last complete event.
  int64_t offset() const { return offset_; }
  size_t pending_bytes() const { return decoder_.pending_bytes(); }

 private:
  const WorkerSessionOptions& options_;
  WorkerReport* report_;
  const bool stamp_offsets_;
  int64_t fed_ = 0;  // bytes fed so far, from base_offset
  int64_t offset_ = 0;
  events::EventDecoder decoder_;
};

// Runs until every rank in `ranks` (rank 0 first, the one with the events
// pipe) has exited and returns what was observed (exits reaped; report.exit
// is rank 0's). The ranks are borrowed for the call; the calling thread must
// be the one that started them (their death signal follows that thread).
WorkerReport SuperviseWorkers(const std::vector<WorkerProcess*>& ranks, const WorkerSessionOptions& options);

// One rank: SuperviseWorkers({worker}, options).
WorkerReport SuperviseWorker(WorkerProcess* worker, const WorkerSessionOptions& options);

// The last `count` non-empty lines of a text, for a failure reason.
std::string LastLines(const std::string& text, int count);

}  // namespace lorad::server
