#include "server/net/http_client.h"

#include <curl/curl.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace lorad::net {
namespace {

constexpr size_t kMaxResponseBody = 64 * 1024;

// curl_global_init is not thread-safe in older libcurl: run it once, before
// the first handle.
void GlobalInitOnce() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

struct CurlDeleter {
  void operator()(CURL* handle) const { curl_easy_cleanup(handle); }
};
using CurlHandle = std::unique_ptr<CURL, CurlDeleter>;

// Owns a curl_slist (request headers).
class HeaderList {
 public:
  HeaderList() = default;
  HeaderList(const HeaderList&) = delete;
  HeaderList& operator=(const HeaderList&) = delete;
  ~HeaderList() { curl_slist_free_all(list_); }
  void Add(const std::string& line) {
    // curl_slist_append returns null on allocation failure and leaves the list intact.
    if (curl_slist* next = curl_slist_append(list_, line.c_str())) list_ = next;
  }
  curl_slist* get() const { return list_; }

 private:
  curl_slist* list_ = nullptr;
};

// Owns a file descriptor.
class FileDescriptor {
 public:
  explicit FileDescriptor(int fd) : fd_(fd) {}
  FileDescriptor(const FileDescriptor&) = delete;
  FileDescriptor& operator=(const FileDescriptor&) = delete;
  ~FileDescriptor() {
    if (fd_ >= 0) ::close(fd_);
  }
  int get() const { return fd_; }

 private:
  int fd_;
};

bool IsCredentialName(absl::string_view name) {
  const std::string lower = absl::AsciiStrToLower(name);
  for (absl::string_view word : {"token", "key", "sig", "auth", "pass", "secret", "credential",
                                 "x-amz-", "session"}) {
    if (absl::StrContains(lower, word)) return true;
  }
  return false;
}

std::string Scrub(std::string text, const std::vector<std::string>& secrets) {
  for (const std::string& secret : secrets) {
    if (secret.size() >= 4) absl::StrReplaceAll({{secret, "***"}}, &text);
  }
  return text;
}

// A transfer's outcome before the retry policy looks at it.
struct Attempt {
  absl::Status status;  // of the transfer or the HTTP status
  bool transient = false;
  int http_status = 0;
  absl::Duration retry_after = absl::ZeroDuration();
};

absl::Status CurlError(CURLcode code, const char* errbuf, const std::string& what,
                       bool* transient) {
  const std::string detail = errbuf != nullptr && errbuf[0] != '\0'
                                 ? std::string(errbuf)
                                 : std::string(curl_easy_strerror(code));
  const std::string message = absl::StrCat(what, ": ", detail);
  *transient = false;
  switch (code) {
    case CURLE_ABORTED_BY_CALLBACK:
      return absl::CancelledError(absl::StrCat(what, ": cancelled"));
    case CURLE_OPERATION_TIMEDOUT:
      *transient = true;
      return absl::DeadlineExceededError(message);
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_COULDNT_CONNECT:
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_PARTIAL_FILE:
    case CURLE_GOT_NOTHING:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
    case CURLE_SSL_CONNECT_ERROR:  // a reset during the handshake; verification failures differ
      *transient = true;
      return absl::UnavailableError(message);
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_CERTPROBLEM:
      return absl::FailedPreconditionError(absl::StrCat(
          message, " (TLS verification is always on: give the daemon the CA that signed this "
                   "server's certificate with ca_bundle)"));
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_URL_MALFORMAT:
      return absl::InvalidArgumentError(message);
    case CURLE_TOO_MANY_REDIRECTS:
      return absl::FailedPreconditionError(message);
    case CURLE_WRITE_ERROR:
      return absl::InternalError(message);
    default:
      return absl::UnavailableError(message);
  }
}

bool TransientHttpStatus(int status) { return status == 408 || status == 429 || status >= 500; }

absl::Status HttpStatusError(int status, const std::string& what) {
  const std::string message = absl::StrCat(what, ": HTTP ", status);
  if (status == 404) return absl::NotFoundError(message);
  if (status == 401 || status == 403) {
    return absl::PermissionDeniedError(absl::StrCat(
        message, " (the server refused access: a gated or private file needs a token, e.g. "
                 "hf_token / HF_TOKEN for Hugging Face, civitai_token / CIVITAI_TOKEN for civitai)"));
  }
  if (TransientHttpStatus(status)) return absl::UnavailableError(message);
  return absl::FailedPreconditionError(message);
}

absl::Status CheckUrl(const std::string& url, const std::string& shown) {
  if (!absl::StartsWith(url, "http://") && !absl::StartsWith(url, "https://")) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", shown, "' is not an http:// or https:// URL"));
  }
  return absl::OkStatus();
}

