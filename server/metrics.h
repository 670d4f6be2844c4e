// Prometheus metrics of the daemon in the text exposition format 0.0.4,
// served at /metrics on the dashboard's port (server/http_server.h): the queue,
// jobs by state, each running job's speed, loss and GPU memory (from its
// latest Progress event), event fan-out subscribers, and every gRPC call's
// count and latency (one place: a server interceptor).
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <grpcpp/support/server_interceptor.h>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "server/event_hub.h"
#include "server/scheduler.h"
#include "storage/job_store.h"

namespace lorad::server {

// Builds one exposition: per family a HELP and a TYPE line, then its samples.
class MetricsText {
 public:
  using Labels = std::vector<std::pair<std::string, std::string>>;
  // `type`: counter, gauge or histogram. Call once per family, before its samples.
  void Family(std::string_view name, std::string_view type, std::string_view help);
  void Sample(std::string_view name, const Labels& labels, double value);
  const std::string& text() const { return text_; }

 private:
  std::string text_;
};

// Label values escaped as the format wants (\\, \", \n).
std::string EscapeLabelValue(std::string_view value);
// A sample value: integers without a fraction, "+Inf"/"-Inf"/"NaN", else %.17g.
std::string FormatSampleValue(double value);

// Counts and times gRPC calls by method and status code. Thread-safe.
class RpcMetrics {
 public:
  // Upper bounds (seconds) of the latency histogram's buckets; streams
  // (StreamEvents, uploads) land in the high ones.
  static constexpr std::array<double, 12> kBuckets = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                                      0.1,   0.25,   1,     5,    30,    300};

  // `method`: "/lorad.v1.Lorad/GetJob"; `code`: the grpc::StatusCode sent.
  void Record(std::string_view method, int code, double seconds);
  // Appends lorad_rpc_requests_total{method,code} and the histogram
  // lorad_rpc_duration_seconds{method}.
  void AppendTo(MetricsText* out);
  // An interceptor factory that calls Record once per call (at its status;
  // a call that ends without one counts as CANCELLED). `this` must outlive the server.
  std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> NewInterceptorFactory();

 private:
  struct Latency {
    std::array<uint64_t, kBuckets.size()> buckets{};  // not cumulative; +Inf is `count`
    uint64_t count = 0;
    double sum = 0;
  };
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, absl::flat_hash_map<int, uint64_t>> calls_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, Latency> latency_ ABSL_GUARDED_BY(mu_);
};

// What /metrics reads; all borrowed, all outlive the HTTP server.
struct MetricsSources {
  storage::JobStore* store = nullptr;
  EventHub* hub = nullptr;
  Scheduler* scheduler = nullptr;
  RpcMetrics* rpcs = nullptr;
};

// The whole exposition. Store errors leave their families out (and count in
// lorad_metrics_errors) rather than fail the scrape.
std::string RenderMetrics(const MetricsSources& sources);

}  // namespace lorad::server
