// The daemon's one HTTP client (issue 13), on libcurl: JSON POSTs (webhooks)
// and GETs into a file with HTTP Range resume (model pulls). Redirects are
// followed (bounded), proxies come from the environment (http_proxy,
// https_proxy, no_proxy: libcurl's default), TLS peer and host verification are
// always on (an optional CA bundle adds private or test CAs), transient
// failures (connection errors, timeouts, 408, 429, 5xx) are retried with
// exponential backoff that honours Retry-After. Errors name the URL with
// credentials redacted and the cause.
//
// Thread-safe: every call uses its own CURL handle; one HttpClient may be
// shared by any number of threads.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace lorad::net {

using HttpHeaders = std::vector<std::pair<std::string, std::string>>;

struct HttpClientOptions {
  absl::Duration connect_timeout = absl::Seconds(15);
  // Per attempt, for requests (POST). Downloads have no total limit: a stall
  // (under 1 byte/s for `stall_timeout`) ends an attempt instead.
  absl::Duration request_timeout = absl::Seconds(30);
  absl::Duration stall_timeout = absl::Seconds(60);
  int max_redirects = 10;
  int max_attempts = 5;  // first try included
  absl::Duration initial_backoff = absl::Seconds(1);
  absl::Duration max_backoff = absl::Minutes(1);
  // PEM file of CA certificates used instead of the system store; empty = the
  // system store. Verification itself cannot be turned off.
  std::string ca_bundle;
  std::string user_agent = "lorad";
};

struct HttpResponse {
  int status = 0;
  std::string body;          // at most 64 KiB; the rest is dropped
  std::string content_type;
  std::string effective_url;  // after redirects, redacted
  absl::Duration retry_after = absl::ZeroDuration();
  int attempts = 0;
};

// Cancellation: polled during transfers and backoff waits; true ends the call
// with Cancelled.
using CancelFn = std::function<bool()>;
// Download progress: bytes in the file so far and the total when the server
// said it (-1 when unknown). Called from the calling thread.
using ProgressFn = std::function<void(int64_t done, int64_t total)>;

struct CallOptions {
  HttpHeaders headers;
  // Strings (tokens) that must never appear in an error message or log line;
  // query parameters named like credentials and URL userinfo are always
  // redacted.
  std::vector<std::string> secrets;
  CancelFn cancel;
  ProgressFn progress;
  int max_attempts = 0;  // 0 = HttpClientOptions::max_attempts
};

struct DownloadResult {
  int64_t bytes = 0;          // size of the finished file
  int64_t resumed_from = 0;   // bytes already there at the first attempt
  int attempts = 0;
  int range_resumes = 0;      // attempts that continued with a Range request
  std::string effective_url;  // redacted
};

class HttpClient {
 public:
  explicit HttpClient(HttpClientOptions options = {});

  // POSTs `body` as application/json. Transient failures are retried; the
  // final HTTP status is in the response whatever it is (the caller decides
  // what a 4xx means). Errors: Unavailable / DeadlineExceeded after the last
  // attempt, FailedPrecondition for TLS verification failures, InvalidArgument
  // for a malformed or non-http(s) URL, Cancelled.
  absl::StatusOr<HttpResponse> PostJson(const std::string& url, const std::string& body,
                                        const CallOptions& call = {}) const;

  // GETs `url` into `path`. If `path` already holds bytes, they are kept and
  // the rest is requested with `Range: bytes=N-` (a server that ignores the
  // range restarts the file). A dropped connection resumes the same way on the
  // next attempt; an attempt that made progress does not count against
  // max_attempts. Errors: NotFound (404), PermissionDenied (401/403, says a
  // token may be needed), FailedPrecondition (other 4xx, TLS), Unavailable /
  // DeadlineExceeded (transient, attempts exhausted), Cancelled (the file
  // keeps what arrived), Internal (local I/O).
  absl::StatusOr<DownloadResult> Download(const std::string& url,
                                          const std::filesystem::path& path,
                                          const CallOptions& call = {}) const;

  const HttpClientOptions& options() const { return options_; }

 private:
  HttpClientOptions options_;
};

// `url` with userinfo and the values of credential-like query parameters
// (token, key, signature, auth, password, credential, X-Amz-*) replaced by
// "***", and every string in `secrets` replaced too.
std::string RedactUrl(const std::string& url, const std::vector<std::string>& secrets = {});

// The backoff before retry `attempt` (1 = the first retry): initial * 2^(n-1),
// capped at max, or `retry_after` when the server sent a longer one (capped
// at max as well).
absl::Duration BackoffDelay(const HttpClientOptions& options, int attempt,
                            absl::Duration retry_after);

}  // namespace lorad::net
