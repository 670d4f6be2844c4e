#include "server/notify/webhook.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <thread>
#include <utility>

#include <nlohmann/json.hpp>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "absl/base/thread_annotations.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "server/net/http_client.h"

namespace lorad::notify {
namespace {

constexpr size_t kMaxContentChars = 1900;  // Discord rejects `content` over 2000

std::shared_ptr<spdlog::logger> Log() {
  static const std::shared_ptr<spdlog::logger> logger = [] {
    if (auto existing = spdlog::get("notify")) return existing;
    try {
      return spdlog::stderr_color_mt("notify");
    } catch (const spdlog::spdlog_ex&) {  // registered concurrently elsewhere
      return spdlog::get("notify");
    }
  }();
  return logger;
}

std::string ContentLine(const NotifyEvent& event) {
  std::string line;
  if (event.kind == EventKind::kServer) {
    line = absl::StrCat("lorad: ", event.reason);
  } else if (event.kind == EventKind::kSweep) {
    line = absl::StrCat("lorad: sweep '", event.name, "' (", event.id, ") ", event.state, ": ",
                        event.jobs_succeeded, "/", event.jobs_total, " jobs succeeded");
    if (event.jobs_failed > 0) absl::StrAppend(&line, ", ", event.jobs_failed, " failed");
  } else {
    line = absl::StrCat("lorad: job '", event.name, "' (", event.id, ") ", event.state);
    if (event.final_loss) absl::StrAppend(&line, absl::StrFormat(", final loss %.4f", *event.final_loss));
    if (!event.lora_path.empty()) absl::StrAppend(&line, ", LoRA ", event.lora_path);
  }
  if (event.kind != EventKind::kServer) {
    if (event.gpu_seconds) absl::StrAppend(&line, absl::StrFormat(", %.2f GPU-h", *event.gpu_seconds / 3600));
    if (event.cost) absl::StrAppend(&line, absl::StrFormat(", cost %.2f", *event.cost));
    if (!event.reason.empty()) absl::StrAppend(&line, ": ", event.reason);
  }
  if (line.size() > kMaxContentChars) {
    line.resize(kMaxContentChars);
    // Do not cut a UTF-8 sequence in half.
    while (!line.empty() && (static_cast<unsigned char>(line.back()) & 0xC0) == 0x80) line.pop_back();
    if (!line.empty() && (static_cast<unsigned char>(line.back()) & 0x80)) line.pop_back();
    line += "...";
  }
  return line;
}

struct Delivery {
  std::string label;  // host:port, for logs (the path may hold a secret token)
  std::string url;
  std::shared_ptr<const std::string> body;
  int attempts = 0;
  absl::Time due;
};

bool Retryable(int status) { return status == 408 || status == 429 || status >= 500; }

bool TransientError(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kPermissionDenied:
    case absl::StatusCode::kNotFound:
      return false;
    default:
      return true;
  }
}

class WebhookNotifierImpl final : public WebhookNotifier {
 public:
  WebhookNotifierImpl(WebhookOptions options, std::vector<std::pair<std::string, std::string>> urls)
      : options_(std::move(options)), client_(ClientOptions(options_)), urls_(std::move(urls)) {
    if (!urls_.empty()) worker_ = std::thread([this] { Run(); });
  }

  ~WebhookNotifierImpl() override { Shutdown(absl::Seconds(5)); }

  bool Notify(const NotifyEvent& event) override {
    if (urls_.empty()) return true;
    auto body = std::make_shared<const std::string>(WebhookBody(event));
    bool all_queued = true;
    absl::MutexLock lock(&mu_);
    if (stopping_) {
      stats_.dropped += static_cast<int64_t>(urls_.size());
      return false;
    }
    for (const auto& [label, url] : urls_) {
      if (queue_.size() >= options_.queue_capacity) {
        ++stats_.dropped;
        all_queued = false;
        Log()->warn("webhook queue full ({} pending): dropped {} event for {}", queue_.size(),
                    event.id, label);
        continue;
      }
      queue_.push_back(Delivery{label, url, body, 0, absl::Now()});
    }
    wake_.Signal();
    return all_queued;
  }

  void Shutdown(absl::Duration drain) override {
    {
      absl::MutexLock lock(&mu_);
      if (!stopping_) {
        stopping_ = true;
        drain_deadline_ = absl::Now() + std::max(drain, absl::ZeroDuration());
      }
      wake_.Signal();
    }
    absl::MutexLock join_lock(&join_mu_);
    if (worker_.joinable()) worker_.join();
  }