// Applies what every request shares: timeouts, redirects, TLS, protocols.
void ConfigureCommon(CURL* curl, const HttpClientOptions& options, const std::string& url,
                     char* errbuf) {
  curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
  curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, errbuf);
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);  // many threads; no SIGALRM for DNS timeouts
  curl_easy_setopt(curl, CURLOPT_USERAGENT, options.user_agent.c_str());
  curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS,
                   static_cast<long>(absl::ToInt64Milliseconds(options.connect_timeout)));
  curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, 1L);
  curl_easy_setopt(curl, CURLOPT_MAXREDIRS, static_cast<long>(options.max_redirects));
  // Only http(s), and an https request never follows a redirect to plain http.
  curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(curl, CURLOPT_REDIR_PROTOCOLS_STR,
                   absl::StartsWith(url, "https://") ? "https" : "http,https");
  curl_easy_setopt(curl, CURLOPT_SSL_VERIFYPEER, 1L);
  curl_easy_setopt(curl, CURLOPT_SSL_VERIFYHOST, 2L);
  if (!options.ca_bundle.empty()) curl_easy_setopt(curl, CURLOPT_CAINFO, options.ca_bundle.c_str());
  // Proxies: libcurl reads http_proxy / https_proxy / no_proxy itself.
}

int XferInfo(void* data, curl_off_t, curl_off_t, curl_off_t, curl_off_t) {
  const CancelFn* cancel = static_cast<const CancelFn*>(data);
  return (*cancel && (*cancel)()) ? 1 : 0;
}

void InstallCancel(CURL* curl, const CancelFn* cancel) {
  curl_easy_setopt(curl, CURLOPT_NOPROGRESS, 0L);
  curl_easy_setopt(curl, CURLOPT_XFERINFOFUNCTION, &XferInfo);
  curl_easy_setopt(curl, CURLOPT_XFERINFODATA, cancel);
}

absl::Duration RetryAfter(CURL* curl) {
  curl_off_t seconds = 0;
  if (curl_easy_getinfo(curl, CURLINFO_RETRY_AFTER, &seconds) == CURLE_OK && seconds > 0) {
    return absl::Seconds(seconds);
  }
  return absl::ZeroDuration();
}

// Sleeps for `delay` unless `cancel` says stop first.
absl::Status SleepCancellable(absl::Duration delay, const CancelFn& cancel,
                              const std::string& what) {
  const absl::Time until = absl::Now() + delay;
  while (true) {
    if (cancel && cancel()) return absl::CancelledError(absl::StrCat(what, ": cancelled"));
    const absl::Duration left = until - absl::Now();
    if (left <= absl::ZeroDuration()) return absl::OkStatus();
    std::this_thread::sleep_for(absl::ToChronoMilliseconds(std::min(left, absl::Milliseconds(50))));
  }
}

// ---- POST ----

size_t AppendBody(char* data, size_t size, size_t count, void* user) {
  auto* body = static_cast<std::string*>(user);
  const size_t bytes = size * count;
  if (body->size() < kMaxResponseBody) {
    body->append(data, std::min(bytes, kMaxResponseBody - body->size()));
  }
  return bytes;
}

// ---- Download ----

// State of one download attempt, shared with the libcurl callbacks.
struct DownloadState {
  CURL* curl = nullptr;
  int fd = -1;
  int64_t offset = 0;         // bytes in the file
  int64_t requested_from = 0; // the Range start sent (0 = no Range)
  int64_t total = -1;         // full size when known
  bool started = false;       // the first body byte of the final response arrived
  bool discard = false;       // an error response: its body is not the file
  std::string content_range;  // of the current response
  std::string error_body;
  int64_t written_this_attempt = 0;
  std::string io_error;
  const ProgressFn* progress = nullptr;
};

size_t OnHeader(char* data, size_t size, size_t count, void* user) {
  auto* state = static_cast<DownloadState*>(user);
  const size_t bytes = size * count;
  const absl::string_view line(data, bytes);
  // A new status line starts a new response (a redirect hop or the final one).
  if (absl::StartsWith(line, "HTTP/")) {
    state->content_range.clear();
  } else if (absl::StartsWithIgnoreCase(line, "content-range:")) {
    state->content_range =
        std::string(absl::StripAsciiWhitespace(line.substr(std::strlen("content-range:"))));
  }
  return bytes;
}

