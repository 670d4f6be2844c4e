// The dashboard: an HTTP server inside lorad on its own port (--http, loopback
// by default, reached through the same SSH tunnel as the gRPC port). It serves
// the pages in server/web/ (compiled into the binary), a JSON API built on the
// same LoradService queries as the gRPC handlers, live job events as
// Server-Sent Events from the same EventHub as StreamEvents (resuming with
// Last-Event-ID = the event's seq), downloads of a job's artifacts and of a
// dataset's images (confined to the daemon's jobs and datasets roots), and
// Prometheus /metrics.
//
// Auth: the gRPC API's bearer tokens. `Authorization: Bearer T`, the HttpOnly
// cookie the login page (or one `?token=T`) sets, or nothing when lorad has no
// token. Without it every route but /login answers 401 (/metrics too, unless
// --metrics-open). A POST authorised by the cookie must come from the
// dashboard's own origin (Origin, else Referer, equal to http://<Host>).
// Thread-safe; Start/Stop from one thread.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "server/config.h"
#include "server/event_hub.h"
#include "server/metrics.h"
#include "server/scheduler.h"
#include "server/service.h"
#include "storage/job_store.h"

namespace httplib {
class Server;
}

namespace lorad::server {

struct HttpSources {
  const ServerConfig* config = nullptr;
  storage::JobStore* store = nullptr;
  EventHub* hub = nullptr;
  Scheduler* scheduler = nullptr;
  LoradService* service = nullptr;
  RpcMetrics* rpcs = nullptr;
};

class HttpServer {
 public:
  // Everything in `sources` is borrowed and must outlive the server.
  explicit HttpServer(HttpSources sources);
  ~HttpServer();  // Stop()

  // Binds config->http ("HOST:PORT", port 0: any free one) and serves on a
  // thread of its own. UNAVAILABLE naming the address when it cannot bind.
  absl::Status Start();
  // The bound port (after Start).
  int port() const { return port_; }
  // Ends open event streams (within a second), stops accepting, joins. Idempotent.
  void Stop();

  // Most event streams open at once; more answer 503 (each holds a thread).
  static constexpr int kMaxStreams = 32;

 private:
  void Routes();

  HttpSources sources_;
  std::unique_ptr<httplib::Server> server_;
  std::thread thread_;
  int port_ = 0;
  std::atomic<bool> stopping_{false};
  std::atomic<int> open_streams_{0};
};

}  // namespace lorad::server
