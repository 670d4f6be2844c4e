#include "server/metrics.h"

#include <chrono>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace lorad::server {
namespace {

const char* CodeName(int code) {
  static constexpr const char* kNames[] = {
      "OK",           "CANCELLED",      "UNKNOWN",           "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
      "NOT_FOUND",    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
      "ABORTED",      "OUT_OF_RANGE",   "UNIMPLEMENTED",     "INTERNAL",         "UNAVAILABLE",
      "DATA_LOSS",    "UNAUTHENTICATED"};
  return code >= 0 && code <= 16 ? kNames[code] : "UNKNOWN";
}

class RpcMetricsInterceptor final : public grpc::experimental::Interceptor {
 public:
  RpcMetricsInterceptor(RpcMetrics* metrics, std::string method)
      : metrics_(metrics), method_(std::move(method)), start_(std::chrono::steady_clock::now()) {}
  ~RpcMetricsInterceptor() override {
    if (!recorded_) metrics_->Record(method_, grpc::StatusCode::CANCELLED, Elapsed());
  }

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(grpc::experimental::InterceptionHookPoints::PRE_SEND_STATUS) &&
        !recorded_) {
      recorded_ = true;
      metrics_->Record(method_, methods->GetSendStatus().error_code(), Elapsed());
    }
    methods->Proceed();
  }

 private:
  double Elapsed() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }
  RpcMetrics* metrics_;
  const std::string method_;
  const std::chrono::steady_clock::time_point start_;
  bool recorded_ = false;  // gRPC runs one call's interception hooks one at a time
};

class RpcMetricsFactory final : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit RpcMetricsFactory(RpcMetrics* metrics) : metrics_(metrics) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(grpc::experimental::ServerRpcInfo* info) override {
    return new RpcMetricsInterceptor(metrics_, info->method());  // owned by gRPC's call
  }

 private:
  RpcMetrics* metrics_;
};

std::string LabelText(const MetricsText::Labels& labels) {
  if (labels.empty()) return "";
  std::string out = "{";
  for (size_t i = 0; i < labels.size(); ++i) {
    absl::StrAppend(&out, i ? "," : "", labels[i].first, "=\"", EscapeLabelValue(labels[i].second), "\"");
  }
  out += "}";
  return out;
}

}  // namespace

std::string EscapeLabelValue(std::string_view value) {
  std::string out;
  out.reserve(value.size());
  for (char c : value) {
    if (c == '\\') out += "\\\\";
    else if (c == '"') out += "\\\"";
    else if (c == '\n') out += "\\n";
    else out += c;
  }
  return out;
}

std::string FormatSampleValue(double value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "+Inf" : "-Inf";
  if (value == std::floor(value) && std::fabs(value) < 1e15) return absl::StrFormat("%.0f", value);
  return absl::StrFormat("%.17g", value);
}

void MetricsText::Family(std::string_view name, std::string_view type, std::string_view help) {
  absl::StrAppend(&text_, "# HELP ", std::string(name), " ", std::string(help), "\n# TYPE ", std::string(name), " ",
                  std::string(type), "\n");
}

void MetricsText::Sample(std::string_view name, const Labels& labels, double value) {
  absl::StrAppend(&text_, std::string(name), LabelText(labels), " ", FormatSampleValue(value), "\n");
}

void RpcMetrics::Record(std::string_view method, int code, double seconds) {
  std::string name(method);
  if (!name.empty() && name.front() == '/') name.erase(0, 1);
  absl::MutexLock lock(&mu_);
  ++calls_[name][code];
  Latency& latency = latency_[name];
  ++latency.count;
  latency.sum += seconds;
  for (size_t i = 0; i < kBuckets.size(); ++i) {
    if (seconds <= kBuckets[i]) {
      ++latency.buckets[i];
      break;
    }
  }
}

void RpcMetrics::AppendTo(MetricsText* out) {
  absl::MutexLock lock(&mu_);
  out->Family("lorad_rpc_requests_total", "counter", "gRPC calls answered, by method and status code.");
  for (const auto& [method, codes] : calls_) {
    for (const auto& [code, count] : codes) {
      out->Sample("lorad_rpc_requests_total", {{"method", method}, {"code", CodeName(code)}},
                  static_cast<double>(count));
    }
  }
  out->Family("lorad_rpc_duration_seconds", "histogram",
              "Time from a gRPC call's start to its status (a stream's whole life), by method.");
  for (const auto& [method, latency] : latency_) {
    uint64_t cumulative = 0;
    for (size_t i = 0; i < kBuckets.size(); ++i) {
      cumulative += latency.buckets[i];
      out->Sample("lorad_rpc_duration_seconds_bucket", {{"method", method}, {"le", FormatSampleValue(kBuckets[i])}},
                  static_cast<double>(cumulative));
    }
    out->Sample("lorad_rpc_duration_seconds_bucket", {{"method", method}, {"le", "+Inf"}},
                static_cast<double>(latency.count));
    out->Sample("lorad_rpc_duration_seconds_sum", {{"method", method}}, latency.sum);
    out->Sample("lorad_rpc_duration_seconds_count", {{"method", method}}, static_cast<double>(latency.count));
  }
}

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> RpcMetrics::NewInterceptorFactory() {
  return std::make_unique<RpcMetricsFactory>(this);
}