// Parses "bytes START-END/TOTAL" or "bytes */TOTAL"; -1 where absent.
void ParseContentRange(const std::string& value, int64_t* start, int64_t* total) {
  *start = -1;
  *total = -1;
  absl::string_view rest = value;
  if (!absl::ConsumePrefix(&rest, "bytes ")) return;
  const std::vector<absl::string_view> parts = absl::StrSplit(rest, '/');
  if (parts.size() != 2) return;
  if (parts[1] != "*") absl::SimpleAtoi(parts[1], total);
  if (parts[0] != "*") {
    const std::vector<absl::string_view> range = absl::StrSplit(parts[0], '-');
    if (!range.empty()) absl::SimpleAtoi(range[0], start);
  }
}

size_t OnBody(char* data, size_t size, size_t count, void* user) {
  auto* state = static_cast<DownloadState*>(user);
  const size_t bytes = size * count;
  if (!state->started) {
    state->started = true;
    long status = 0;
    curl_easy_getinfo(state->curl, CURLINFO_RESPONSE_CODE, &status);
    curl_off_t length = -1;
    curl_easy_getinfo(state->curl, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &length);
    if (status == 206) {
      int64_t start = -1, total = -1;
      ParseContentRange(state->content_range, &start, &total);
      if (start != state->requested_from) {
        state->io_error = absl::StrCat("the server answered the range request from byte ",
                                       state->requested_from, " with bytes from ", start);
        return 0;
      }
      state->total = total >= 0 ? total : (length >= 0 ? state->offset + length : -1);
    } else if (status >= 200 && status < 300) {
      // The whole file (the server ignored the Range): start over.
      if (state->offset > 0 && ::ftruncate(state->fd, 0) != 0) {
        state->io_error = absl::StrCat("truncate: ", std::strerror(errno));
        return 0;
      }
      state->offset = 0;
      state->total = length >= 0 ? length : -1;
    } else {
      state->discard = true;
    }
  }
  if (state->discard) {
    if (state->error_body.size() < 512) state->error_body.append(data, std::min<size_t>(bytes, 512));
    return bytes;
  }
  size_t done = 0;
  while (done < bytes) {
    const ssize_t n = ::pwrite(state->fd, data + done, bytes - done, state->offset);
    if (n < 0) {
      if (errno == EINTR) continue;
      state->io_error = absl::StrCat("write: ", std::strerror(errno));
      return 0;  // CURLE_WRITE_ERROR
    }
    done += static_cast<size_t>(n);
    state->offset += n;
    state->written_this_attempt += n;
  }
  if (state->progress != nullptr && *state->progress) (*state->progress)(state->offset, state->total);
  return bytes;
}

}  // namespace

std::string RedactUrl(const std::string& url, const std::vector<std::string>& secrets) {
  std::string out = url;
  // userinfo: scheme://user:pass@host -> scheme://***@host
  const size_t scheme_end = out.find("://");
  if (scheme_end != std::string::npos) {
    const size_t host_start = scheme_end + 3;
    const size_t path_start = out.find_first_of("/?#", host_start);
    const size_t at = out.rfind('@', path_start == std::string::npos ? out.size() : path_start);
    if (at != std::string::npos && at >= host_start) out.replace(host_start, at - host_start, "***");
  }
  const size_t query = out.find('?');
  if (query != std::string::npos) {
    const size_t fragment = out.find('#', query);
    const std::string query_text =
        out.substr(query + 1, fragment == std::string::npos ? std::string::npos : fragment - query - 1);
    std::vector<std::string> params;
    for (absl::string_view param : absl::StrSplit(query_text, '&')) {
      const size_t eq = param.find('=');
      if (eq != absl::string_view::npos && IsCredentialName(param.substr(0, eq))) {
        params.push_back(absl::StrCat(param.substr(0, eq), "=***"));
      } else {
        params.emplace_back(param);
      }
    }
    out = absl::StrCat(out.substr(0, query + 1), absl::StrJoin(params, "&"),
                       fragment == std::string::npos ? "" : out.substr(fragment));
  }
  return Scrub(std::move(out), secrets);
}

absl::Duration BackoffDelay(const HttpClientOptions& options, int attempt,
                            absl::Duration retry_after) {
  absl::Duration delay = options.initial_backoff;
  for (int i = 1; i < attempt && delay < options.max_backoff; ++i) delay *= 2;
  delay = std::max(delay, retry_after);
  return std::min(delay, options.max_backoff);
}

HttpClient::HttpClient(HttpClientOptions options) : options_(std::move(options)) {
  GlobalInitOnce();
}

