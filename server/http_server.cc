#include "server/http_server.h"

// Debian's cpp-httplib (libcpp-httplib-dev 0.11): in Debian (no vendored
// code, security updates from the distribution), small, a thread pool for
// connections, and a chunked content provider that carries Server-Sent
// Events; Debian builds it as a shared library with the flags pkg-config
// gives (CMake passes them, so this header matches the library's layout).
#include <httplib.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>

#include <google/protobuf/util/json_util.h>
#include <nlohmann/json.hpp>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/notification.h"
#include "client/sweep_rows.h"
#include "core/planner/sweep_table.h"
#include "server/auth.h"
#include "server/dataset_upload.h"
#include "server/disk_space.h"
#include "server/paths.h"
#include "server/web_assets.h"
#include "spdlog/spdlog.h"

namespace lorad::server {
namespace {
namespace fs = std::filesystem;
using json = nlohmann::json;

constexpr char kCookie[] = "lorad_token";
constexpr char kJson[] = "application/json";

// Proto messages as JSON with their .proto field names (int64 values are
// strings, as proto3 JSON writes them; the pages convert).
json ProtoJson(const google::protobuf::Message& message) {
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;
  std::string text;
  if (!google::protobuf::util::MessageToJsonString(message, &text, options).ok()) return json::object();
  return json::parse(text, nullptr, /*allow_exceptions=*/false);
}

int HttpStatus(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kOutOfRange: return 400;
    case absl::StatusCode::kUnauthenticated: return 401;
    case absl::StatusCode::kPermissionDenied: return 403;
    case absl::StatusCode::kNotFound: return 404;
    case absl::StatusCode::kAlreadyExists:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kAborted: return 409;
    case absl::StatusCode::kResourceExhausted: return 429;
    case absl::StatusCode::kUnavailable: return 503;
    default: return 500;
  }
}

void SendJson(httplib::Response& res, const json& body, int status = 200) {
  res.status = status;
  res.set_content(body.dump(), kJson);
}

void SendError(httplib::Response& res, const absl::Status& status) {
  SendJson(res, {{"error", std::string(status.message())}, {"code", absl::StatusCodeToString(status.code())}},
           HttpStatus(status));
}

std::string HtmlEscape(std::string_view text) {
  std::string out;
  for (char c : text) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return out;
}

// Cookie values may not hold every byte a token may: percent-encode all but
// [A-Za-z0-9-._~].
std::string CookieEncode(std::string_view text) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : text) {
    if (absl::ascii_isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out;
}

std::string CookieValue(const httplib::Request& req, std::string_view name) {
  const size_t count = req.get_header_value_count("Cookie");
  for (size_t i = 0; i < count; ++i) {
    for (absl::string_view part : absl::StrSplit(req.get_header_value("Cookie", i), ';')) {
      part = absl::StripAsciiWhitespace(part);
      if (absl::StartsWith(part, absl::StrCat(std::string(name), "="))) {
        return httplib::detail::decode_url(std::string(part.substr(name.size() + 1)), false);
      }
    }
  }
  return "";
}

// A local path to return to after login: "/..." but not "//host" (no open redirect).
std::string SafeNext(const std::string& next) {
  if (next.empty() || next[0] != '/' || (next.size() > 1 && (next[1] == '/' || next[1] == '\\'))) return "/";
  return next;
}

// The page routes: each serves the one page shell, whose script draws it.
bool IsPagePath(const std::string& path) {
  static const std::regex kPages(R"(^/(|jobs/\d+|sweeps/[^/]+|datasets|datasets/[^/]+|server)$)");
  return std::regex_match(path, kPages);
}

std::string ContentTypeFor(const fs::path& path) {
  std::string ext = path.extension().string();
  for (char& c : ext) c = static_cast<char>(absl::ascii_tolower(static_cast<unsigned char>(c)));
  if (ext == ".png") return "image/png";
  if (ext == ".jpg" || ext == ".jpeg") return "image/jpeg";
  if (ext == ".webp") return "image/webp";
  if (ext == ".bmp") return "image/bmp";
  if (ext == ".json") return "application/json";
  if (ext == ".txt" || ext == ".log" || ext == ".toml") return "text/plain; charset=utf-8";
  return "application/octet-stream";
}

bool IsImage(const fs::path& path) { return absl::StartsWith(ContentTypeFor(path), "image/"); }

// Streams a file (LoRAs can be large) with its length; images display in
// place, anything else downloads under its own name.
void SendFile(httplib::Response& res, const fs::path& path) {
  auto file = std::make_shared<std::ifstream>(path, std::ios::binary);
  std::error_code ec;
  const auto size = fs::file_size(path, ec);
  if (!*file || ec) {
    SendError(res, absl::NotFoundError(absl::StrCat(path.filename().string(), " cannot be read")));
    return;
  }
  const std::string type = ContentTypeFor(path);
  if (!absl::StartsWith(type, "image/")) {
    res.set_header("Content-Disposition", absl::StrCat("attachment; filename=\"", path.filename().string(), "\""));
  }
  res.set_header("Cache-Control", "private, max-age=60");
  res.set_content_provider(
      static_cast<size_t>(size), type,
      [file](size_t offset, size_t length, httplib::DataSink& sink) {
        char buffer[1 << 16];
        file->seekg(static_cast<std::streamoff>(offset));
        const size_t want = std::min(length, sizeof(buffer));
        file->read(buffer, static_cast<std::streamsize>(want));
        const std::streamsize got = file->gcount();
        return got > 0 && sink.write(buffer, static_cast<size_t>(got));
      });
}

// Every event of a job with seq > after_seq, the way StreamEvents replays
// them (the hub's memory, else SQLite), in pages.
absl::StatusOr<std::vector<storage::StoredEvent>> AllEvents(EventHub* hub, int64_t job_id, int64_t after_seq = 0) {
  std::vector<storage::StoredEvent> events;
  while (true) {
    auto batch = hub->Fetch(job_id, after_seq, 1000);
    if (!batch.ok()) return batch.status();
    if (batch->events.empty()) break;
    after_seq = batch->events.back().seq;
    for (auto& e : batch->events) events.push_back(std::move(e));
    if (batch->done) break;
  }
  return events;
}

json EventJson(const storage::StoredEvent& event) {
  lorad::v1::JobEvent proto;
  proto.set_job_id(event.job_id);
  proto.set_seq(event.seq);
  *proto.mutable_event() = event.event;
  json out = ProtoJson(proto);
  out["type"] = storage::EventTypeName(event.event);
  return out;
}

// At most `limit` points of a curve (evenly strided, the last kept).
json CurvePoints(const planner::LossCurve& curve, size_t limit) {
  json points = json::array();
  const size_t stride = std::max<size_t>(1, (curve.size() + limit - 1) / limit);
  for (size_t i = 0; i < curve.size(); i += stride) points.push_back({curve[i].first, curve[i].second});
  if (!curve.empty() && (curve.size() - 1) % stride != 0) points.push_back({curve.back().first, curve.back().second});
  return points;
}

// One Server-Sent Events stream of a job's events: replays seq > after, then
// follows the hub until the job ends ("event: end"), the client leaves (a
// failed write), or the server stops. Runs on its connection's thread; waits
// in one-second slices so Stop() is noticed.
class EventStream {
 public:
  EventStream(EventHub* hub, int64_t job_id, int64_t after_seq, const std::atomic<bool>* stopping)
      : hub_(hub), job_id_(job_id), last_sent_(after_seq), stopping_(stopping) {
    waker_ = hub_->Subscribe(job_id_, [this] {
      absl::MutexLock lock(&mu_);
      woken_ = true;
    });
  }
  ~EventStream() {
    waker_->Kill();  // no wake-up touches this after Kill returns
    hub_->Unsubscribe(job_id_, waker_);
  }

  // One round of the content provider: false ends the response as failed.
  bool Provide(httplib::DataSink& sink) {
    if (stopping_->load()) return false;
    if (!started_) {
      started_ = true;
      // EventSource reconnects after 2 s and sends the last id it saw.
      if (!Write(sink, "retry: 2000\n\n")) return false;
    }
    {
      absl::MutexLock lock(&mu_);
      woken_ = false;  // cleared before the fetch: a publish after it wakes the wait below
    }
    auto batch = hub_->Fetch(job_id_, last_sent_, 256);
    if (!batch.ok()) {
      Write(sink, absl::StrCat("event: error\ndata: ", json{{"error", std::string(batch.status().message())}}.dump(),
                               "\n\n"));
      sink.done();
      return true;
    }
    for (const auto& event : batch->events) {
      if (!Write(sink, absl::StrCat("id: ", event.seq, "\ndata: ", EventJson(event).dump(), "\n\n"))) return false;
      last_sent_ = event.seq;
    }
    if (batch->done) {
      Write(sink, absl::StrCat("event: end\ndata: ", json{{"last_seq", last_sent_}}.dump(), "\n\n"));
      sink.done();
      return true;
    }
    if (!batch->events.empty()) return true;
    {
      absl::MutexLock lock(&mu_);
      mu_.AwaitWithTimeout(absl::Condition(&woken_), absl::Seconds(1));
    }
    // A comment line every 15 s: proxies keep the stream open, and a
    // departed client fails the write.
    if (std::chrono::steady_clock::now() - last_write_ > std::chrono::seconds(15)) {
      return Write(sink, ": keep-alive\n\n");
    }
    return true;
  }

 private:
  bool Write(httplib::DataSink& sink, const std::string& text) {
    last_write_ = std::chrono::steady_clock::now();
    return sink.write(text.data(), text.size());
  }

  EventHub* hub_;
  const int64_t job_id_;
  int64_t last_sent_;  // only the connection's thread touches the rest
  const std::atomic<bool>* stopping_;
  bool started_ = false;
  std::chrono::steady_clock::time_point last_write_ = std::chrono::steady_clock::now();
  std::shared_ptr<Waker> waker_;
  absl::Mutex mu_;
  bool woken_ ABSL_GUARDED_BY(mu_) = false;
};

struct Access {
  bool ok = false;
  bool by_cookie = false;  // a browser's ambient credential: POSTs need the same origin
  bool by_query = false;   // ?token=: set the cookie
};

Access Authenticate(const std::vector<std::string>& tokens, const httplib::Request& req) {
  Access access;
  if (tokens.empty()) {
    access.ok = true;
    return access;
  }
  const std::string authorization = req.get_header_value("Authorization");
  if (absl::StartsWith(authorization, "Bearer ") && TokenAccepted(tokens, authorization.substr(7))) {
    access.ok = true;
    return access;
  }
  if (req.has_param("token") && TokenAccepted(tokens, req.get_param_value("token"))) {
    access.ok = access.by_query = true;
    return access;
  }
  const std::string cookie = CookieValue(req, kCookie);
  if (!cookie.empty() && TokenAccepted(tokens, cookie)) access.ok = access.by_cookie = true;
  return access;
}

// A cookie-authorised POST must come from the dashboard's own pages: the
// Origin header (every browser sends it on POST), else the Referer, must be
// http://<Host>.
bool SameOrigin(const httplib::Request& req) {
  const std::string host = req.get_header_value("Host");
  if (host.empty()) return false;
  const std::string self = absl::StrCat("http://", host);
  const std::string origin = req.get_header_value("Origin");
  if (!origin.empty()) return origin == self;
  const std::string referer = req.get_header_value("Referer");
  return referer == self || absl::StartsWith(referer, self + "/");
}

void SetTokenCookie(httplib::Response& res, const std::string& token) {
  res.set_header("Set-Cookie", absl::StrCat(kCookie, "=", CookieEncode(token),
                                            "; Path=/; HttpOnly; SameSite=Strict; Max-Age=2592000"));
}

std::string LoginPage(const std::string& next, const std::string& error) {
  const WebAsset* page = FindWebAsset("/login.html");
  std::string html = page ? std::string(page->data) : "<form method=post action=/login>{{ERROR}}"
                                                      "<input name=token type=password>"
                                                      "<input type=hidden name=next value=\"{{NEXT}}\"></form>";
  auto replace = [&html](const std::string& key, const std::string& value) {
    for (size_t at = html.find(key); at != std::string::npos; at = html.find(key, at + value.size())) {
      html.replace(at, key.size(), value);
    }
  };
  replace("{{NEXT}}", HtmlEscape(next));
  replace("{{ERROR}}", error.empty() ? "" : absl::StrCat("<p class=\"error\">", HtmlEscape(error), "</p>"));
  return html;
}

int64_t PathId(const httplib::Request& req, int group = 1) {
  int64_t id = 0;
  if (static_cast<int>(req.matches.size()) <= group || !absl::SimpleAtoi(req.matches[group].str(), &id)) return 0;
  return id;
}

}  // namespace

