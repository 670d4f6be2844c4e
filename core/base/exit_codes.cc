#include "core/base/exit_codes.h"

namespace lorad {

int TrainerExitCode(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kOk: return kExitOk;
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kFailedPrecondition: return kExitUsage;
    case absl::StatusCode::kNotFound:
    case absl::StatusCode::kPermissionDenied: return kExitNotFound;
    case absl::StatusCode::kDataLoss: return kExitDiverged;
    case absl::StatusCode::kResourceExhausted: return kExitOutOfMemory;
    case absl::StatusCode::kCancelled: return kExitCancelled;
    case absl::StatusCode::kUnavailable: return kExitWriteFailed;
    case absl::StatusCode::kAborted: return kExitPeerFailed;
    default: return kExitError;
  }
}

int ClientExitCode(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kOk: return kExitOk;
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kDeadlineExceeded: return kExitUnreachable;
    case absl::StatusCode::kUnauthenticated: return kExitUnauthenticated;
    case absl::StatusCode::kNotFound: return kExitNotFound;
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kPermissionDenied:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kOutOfRange:
    case absl::StatusCode::kResourceExhausted:
    case absl::StatusCode::kAlreadyExists: return kExitRefused;
    case absl::StatusCode::kDataLoss: return kExitChecksum;
    default: return kExitError;
  }
}

}  // namespace lorad
