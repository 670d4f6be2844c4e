#include "server/job_outcome.h"

#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/base/exit_codes.h"

namespace lorad::server {

std::string TrainerExitMeaning(int exit_code) {
  switch (exit_code) {
    case kExitUsage: return "bad command line or config value";
    case kExitNotFound: return "an input (model, dataset or saved state) is missing or unreadable";
    case kExitDiverged: return "diverged (NaN/inf)";
    case kExitOutOfMemory: return "out of memory";
    case kExitCancelled: return "cancelled (SIGTERM/SIGINT)";
    case kExitEventsBroken: return "its events pipe to the daemon broke";
    case kExitWriteFailed: return "it could not write its output (disk full or I/O error)";
    case kExitPeerFailed: return "another rank of its data-parallel job died, failed or stalled";
    case 127: return "it could not be started";  // WorkerProcess: exec or chdir failed
    default: return "";
  }
}

std::string DescribeTrainerExit(const ExitInfo& exit) {
  std::string text = exit.Describe();
  if (exit.term_signal == 0) {
    const std::string meaning = TrainerExitMeaning(exit.exit_code);
    if (!meaning.empty()) absl::StrAppend(&text, ": ", meaning);
  }
  return text;
}

JobOutcome ClassifyJobEnd(const WorkerReport& report, const EndRequest& request) {
  JobOutcome outcome;
  const ExitInfo& exit = report.exit;
  if (request.daemon_stopping && !request.cancel_requested) {
    outcome.requeue = true;
    outcome.requeue_reason = absl::StrCat("lorad stopping; worker ", exit.Describe(),
                                          "; job re-queued to resume from its last saved state");
    return outcome;
  }
  lorad::v1::Finished& fin = outcome.finished;
  fin.set_final_step(report.last_step);
  fin.set_final_lora_path(report.finished && !report.finished->final_lora_path().empty()
                              ? report.finished->final_lora_path()
                              : report.last_lora);
  storage::JobEnd& end = outcome.end;
  end.exit_code = exit.exit_code;
  end.term_signal = exit.term_signal;
  const bool clean_exit = exit.exit_code == 0 && exit.term_signal == 0;
  if (request.cancel_requested) {
    end.state = storage::JobState::kCancelled;
    end.reason = absl::StrCat(request.cancel_reason.empty() ? "cancelled" : request.cancel_reason, " (worker ",
                              exit.Describe(), ")");
    fin.set_status(lorad::v1::Finished::CANCELLED);
  } else if (!report.external_cancel.empty()) {
    end.state = storage::JobState::kCancelled;
    end.reason = report.external_cancel;
    fin.set_status(lorad::v1::Finished::CANCELLED);
  } else if (!report.lost_reason.empty()) {
    JobOutcome lost;
    lost.requeue = true;
    lost.requeue_reason = absl::StrCat(report.lost_reason, "; job re-queued to resume from its last saved state");
    return lost;
  } else if (report.finished && report.finished->status() == lorad::v1::Finished::SUCCEEDED && clean_exit &&
             report.stream_error.empty()) {
    end.state = storage::JobState::kSucceeded;
    fin.set_status(lorad::v1::Finished::SUCCEEDED);
  } else {
    std::vector<std::string> parts;
    if (!report.first_failure.empty()) parts.push_back(report.first_failure);
    if (report.finished && !report.finished->reason().empty()) parts.push_back(report.finished->reason());
    if (!report.stream_error.empty()) parts.push_back(absl::StrCat("corrupt event stream: ", report.stream_error));
    parts.push_back(absl::StrCat("lorad-train ", DescribeTrainerExit(exit)));
    if (!report.finished && clean_exit) parts.push_back("it exited without reporting the end of training");
    if (!report.stderr_tail.empty()) parts.push_back(absl::StrCat("last stderr lines:\n", report.stderr_tail));
    end.state = storage::JobState::kFailed;
    end.reason = absl::StrJoin(parts, "; ");
    fin.set_status(lorad::v1::Finished::FAILED);
  }
  fin.set_reason(end.reason);
  return outcome;
}

}  // namespace lorad::server
