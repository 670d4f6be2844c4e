// lorad-train's exit codes: the daemon maps them to a job's final state.
#pragma once

#include "absl/status/status.h"

namespace lorad::train {

enum ExitCode : int {
  kExitOk = 0,
  kExitInternal = 1,       // a bug or an unexpected LibTorch error
  kExitUsage = 2,          // bad command line or config value (INVALID_ARGUMENT)
  kExitInputMissing = 3,   // checkpoint, dataset, prompt file or state not found / unreadable
  kExitDiverged = 4,       // loss or gradients became NaN/inf; the last good LoRA is kept
  kExitOutOfMemory = 5,    // (CUDA) out of memory; the message names batch size and resolution
  kExitCancelled = 6,      // SIGTERM/SIGINT or a cancellation: state saved when requested
  kExitEventsBroken = 7,   // --events-fd could not be written (the daemon went away)
};

// The exit code for a run's final status (OK -> 0).
int ExitCodeFor(const absl::Status& status);

// Status codes the trainer uses for the outcomes above: DATA_LOSS marks a
// diverged run (NaN/inf), RESOURCE_EXHAUSTED out of memory, CANCELLED a cancel.
}  // namespace lorad::train