std::string RenderMetrics(const MetricsSources& sources) {
  MetricsText out;
  int errors = 0;
  static constexpr storage::JobState kStates[] = {storage::JobState::kQueued, storage::JobState::kRunning,
                                                  storage::JobState::kSucceeded, storage::JobState::kFailed,
                                                  storage::JobState::kCancelled};
  std::vector<std::pair<storage::JobState, int64_t>> counts;
  for (storage::JobState state : kStates) {
    auto count = sources.store->CountJobs(state);
    if (count.ok()) counts.emplace_back(state, *count);
    else ++errors;
  }
  out.Family("lorad_queue_length", "gauge", "Jobs waiting for a slot.");
  for (const auto& [state, count] : counts) {
    if (state == storage::JobState::kQueued) out.Sample("lorad_queue_length", {}, static_cast<double>(count));
  }
  out.Family("lorad_jobs", "gauge", "Jobs recorded, by state.");
  for (const auto& [state, count] : counts) {
    std::string name = storage::JobStateName(state);
    for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    out.Sample("lorad_jobs", {{"state", name}}, static_cast<double>(count));
  }
  out.Family("lorad_slots", "gauge", "Training slots (one worker each).");
  out.Sample("lorad_slots", {}, sources.scheduler->slots());
  out.Family("lorad_slots_busy", "gauge", "Slots running a job now.");
  out.Sample("lorad_slots_busy", {}, sources.scheduler->running());
  out.Family("lorad_event_subscribers", "gauge",
             "Open event subscriptions (StreamEvents calls and dashboard streams).");
  out.Sample("lorad_event_subscribers", {}, static_cast<double>(sources.hub->SubscriberCount()));

  // Each running job's latest Progress event (the hub's memory, else SQLite).
  storage::JobFilter running;
  running.states = {storage::JobState::kRunning};
  running.page_size = 1000;
  auto page = sources.store->ListJobs(running);
  if (!page.ok()) ++errors;
  struct Latest {
    MetricsText::Labels labels;
    lorad::v1::Progress progress;
  };
  std::vector<Latest> latest;
  for (const auto& job : page.ok() ? page->jobs : std::vector<storage::JobRecord>{}) {
    auto batch = sources.hub->Fetch(job.id, std::max<int64_t>(0, job.last_seq - 64), 64);
    if (!batch.ok()) continue;
    const lorad::v1::Progress* progress = nullptr;
    for (const auto& e : batch->events) {
      if (e.event.has_progress()) progress = &e.event.progress();
    }
    if (progress == nullptr) continue;
    latest.push_back({{{"job", std::to_string(job.id)}, {"name", job.name}}, *progress});
  }
  auto family = [&](const char* name, const char* help, auto value) {
    out.Family(name, "gauge", help);
    for (const auto& l : latest) out.Sample(name, l.labels, value(l.progress));
  };
  family("lorad_job_step", "Optimizer steps done, per running job.",
         [](const lorad::v1::Progress& p) { return static_cast<double>(p.step()); });
  family("lorad_job_total_steps", "Planned optimizer steps, per running job.",
         [](const lorad::v1::Progress& p) { return static_cast<double>(p.total_steps()); });
  family("lorad_job_steps_per_second", "Optimizer steps per second, per running job.",
         [](const lorad::v1::Progress& p) { return p.it_per_s(); });
  family("lorad_job_loss", "The latest step's loss, per running job.",
         [](const lorad::v1::Progress& p) { return p.loss(); });
  family("lorad_job_loss_average", "The epoch's moving average loss (kohya's avr_loss), per running job.",
         [](const lorad::v1::Progress& p) { return p.loss_avg(); });
  family("lorad_job_gpu_memory_bytes", "Tensor memory allocated on the job's GPU (0 on the CPU), per running job.",
         [](const lorad::v1::Progress& p) { return static_cast<double>(p.gpu_memory_allocated_bytes()); });
  family("lorad_job_eta_seconds", "Estimated seconds to the last step, per running job.",
         [](const lorad::v1::Progress& p) { return p.eta_s(); });

  sources.rpcs->AppendTo(&out);
  out.Family("lorad_metrics_errors", "gauge", "Store reads this scrape could not make (their families are left out).");
  out.Sample("lorad_metrics_errors", {}, errors);
  return out.text();
}

}  // namespace lorad::server
