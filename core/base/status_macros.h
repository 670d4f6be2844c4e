// Early-return helpers for absl::Status / absl::StatusOr call sites.
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define LORAD_CONCAT_INNER(a, b) a##b
#define LORAD_CONCAT(a, b) LORAD_CONCAT_INNER(a, b)

// RETURN_IF_ERROR(expr): returns the status of `expr` from the caller if not ok.
#define RETURN_IF_ERROR(expr)                         \
  do {                                                \
    ::absl::Status lorad_status_ = (expr);            \
    if (!lorad_status_.ok()) return lorad_status_;    \
  } while (0)

// ASSIGN_OR_RETURN(lhs, expr): unwraps a StatusOr or returns its error.
#define ASSIGN_OR_RETURN(lhs, expr) \
  LORAD_ASSIGN_OR_RETURN_IMPL(LORAD_CONCAT(lorad_statusor_, __LINE__), lhs, expr)
#define LORAD_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                                \
  if (!tmp.ok()) return std::move(tmp).status();    \
  lhs = std::move(tmp).value()
