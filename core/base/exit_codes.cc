#include "core/train/exit_codes.h"

namespace lorad::train {

int ExitCodeFor(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kOk: return kExitOk;
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kFailedPrecondition: return kExitUsage;
    case absl::StatusCode::kNotFound:
    case absl::StatusCode::kPermissionDenied: return kExitInputMissing;
    case absl::StatusCode::kDataLoss: return kExitDiverged;
    case absl::StatusCode::kResourceExhausted: return kExitOutOfMemory;
    case absl::StatusCode::kCancelled: return kExitCancelled;
    default: return kExitInternal;
  }
}

}  // namespace lorad::train