  WebhookStats stats() const override {
    absl::MutexLock lock(&mu_);
    WebhookStats stats = stats_;
    stats.pending = static_cast<int64_t>(queue_.size()) + in_flight_;
    return stats;
  }

 private:
  absl::Duration Backoff(int attempts, absl::Duration retry_after) const {
    absl::Duration wait = options_.initial_backoff;
    for (int i = 1; i < attempts && wait < options_.max_backoff; ++i) wait *= 2;
    wait = std::min(wait, options_.max_backoff);
    return std::max(wait, std::min(retry_after, options_.max_backoff));
  }

  // The worker: sends due deliveries one at a time, earliest due first.
  void Run() {
    mu_.Lock();
    while (true) {
      const absl::Time now = absl::Now();
      if (stopping_ && (queue_.empty() || now >= drain_deadline_)) break;
      auto next = std::min_element(queue_.begin(), queue_.end(),
                                   [](const Delivery& a, const Delivery& b) { return a.due < b.due; });
      if (next == queue_.end() || next->due > now) {
        absl::Time wake_at = next == queue_.end() ? absl::InfiniteFuture() : next->due;
        if (stopping_) wake_at = std::min(wake_at, drain_deadline_);
        wake_.WaitWithDeadline(&mu_, wake_at);
        continue;
      }
      Delivery delivery = std::move(*next);
      queue_.erase(next);
      ++in_flight_;
      ++stats_.attempts;
      absl::Time deadline = now + options_.attempt_timeout;
      if (stopping_) deadline = std::min(deadline, drain_deadline_);
      mu_.Unlock();
      ++delivery.attempts;
      // One HTTP attempt per call: the retries, their backoff and the queue
      // are this notifier's, so a waiting retry never holds the worker.
      net::CallOptions call;
      call.max_attempts = 1;
      call.cancel = [deadline] { return absl::Now() >= deadline; };
      call.secrets = {delivery.url};  // errors name host:port via the label, never the token in the path
      const absl::StatusOr<net::HttpResponse> response = client_.PostJson(delivery.url, *delivery.body, call);
      mu_.Lock();
      --in_flight_;
      Settle(std::move(delivery), response);
    }
    stats_.failed += static_cast<int64_t>(queue_.size());
    if (!queue_.empty()) {
      Log()->warn("webhook shutdown: dropped {} undelivered notification(s)", queue_.size());
    }
    queue_.clear();
    mu_.Unlock();
  }

  static net::HttpClientOptions ClientOptions(const WebhookOptions& options) {
    net::HttpClientOptions client;
    client.request_timeout = options.attempt_timeout;
    client.connect_timeout = std::min(options.attempt_timeout, absl::Seconds(15));
    client.max_attempts = 1;
    client.ca_bundle = options.ca_file;
    client.max_redirects = 5;
    return client;
  }

  void Settle(Delivery delivery, const absl::StatusOr<net::HttpResponse>& response)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (response.ok() && response->status >= 200 && response->status < 300) {
      ++stats_.delivered;
      return;
    }
    const std::string what = response.ok() ? absl::StrCat("HTTP ", response->status)
                                            : std::string(response.status().message());
    // A TLS verification failure, a refused URL or a 4xx will not heal by waiting.
    const bool retry = response.ok() ? Retryable(response->status) : TransientError(response.status());
    if (retry && delivery.attempts < options_.max_attempts) {
      const absl::Duration wait =
          Backoff(delivery.attempts, response.ok() ? response->retry_after : absl::ZeroDuration());
      Log()->info("webhook {} attempt {} failed ({}); retrying in {}", delivery.label,
                  delivery.attempts, what, absl::FormatDuration(wait));
      delivery.due = absl::Now() + wait;
      queue_.push_back(std::move(delivery));
      return;
    }
    ++stats_.failed;
    Log()->warn("webhook {} gave up after {} attempt(s): {}", delivery.label, delivery.attempts,
                what);
  }

  const WebhookOptions options_;
  const net::HttpClient client_;
  const std::vector<std::pair<std::string, std::string>> urls_;  // (label, url)
  mutable absl::Mutex mu_;
  absl::CondVar wake_;
  std::vector<Delivery> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  absl::Time drain_deadline_ ABSL_GUARDED_BY(mu_) = absl::InfiniteFuture();
  int64_t in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  WebhookStats stats_ ABSL_GUARDED_BY(mu_);
  absl::Mutex join_mu_;
  std::thread worker_ ABSL_GUARDED_BY(join_mu_);
};

}  // namespace

