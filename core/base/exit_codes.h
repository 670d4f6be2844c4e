// The exit codes of every lorad program (lorad, lorad-train, loractl and the
// tools), one number per meaning so scripts and the daemon read them alike.
// The daemon maps a lorad-train exit code to the job's end (see
// server/job_outcome.h); loractl documents its codes in --help.
#pragma once

#include "absl/status/status.h"

namespace lorad {

enum ExitCode : int {
  kExitOk = 0,
  kExitError = 1,            // a bug, or an error with no better code
  kExitUsage = 2,            // bad command line, or a bad config value (INVALID_ARGUMENT)
  kExitUnreachable = 3,      // loractl: the daemon cannot be reached
  kExitUnauthenticated = 4,  // loractl: missing or wrong token
  kExitNotFound = 5,         // a file, job, artifact or dataset does not exist / is unreadable
  kExitRefused = 6,          // loractl: the daemon refused the request (invalid, outside the roots, too large)
  kExitChecksum = 7,         // loractl: a fetched file's sha256 does not match
  kExitDiverged = 8,         // lorad-train: loss or gradients became NaN/inf; the last good LoRA is kept
  kExitOutOfMemory = 9,      // lorad-train: out of (CUDA) memory; the message names batch size and resolution
  kExitJobFailed = 10,       // loractl: the job it followed FAILED
  kExitCancelled = 11,       // cancelled: lorad-train by SIGTERM/SIGINT (state saved when asked), or the followed job
  kExitEventsBroken = 12,    // lorad-train: --events-fd could not be written (the daemon went away)
  kExitStorage = 13,         // lorad: the data dir's database cannot be opened
  kExitCannotListen = 14,    // lorad: the listen address is in use or invalid
  kExitWriteFailed = 15,     // lorad-train: an output could not be written (disk full, I/O error); the last good LoRA is kept
  kExitPeerFailed = 16,      // lorad-train: another rank of a data-parallel job died, failed or stalled past ddp_timeout
};

// lorad-train's exit code for its run's final status: INVALID_ARGUMENT and
// FAILED_PRECONDITION are usage errors, NOT_FOUND / PERMISSION_DENIED missing
// input, DATA_LOSS a diverged run, RESOURCE_EXHAUSTED out of memory, CANCELLED a
// cancel, UNAVAILABLE a file that could not be written (a full disk: writes
// fail with it, so a disk full is never reported as a diverged run), ABORTED a
// failed peer rank of a data-parallel run; anything else kExitError.
int TrainerExitCode(const absl::Status& status);

// loractl's exit code for an RPC or local status: UNAVAILABLE / DEADLINE_EXCEEDED
// unreachable, UNAUTHENTICATED, NOT_FOUND, refusals (INVALID_ARGUMENT,
// PERMISSION_DENIED, FAILED_PRECONDITION, OUT_OF_RANGE, RESOURCE_EXHAUSTED,
// ALREADY_EXISTS), DATA_LOSS a checksum mismatch; anything else kExitError.
int ClientExitCode(const absl::Status& status);

}  // namespace lorad
