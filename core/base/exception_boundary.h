// The exception boundary of every lorad program's main: nothing escapes as
// std::terminate. LibTorch's c10::Error and OpenCV's cv::Exception both derive
// from std::exception, so one catch converts them (and std::bad_alloc) to a
// Status, printed as "<program>: <message>", and the exit code of
// core/base/exit_codes.h (kExitOutOfMemory for memory, kExitError otherwise).
// Header-only and dependency-free so every tool can use it.
//
//   int main(int argc, char** argv) {
//     return lorad::RunToolMain("lorad-inspect", [&] { return Main(argc, argv); });
//   }
#pragma once

#include <cstdio>
#include <exception>
#include <new>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/base/exit_codes.h"

namespace lorad {

// An exception as a Status: RESOURCE_EXHAUSTED for allocation failures (host,
// CUDA or OpenCV "out of memory"), INTERNAL otherwise (a bug: checks at the
// boundaries should have refused the input with a clear message).
inline absl::Status StatusFromException(const std::exception& e) {
  const std::string what = e.what();
  const std::string lower = absl::AsciiStrToLower(what);
  if (dynamic_cast<const std::bad_alloc*>(&e) != nullptr || absl::StrContains(lower, "out of memory") ||
      absl::StrContains(lower, "insufficient memory")) {
    return absl::ResourceExhaustedError(absl::StrCat("out of memory: ", what));
  }
  return absl::InternalError(absl::StrCat("unexpected error: ", what));
}

// Runs `body` (returns the exit code) and converts any exception that escapes
// it into a message on stderr and an exit code.
template <typename Body>
int RunToolMain(const char* program, Body&& body) noexcept {
  absl::Status status;
  try {
    return body();
  } catch (const std::exception& e) {
    status = StatusFromException(e);
  } catch (...) {
    status = absl::InternalError("unexpected error: an exception of unknown type");
  }
  std::fprintf(stderr, "%s: %s\n", program, std::string(status.message()).c_str());
  return status.code() == absl::StatusCode::kResourceExhausted ? kExitOutOfMemory : kExitError;
}

}  // namespace lorad