std::string WebhookBody(const NotifyEvent& event) {
  const std::string content = ContentLine(event);
  nlohmann::json body = {
      {"content", content},
      {"text", content},
      {"event", event.kind == EventKind::kSweep ? "sweep" : event.kind == EventKind::kServer ? "server" : "job"},
      {"id", event.id},
      {"name", event.name},
      {"state", event.state},
      {"reason", event.reason},
      {"final_loss", event.final_loss ? nlohmann::json(*event.final_loss) : nlohmann::json()},
      {"lora_path", event.lora_path},
      {"sweep_id", event.sweep_id},
      {"gpu_seconds", event.gpu_seconds ? nlohmann::json(*event.gpu_seconds) : nlohmann::json()},
      {"cost", event.cost ? nlohmann::json(*event.cost) : nlohmann::json()},
  };
  if (event.kind == EventKind::kSweep) {
    body["jobs_total"] = event.jobs_total;
    body["jobs_succeeded"] = event.jobs_succeeded;
    body["jobs_failed"] = event.jobs_failed;
  }
  // Invalid UTF-8 in a name or reason must not throw: replace it.
  return body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

absl::StatusOr<HttpUrl> ParseHttpUrl(const std::string& url) {
  const std::string lower = absl::AsciiStrToLower(url);
  HttpUrl parsed;
  parsed.https = absl::StartsWith(lower, "https://");
  if (!parsed.https && !absl::StartsWith(lower, "http://")) {
    return absl::InvalidArgumentError(
        absl::StrCat("webhook URL '", url, "' must start with https:// or http://"));
  }
  if (parsed.https) parsed.port = 443;
  const std::string rest = url.substr(parsed.https ? 8 : 7);
  const size_t path_start = rest.find_first_of("/?");
  const std::string authority = rest.substr(0, path_start);
  if (path_start != std::string::npos) {
    parsed.path = rest.substr(path_start);
    if (parsed.path.front() == '?') parsed.path.insert(0, "/");
  }
  if (authority.find('@') != std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("webhook URL '", url, "': user:password@ is not supported"));
  }
  std::string port_text;
  if (!authority.empty() && authority.front() == '[') {  // [IPv6]:port
    const size_t close = authority.find(']');
    if (close == std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat("webhook URL '", url, "': unclosed '['"));
    }
    parsed.host = authority.substr(1, close - 1);
    if (close + 1 < authority.size()) {
      if (authority[close + 1] != ':') {
        return absl::InvalidArgumentError(absl::StrCat("webhook URL '", url, "': bad host"));
      }
      port_text = authority.substr(close + 2);
    }
  } else {
    const size_t colon = authority.rfind(':');
    parsed.host = authority.substr(0, colon);
    if (colon != std::string::npos) port_text = authority.substr(colon + 1);
  }
  if (parsed.host.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("webhook URL '", url, "' has no host"));
  }
  if (!port_text.empty() || authority.find(':') != std::string::npos) {
    int port = 0;
    if (!absl::SimpleAtoi(port_text, &port) || port < 1 || port > 65535) {
      return absl::InvalidArgumentError(
          absl::StrCat("webhook URL '", url, "': port '", port_text, "' is not 1-65535"));
    }
    parsed.port = static_cast<uint16_t>(port);
  }
  for (char c : parsed.path) {
    if (static_cast<unsigned char>(c) <= ' ') {
      return absl::InvalidArgumentError(
          absl::StrCat("webhook URL '", url, "': spaces/control characters in the path"));
    }
  }
  return parsed;
}

absl::StatusOr<std::unique_ptr<WebhookNotifier>> WebhookNotifier::Create(WebhookOptions options) {
  if (options.queue_capacity == 0 || options.max_attempts < 1 ||
      options.attempt_timeout <= absl::ZeroDuration() ||
      options.initial_backoff < absl::ZeroDuration() ||
      options.max_backoff < options.initial_backoff) {
    return absl::InvalidArgumentError(
        "webhook options: queue_capacity and max_attempts must be >= 1, attempt_timeout > 0, "
        "0 <= initial_backoff <= max_backoff");
  }
  if (!options.ca_file.empty() && !std::ifstream(options.ca_file)) {
    return absl::InvalidArgumentError(absl::StrCat("webhook_ca_file '", options.ca_file, "' cannot be read"));
  }
  std::vector<std::pair<std::string, std::string>> urls;
  for (const std::string& text : options.urls) {
    auto url = ParseHttpUrl(text);
    if (!url.ok()) return url.status();
    urls.emplace_back(absl::StrCat(url->host, ":", url->port), text);
  }
  return std::unique_ptr<WebhookNotifier>(
      new WebhookNotifierImpl(std::move(options), std::move(urls)));
}

}  // namespace lorad::notify