HttpServer::HttpServer(HttpSources sources)
    : sources_(sources), server_(std::make_unique<httplib::Server>()) {}

HttpServer::~HttpServer() { Stop(); }

absl::Status HttpServer::Start() {
  const std::string& address = sources_.config->http;
  const size_t colon = address.rfind(':');
  int port = -1;
  if (colon == std::string::npos || !absl::SimpleAtoi(address.substr(colon + 1), &port) || port < 0 ||
      port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("--http '", address, "': expected HOST:PORT (e.g. 127.0.0.1:50052) or off"));
  }
  std::string host = address.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  // Event streams each hold a connection thread: room for kMaxStreams of
  // them and the page and API requests beside.
  server_->new_task_queue = [] { return new httplib::ThreadPool(kMaxStreams + 16); };
  server_->set_keep_alive_timeout(5);
  server_->set_read_timeout(30);
  server_->set_write_timeout(30);
  server_->set_payload_max_length(64 << 10);  // the dashboard posts forms, never uploads
  server_->set_default_headers({{"X-Content-Type-Options", "nosniff"},
                                {"X-Frame-Options", "DENY"},
                                {"Referrer-Policy", "same-origin"},
                                {"Content-Security-Policy",
                                 "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
                                 "frame-ancestors 'none'; form-action 'self'"}});
  Routes();
  if (port == 0) {
    port_ = server_->bind_to_any_port(host);
  } else if (server_->bind_to_port(host, port)) {
    port_ = port;
  }
  if (port_ <= 0) {
    return absl::UnavailableError(absl::StrCat("the dashboard cannot listen on ", address,
                                               " (in use? choose another with --http 127.0.0.1:PORT, or --http off)"));
  }
  thread_ = std::thread([this] { server_->listen_after_bind(); });
  return absl::OkStatus();
}

