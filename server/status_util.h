// The one mapping from absl::Status to grpc::Status (codes are numerically
// identical by design; this keeps the conversion in one place).
#pragma once

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace lorad::server {

inline grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

}  // namespace lorad::server
