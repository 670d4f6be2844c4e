// LibTorch's out-of-memory exceptions as a Status that names what was being
// done and what to try, instead of a c10::Error escaping with a backtrace.
//
//   absl::Status s = lorad::CatchOutOfMemory(
//       "training step 3 with train_batch_size=8 at 1024x1024",
//       "lower train_batch_size or enable gradient_checkpointing", [&] { return Step(); });
#pragma once

#include <string>

#include <c10/util/Exception.h>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace lorad {

// True for c10::OutOfMemoryError (CUDA caching allocator) and for the c10::Error
// messages other allocators raise ("CUDA error: out of memory", the CPU
// allocator's "can't allocate memory").
inline bool IsOutOfMemoryError(const c10::Error& e) {
  if (dynamic_cast<const c10::OutOfMemoryError*>(&e) != nullptr) return true;
  const absl::string_view what = e.what_without_backtrace();
  return absl::StrContains(what, "out of memory") || absl::StrContains(what, "can't allocate memory");
}

// RESOURCE_EXHAUSTED "out of memory during <what>: <advice> (LibTorch: <first line>)".
inline absl::Status OutOfMemoryStatus(const c10::Error& e, absl::string_view what, absl::string_view advice) {
  absl::string_view detail = e.what_without_backtrace();
  detail = detail.substr(0, detail.find('\n'));
  return absl::ResourceExhaustedError(absl::StrCat("out of memory during ", what, ": ", advice, " (LibTorch: ",
                                                   detail, ")"));
}

// Runs fn (returning absl::Status); an out-of-memory c10::Error becomes
// OutOfMemoryStatus, any other c10::Error INTERNAL naming `what`.
template <typename Fn>
absl::Status CatchOutOfMemory(absl::string_view what, absl::string_view advice, Fn&& fn) {
  try {
    return fn();
  } catch (const c10::Error& e) {
    if (IsOutOfMemoryError(e)) return OutOfMemoryStatus(e, what, advice);
    return absl::InternalError(absl::StrCat(what, ": ", e.what_without_backtrace()));
  }
}

}  // namespace lorad