void HttpServer::Stop() {
  stopping_ = true;
  if (server_) server_->stop();
  if (thread_.joinable()) thread_.join();
}

void HttpServer::Routes() {
  httplib::Server& s = *server_;
  const ServerConfig* config = sources_.config;
  LoradService* service = sources_.service;
  EventHub* hub = sources_.hub;

  // Every route but the login page needs the token; /metrics too unless
  // --metrics-open. Checked before routing, so unknown paths answer 401 as well.
  s.set_pre_routing_handler([config](const httplib::Request& req, httplib::Response& res) {
    if (req.path == "/login") return httplib::Server::HandlerResponse::Unhandled;
    const Access access = Authenticate(config->tokens, req);
    if (access.ok) {
      if (access.by_query) {
        SetTokenCookie(res, req.get_param_value("token"));
        if (req.method == "GET" && IsPagePath(req.path)) {
          // Once: the cookie carries it from here, and the address bar and
          // history lose the token.
          res.set_redirect(req.path, 303);
          return httplib::Server::HandlerResponse::Handled;
        }
      }
      return httplib::Server::HandlerResponse::Unhandled;
    }
    if (req.path == "/metrics" && config->metrics_open) return httplib::Server::HandlerResponse::Unhandled;
    res.status = 401;
    res.set_header("WWW-Authenticate", "Bearer realm=\"lorad\"");
    if (req.method == "GET" && IsPagePath(req.path)) {
      res.set_content(LoginPage(req.path, ""), "text/html; charset=utf-8");
    } else {
      res.set_content(json{{"error", "missing or invalid token: log in at /login, or send Authorization: Bearer "
                                     "<token> (the token lorad was started with)"}}.dump(),
                      kJson);
    }
    return httplib::Server::HandlerResponse::Handled;
  });

  s.Get("/login", [](const httplib::Request& req, httplib::Response& res) {
    res.set_content(LoginPage(SafeNext(req.get_param_value("next")), ""), "text/html; charset=utf-8");
  });
  s.Post("/login", [config](const httplib::Request& req, httplib::Response& res) {
    const std::string next = SafeNext(req.get_param_value("next"));
    const std::string token = req.get_param_value("token");
    if (!config->tokens.empty() && !TokenAccepted(config->tokens, token)) {
      res.status = 401;
      res.set_content(LoginPage(next, "That token is not one lorad was started with."), "text/html; charset=utf-8");
      return;
    }
    if (!config->tokens.empty()) SetTokenCookie(res, token);
    res.set_redirect(next, 303);
  });
  s.Post("/logout", [](const httplib::Request& req, httplib::Response& res) {
    if (!SameOrigin(req)) {
      SendError(res, absl::PermissionDeniedError("cross-origin POST refused"));
      return;
    }
    res.set_header("Set-Cookie", absl::StrCat(kCookie, "=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"));
    res.set_redirect("/login", 303);
  });

  // Pages: one shell; app.js draws the page the path names.
  auto page = [](const httplib::Request&, httplib::Response& res) {
    const WebAsset* shell = FindWebAsset("/index.html");
    res.set_header("Cache-Control", "no-cache");
    res.set_content(std::string(shell->data), "text/html; charset=utf-8");
  };
  for (const char* pattern : {"/", R"(/jobs/\d+)", "/sweeps/[^/]+", "/datasets", "/datasets/[^/]+", "/server"}) {
    s.Get(pattern, page);
  }
  s.Get("/static/(.+)", [](const httplib::Request& req, httplib::Response& res) {
    const WebAsset* asset = FindWebAsset(absl::StrCat("/", req.matches[1].str()));
    if (asset == nullptr) {
      SendError(res, absl::NotFoundError(absl::StrCat("no file ", req.path, " in the dashboard")));
      return;
    }
    res.set_header("Cache-Control", "no-cache");
    res.set_content(std::string(asset->data), std::string(asset->content_type));
  });

  // --- JSON API ---
  s.Get("/api/server", [this, config, service](const httplib::Request&, httplib::Response& res) {
    json out = ProtoJson(service->QueryServerInfo());
    const int64_t free = AvailableBytes(config->data_dir);
    std::error_code ec;
    const auto space = fs::space(config->data_dir, ec);
    out["disk"] = {{"path", config->data_dir.string()},
                   {"free_bytes", free == INT64_MAX ? -1 : free},
                   {"total_bytes", ec ? -1 : static_cast<int64_t>(space.capacity)}};
    out["event_subscribers"] = sources_.hub->SubscriberCount();
    out["dashboard_streams"] = open_streams_.load();
    SendJson(res, out);
  });

  s.Get("/api/jobs", [service](const httplib::Request& req, httplib::Response& res) {
    lorad::v1::ListJobsRequest request;
    for (absl::string_view name : absl::StrSplit(req.get_param_value("state"), ',', absl::SkipEmpty())) {
      lorad::v1::JobState state;
      if (!lorad::v1::JobState_Parse(absl::StrCat("JOB_STATE_", absl::AsciiStrToUpper(name)), &state)) {
        SendError(res, absl::InvalidArgumentError(absl::StrCat(
                           "unknown state '", name, "' (queued, running, succeeded, failed, cancelled)")));
        return;
      }
      request.add_states(state);
    }
    request.set_sweep(req.get_param_value("sweep"));
    request.set_name_contains(req.get_param_value("name"));
    int page_size = 100;
    if (req.has_param("limit") && !absl::SimpleAtoi(req.get_param_value("limit"), &page_size)) page_size = -1;
    if (page_size <= 0 || page_size > 1000) {
      SendError(res, absl::InvalidArgumentError("limit must be 1..1000"));
      return;
    }
    request.set_page_size(page_size);
    request.set_page_token(req.get_param_value("before"));
    auto page = service->QueryJobs(request);
    if (!page.ok()) return SendError(res, page.status());
    json out = ProtoJson(*page);
    out["now_unix_ms"] = std::chrono::duration_cast<std::chrono::milliseconds>(
                             std::chrono::system_clock::now().time_since_epoch()).count();
    SendJson(res, out);
  });

  s.Get(R"(/api/jobs/(\d+))", [service](const httplib::Request& req, httplib::Response& res) {
    const int64_t id = PathId(req);
    auto job = service->QueryJob(id);
    if (!job.ok()) return SendError(res, job.status());
    auto artifacts = service->QueryArtifacts(id, lorad::v1::ARTIFACT_KIND_UNSPECIFIED);
    if (!artifacts.ok()) return SendError(res, artifacts.status());
    json out = {{"job", ProtoJson(*job)}, {"artifacts", ProtoJson(*artifacts)["artifacts"]}};
    out["now_unix_ms"] = std::chrono::duration_cast<std::chrono::milliseconds>(
                             std::chrono::system_clock::now().time_since_epoch()).count();
    SendJson(res, out);
  });

  s.Get(R"(/api/jobs/(\d+)/events)", [hub, service](const httplib::Request& req, httplib::Response& res) {
    const int64_t id = PathId(req);
    if (auto job = service->QueryJob(id); !job.ok()) return SendError(res, job.status());
    int64_t after = 0;
    if (req.has_param("after") && (!absl::SimpleAtoi(req.get_param_value("after"), &after) || after < 0)) {
      return SendError(res, absl::InvalidArgumentError("after must be an event seq >= 0"));
    }
    auto batch = hub->Fetch(id, after, 2000);
    if (!batch.ok()) return SendError(res, batch.status());
    json events = json::array();
    for (const auto& e : batch->events) events.push_back(EventJson(e));
    SendJson(res, {{"events", events}, {"done", batch->done}});
  });

  // Live events. Resumes after Last-Event-ID (EventSource sends it when it
  // reconnects), else ?after=, else from the first event.
  s.Get(R"(/api/jobs/(\d+)/stream)", [this, hub, service](const httplib::Request& req, httplib::Response& res) {
    const int64_t id = PathId(req);
    if (auto job = service->QueryJob(id); !job.ok()) return SendError(res, job.status());
    const std::string resume =
        req.has_header("Last-Event-ID") ? req.get_header_value("Last-Event-ID") : req.get_param_value("after");
    int64_t after = 0;
    if (!resume.empty() && (!absl::SimpleAtoi(resume, &after) || after < 0)) {
      return SendError(res, absl::InvalidArgumentError(
                                absl::StrCat("Last-Event-ID / after '", resume, "' is not an event seq >= 0")));
    }
    if (open_streams_.fetch_add(1) >= kMaxStreams) {
      open_streams_.fetch_sub(1);
      return SendError(res, absl::UnavailableError(absl::StrCat(
                                kMaxStreams, " event streams are open; close a dashboard tab and retry")));
    }
    auto stream = std::make_shared<EventStream>(hub, id, after, &stopping_);
    res.set_header("Cache-Control", "no-cache");
    res.set_header("X-Accel-Buffering", "no");
    res.set_chunked_content_provider(
        "text/event-stream",
        [stream](size_t, httplib::DataSink& sink) { return stream->Provide(sink); },
        [this](bool) { open_streams_.fetch_sub(1); });
  });

  s.Post(R"(/api/jobs/(\d+)/cancel)", [config, service](const httplib::Request& req, httplib::Response& res) {
    if (Authenticate(config->tokens, req).by_cookie && !SameOrigin(req)) {
      return SendError(res, absl::PermissionDeniedError(
                                "cross-origin cancel refused: cancel from the dashboard's own page"));
    }
    const std::string reason = req.has_param("reason") ? req.get_param_value("reason") : "cancelled from the dashboard";
    auto job = service->Cancel(PathId(req), reason);
    if (!job.ok()) return SendError(res, job.status());
    SendJson(res, {{"job", ProtoJson(*job)}});
  });

  // A job's files by the names its artifact list gives: recorded artifacts
  // only, inside the jobs folder ("..": 404, outside: 403).
  s.Get(R"(/api/jobs/(\d+)/files/(.+))", [service](const httplib::Request& req, httplib::Response& res) {
    auto artifact = service->ReadableArtifactByName(PathId(req), req.matches[2].str());
    if (!artifact.ok()) {
      const absl::Status& status = artifact.status();
      return SendError(res, status.code() == absl::StatusCode::kInvalidArgument ? absl::NotFoundError(status.message())
                                                                                 : status);
    }
    SendFile(res, artifact->path);
  });

  s.Get("/api/sweeps", [service](const httplib::Request&, httplib::Response& res) {
    auto sweeps = service->QuerySweeps();
    if (!sweeps.ok()) return SendError(res, sweeps.status());
    SendJson(res, ProtoJson(*sweeps));
  });

  // A sweep with the morning table (as `loractl sweep show --format json`),
  // each job's loss curve and the jobs x prompts grid of latest previews.
  s.Get("/api/sweeps/([^/]+)", [hub, service](const httplib::Request& req, httplib::Response& res) {
    const std::string reference = req.matches[1].str();
    int64_t sweep_id = 0;
    auto sweep = absl::SimpleAtoi(reference, &sweep_id) ? service->QuerySweep(sweep_id, "")
                                                         : service->QuerySweep(0, reference);
    if (!sweep.ok()) return SendError(res, sweep.status());
    std::vector<planner::SweepTableRow> rows;
    json curves = json::array();
    std::map<int, std::string> prompts;
    json grid_rows = json::array();
    for (const auto& job : sweep->jobs()) {
      auto events = AllEvents(hub, job.id());
      if (!events.ok()) return SendError(res, events.status());
      std::vector<lorad::v1::Event> plain;
      std::map<int, lorad::v1::Sample> latest;  // prompt index -> latest preview
      for (const auto& e : *events) {
        plain.push_back(e.event);
        if (!e.event.has_sample()) continue;
        const auto& sample = e.event.sample();
        prompts.emplace(sample.prompt_index(), sample.prompt());
        auto it = latest.find(sample.prompt_index());
        if (it == latest.end() || it->second.step() <= sample.step()) latest[sample.prompt_index()] = sample;
      }
      const client::JobCurve curve = client::CurveFromEvents(plain);
      rows.push_back(client::SweepRow(*sweep, job, curve));
      const std::string label = client::VariedLabel(*sweep, job);
      curves.push_back({{"job_id", job.id()}, {"label", label}, {"points", CurvePoints(curve.loss, 1000)}});
      json cells = json::object();
      if (!latest.empty()) {
        // The file each preview was recorded as (its name, for /api/jobs/ID/files/NAME).
        auto artifacts = service->QueryArtifacts(job.id(), lorad::v1::ARTIFACT_KIND_SAMPLE);
        if (!artifacts.ok()) return SendError(res, artifacts.status());
        for (const auto& [index, sample] : latest) {
          json cell = {{"step", sample.step()}, {"prompt", sample.prompt()}};
          for (const auto& a : artifacts->artifacts()) {
            if (absl::EndsWith(sample.path(), absl::StrCat("/", a.name()))) cell["file"] = a.name();
          }
          cells[std::to_string(index)] = cell;
        }
      }
      grid_rows.push_back({{"job_id", job.id()}, {"label", label}, {"cells", cells}});
    }
    json prompt_list = json::array();
    for (const auto& [index, text] : prompts) prompt_list.push_back({{"index", index}, {"prompt", text}});
    json table = json::parse(planner::FormatSweepTable(rows, planner::TableFormat::kJson), nullptr, false);
    SendJson(res, {{"sweep", ProtoJson(*sweep)},
                   {"table", table},
                   {"curves", curves},
                   {"grid", {{"prompts", prompt_list}, {"rows", grid_rows}}}});
  });

  s.Get("/api/datasets", [service](const httplib::Request&, httplib::Response& res) {
    auto datasets = service->QueryDatasets();
    if (!datasets.ok()) return SendError(res, datasets.status());
    SendJson(res, ProtoJson(*datasets));
  });

  // The curation report (lorad-curate on the curate pool, kept once made).
  s.Get("/api/datasets/([^/]+)/report", [this](const httplib::Request& req, httplib::Response& res) {
    auto dataset = sources_.store->GetDataset(req.matches[1].str());
    if (!dataset.ok()) return SendError(res, dataset.status());
    absl::Notification finished;
    absl::StatusOr<std::string> report;
    sources_.service->CurationReportAsync(
        *dataset, [this] { return stopping_.load(); },
        [&report, &finished](absl::StatusOr<std::string> result) {
          report = std::move(result);
          finished.Notify();
        });
    finished.WaitForNotification();
    if (!report.ok()) return SendError(res, report.status());
    lorad::v1::Dataset proto;
    ToProto(*dataset, &proto);
    SendJson(res, {{"dataset", ProtoJson(proto)}, {"report", json::parse(*report, nullptr, false)}});
  });

  // A dataset's images (the report's thumbnails): relative to its folder,
  // which must lie in the datasets root; no "..", no way out through a symlink.
  s.Get("/api/datasets/([^/]+)/files/(.+)", [this, config](const httplib::Request& req, httplib::Response& res) {
    auto dataset = sources_.store->GetDataset(req.matches[1].str());
    if (!dataset.ok()) return SendError(res, dataset.status());
    const std::string relative = req.matches[2].str();
    if (absl::Status valid = ValidateRelativePath(relative); !valid.ok()) {
      return SendError(res, absl::NotFoundError(absl::StrCat("no file \"", relative, "\": ", valid.message())));
    }
    const fs::path folder = dataset->path;
    const fs::path file = folder / relative;
    if (!IsWithin(config->datasets_root, folder) || !IsWithin(folder, file)) {
      return SendError(res, absl::PermissionDeniedError(
                                absl::StrCat(relative, " resolves outside the daemon's datasets root; not served")));
    }
    std::error_code ec;
    if (!IsImage(file) || !fs::is_regular_file(file, ec)) {
      return SendError(res, absl::NotFoundError(absl::StrCat("dataset ", dataset->id, " has no image ", relative)));
    }
    SendFile(res, file);
  });

  s.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    MetricsSources metrics{sources_.store, sources_.hub, sources_.scheduler, sources_.rpcs};
    res.set_content(RenderMetrics(metrics), "text/plain; version=0.0.4; charset=utf-8");
  });
}

}  // namespace lorad::server