absl::StatusOr<HttpResponse> HttpClient::PostJson(const std::string& url, const std::string& body,
                                                  const CallOptions& call) const {
  const std::string shown = RedactUrl(url, call.secrets);
  const std::string what = absl::StrCat("POST ", shown);
  if (absl::Status s = CheckUrl(url, shown); !s.ok()) return s;
  const int max_attempts = std::max(1, call.max_attempts > 0 ? call.max_attempts : options_.max_attempts);
  for (int attempt = 1;; ++attempt) {
    CurlHandle curl(curl_easy_init());
    if (!curl) return absl::ResourceExhaustedError("curl_easy_init failed");
    char errbuf[CURL_ERROR_SIZE] = {0};
    ConfigureCommon(curl.get(), options_, url, errbuf);
    curl_easy_setopt(curl.get(), CURLOPT_TIMEOUT_MS,
                     static_cast<long>(absl::ToInt64Milliseconds(options_.request_timeout)));
    HeaderList headers;
    headers.Add("Content-Type: application/json");
    headers.Add("Expect:");  // no 100-continue round trip
    for (const auto& header : call.headers) headers.Add(absl::StrCat(header.first, ": ", header.second));
    curl_easy_setopt(curl.get(), CURLOPT_HTTPHEADER, headers.get());
    curl_easy_setopt(curl.get(), CURLOPT_POSTFIELDS, body.data());
    curl_easy_setopt(curl.get(), CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(body.size()));
    // POST stays POST after a 301/302/303 (a webhook relay that moved).
    curl_easy_setopt(curl.get(), CURLOPT_POSTREDIR, static_cast<long>(CURL_REDIR_POST_ALL));
    HttpResponse response;
    curl_easy_setopt(curl.get(), CURLOPT_WRITEFUNCTION, &AppendBody);
    curl_easy_setopt(curl.get(), CURLOPT_WRITEDATA, &response.body);
    InstallCancel(curl.get(), &call.cancel);

    const CURLcode code = curl_easy_perform(curl.get());
    absl::Duration wait = absl::ZeroDuration();
    absl::Status failure;
    if (code == CURLE_OK) {
      long status = 0;
      curl_easy_getinfo(curl.get(), CURLINFO_RESPONSE_CODE, &status);
      char* content_type = nullptr;
      curl_easy_getinfo(curl.get(), CURLINFO_CONTENT_TYPE, &content_type);
      char* effective = nullptr;
      curl_easy_getinfo(curl.get(), CURLINFO_EFFECTIVE_URL, &effective);
      response.status = static_cast<int>(status);
      response.content_type = content_type != nullptr ? content_type : "";
      response.effective_url = RedactUrl(effective != nullptr ? effective : url, call.secrets);
      response.retry_after = RetryAfter(curl.get());
      response.attempts = attempt;
      if (!TransientHttpStatus(response.status) || attempt >= max_attempts) return response;
      wait = BackoffDelay(options_, attempt, response.retry_after);
    } else {
      bool transient = false;
      failure = CurlError(code, errbuf, what, &transient);
      if (!transient) return absl::Status(failure.code(), Scrub(std::string(failure.message()), call.secrets));
      if (attempt >= max_attempts) {
        return absl::Status(failure.code(), Scrub(absl::StrCat(failure.message(), " (after ", attempt,
                                                               attempt == 1 ? " attempt)" : " attempts)"),
                                                  call.secrets));
      }
      wait = BackoffDelay(options_, attempt, absl::ZeroDuration());
    }
    if (absl::Status s = SleepCancellable(wait, call.cancel, what); !s.ok()) return s;
  }
}

