// How a job ends, decided from what its worker did: a pure function of the
// worker's exit, its own Finished event, the state of its events stream and
// what the daemon asked (cancel, or stop for a restart). The exit codes are
// lorad-train's (core/base/exit_codes.h): a failure reason names them, e.g.
// "lorad-train exit status 8: diverged (loss or gradients became NaN/inf)".
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "lorad/v1/events.pb.h"
#include "server/worker_process.h"
#include "storage/job_store.h"

namespace lorad::server {

// What supervising one worker observed (filled by Scheduler's session loop).
struct WorkerReport {
  ExitInfo exit;
  // The worker's own Finished event, when it sent one before exiting.
  std::optional<lorad::v1::Finished> finished;
  // Non-empty when the events stream was corrupt (the worker was then killed).
  std::string stream_error;
  // The last lines the worker wrote to stderr; empty when it wrote none.
  std::string stderr_tail;
  int64_t last_step = 0;
  // The path of the last LoRA recorded as an artifact; empty when none.
  std::string last_lora;
  // What failed first when it was not rank 0 itself: another rank ("rank 1 of
  // 2 failed first: lorad-train killed by signal 9 (SIGKILL)" + its stderr
  // tail) or the cluster ("Slurm ended it at its time limit (TIMEOUT)").
  std::string first_failure;
  // The attempt runs on without the daemon (Slurm, while lorad stops): nothing
  // is recorded; the next start re-attaches to it.
  bool detached = false;
  // The cluster ended the attempt without lorad asking: cancelled from outside
  // (scancel by a user or an administrator), with Slurm's words. Ends CANCELLED.
  std::string external_cancel;
  // The cluster lost the attempt (Slurm NODE_FAIL, BOOT_FAIL, PREEMPTED): the
  // job is re-queued to resume from its last saved state, with this reason.
  std::string lost_reason;
};

// What the daemon asked of the job while it ran.
struct EndRequest {
  // The daemon is stopping (not cancelling): the job is re-queued to resume.
  bool daemon_stopping = false;
  // A cancel was requested (CancelJob or CancelSweep), with its reason; an
  // empty reason reads "cancelled".
  bool cancel_requested = false;
  std::string cancel_reason;
};

struct JobOutcome {
  // True: re-queue the job with `requeue_reason`; `end` and `finished` unused.
  bool requeue = false;
  std::string requeue_reason;
  // The job's terminal transition and the Finished event that records it.
  storage::JobEnd end;
  lorad::v1::Finished finished;
};

// The job's end. A cancel wins over any exit (CANCELLED), then a cancel from
// outside lorad (CANCELLED with the cluster's words); a lost attempt (node
// failure) re-queues; SUCCEEDED needs the worker's SUCCEEDED event, exit
// status 0 and an intact stream; anything else is FAILED with a reason built
// from the rank that failed first, the worker's reason, the stream error, the
// named exit status and the stderr tail. A stop that is not a cancel re-queues.
JobOutcome ClassifyJobEnd(const WorkerReport& report, const EndRequest& request);

// What lorad-train's exit code means ("diverged (loss or gradients became
// NaN/inf)", "out of memory", ...); empty for 0 and for codes it does not use.
std::string TrainerExitMeaning(int exit_code);

// "exit status 9: out of memory", "killed by signal 9 (SIGKILL)".
std::string DescribeTrainerExit(const ExitInfo& exit);

}  // namespace lorad::server