absl::StatusOr<DownloadResult> HttpClient::Download(const std::string& url,
                                                    const std::filesystem::path& path,
                                                    const CallOptions& call) const {
  const std::string shown = RedactUrl(url, call.secrets);
  const std::string what = absl::StrCat("GET ", shown);
  if (absl::Status s = CheckUrl(url, shown); !s.ok()) return s;
  const int max_attempts = std::max(1, call.max_attempts > 0 ? call.max_attempts : options_.max_attempts);

  FileDescriptor file(::open(path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644));
  if (file.get() < 0) {
    return absl::InternalError(absl::StrCat("cannot open '", path.string(), "' for the download of ",
                                            shown, ": ", std::strerror(errno)));
  }
  struct stat st{};
  ::fstat(file.get(), &st);
  DownloadResult result;
  result.resumed_from = st.st_size;
  int64_t offset = st.st_size;
  int failures = 0;  // consecutive attempts without progress

  for (int attempt = 1;; ++attempt) {
    result.attempts = attempt;
    CurlHandle curl(curl_easy_init());
    if (!curl) return absl::ResourceExhaustedError("curl_easy_init failed");
    char errbuf[CURL_ERROR_SIZE] = {0};
    ConfigureCommon(curl.get(), options_, url, errbuf);
    const long stall_s = std::max<long>(1, absl::ToInt64Seconds(options_.stall_timeout));
    curl_easy_setopt(curl.get(), CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(curl.get(), CURLOPT_LOW_SPEED_TIME, stall_s);
    HeaderList headers;
    for (const auto& header : call.headers) headers.Add(absl::StrCat(header.first, ": ", header.second));
    curl_easy_setopt(curl.get(), CURLOPT_HTTPHEADER, headers.get());

    DownloadState state;
    state.curl = curl.get();
    state.fd = file.get();
    state.offset = offset;
    state.requested_from = offset;
    state.progress = &call.progress;
    std::string range;
    if (offset > 0) {
      // CURLOPT_RANGE, not RESUME_FROM: libcurl then leaves a 200 (range
      // ignored) to OnBody, which restarts the file instead of failing.
      range = absl::StrCat(offset, "-");
      curl_easy_setopt(curl.get(), CURLOPT_RANGE, range.c_str());
      ++result.range_resumes;
    }
    curl_easy_setopt(curl.get(), CURLOPT_HEADERFUNCTION, &OnHeader);
    curl_easy_setopt(curl.get(), CURLOPT_HEADERDATA, &state);
    curl_easy_setopt(curl.get(), CURLOPT_WRITEFUNCTION, &OnBody);
    curl_easy_setopt(curl.get(), CURLOPT_WRITEDATA, &state);
    InstallCancel(curl.get(), &call.cancel);

    const CURLcode code = curl_easy_perform(curl.get());
    offset = state.offset;
    const bool progressed = state.written_this_attempt > 0;
    absl::Status failure;
    bool transient = false;
    absl::Duration retry_after = absl::ZeroDuration();
    long status = 0;
    curl_easy_getinfo(curl.get(), CURLINFO_RESPONSE_CODE, &status);
    if (!state.io_error.empty()) {
      failure = absl::InternalError(absl::StrCat(what, " into '", path.string(), "': ", state.io_error));
      // A server that misanswers a range: restart from zero on the next attempt.
      if (absl::StartsWith(state.io_error, "the server answered the range")) {
        if (::ftruncate(file.get(), 0) != 0) return failure;
        offset = 0;
        transient = true;
      }
    } else if (code != CURLE_OK) {
      failure = CurlError(code, errbuf, what, &transient);
    } else if (status == 416 && offset > 0) {
      int64_t start = -1, total = -1;
      ParseContentRange(state.content_range, &start, &total);
      if (total == offset) {
        // Everything had arrived before (e.g. a restart right after the last byte).
        state.total = total;
      } else {
        // The partial file is longer than the resource, or the server says
        // nothing: start over.
        if (::ftruncate(file.get(), 0) != 0) {
          return absl::InternalError(absl::StrCat("truncate '", path.string(), "': ", std::strerror(errno)));
        }
        offset = 0;
        failure = absl::UnavailableError(absl::StrCat(what, ": HTTP 416 for a resume at byte ", state.requested_from));
        transient = true;
      }
    } else if (status < 200 || status >= 300) {
      failure = HttpStatusError(static_cast<int>(status), what);
      transient = TransientHttpStatus(static_cast<int>(status));
      retry_after = RetryAfter(curl.get());
      const std::string snippet(absl::StripAsciiWhitespace(state.error_body.substr(0, 200)));
      if (!snippet.empty()) {
        failure = absl::Status(failure.code(), absl::StrCat(failure.message(), ": ", snippet));
      }
    } else if (state.total >= 0 && offset != state.total) {
      failure = absl::UnavailableError(
          absl::StrCat(what, ": the connection ended at byte ", offset, " of ", state.total));
      transient = true;
    }

    if (failure.ok()) {
      ::fsync(file.get());
      char* effective = nullptr;
      curl_easy_getinfo(curl.get(), CURLINFO_EFFECTIVE_URL, &effective);
      result.bytes = offset;
      result.effective_url = RedactUrl(effective != nullptr ? effective : url, call.secrets);
      if (call.progress) call.progress(offset, offset);
      return result;
    }
    failures = progressed ? 0 : failures + 1;
    if (!transient || failures >= max_attempts) {
      std::string message(failure.message());
      if (transient) absl::StrAppend(&message, " (after ", attempt, attempt == 1 ? " attempt)" : " attempts)");
      return absl::Status(failure.code(), Scrub(std::move(message), call.secrets));
    }
    if (absl::Status s = SleepCancellable(BackoffDelay(options_, std::max(1, failures), retry_after), call.cancel, what);
        !s.ok()) {
      return s;
    }
  }
}

}  // namespace lorad::net
