#include "server/usage_info.h"

#include "core/base/clock.h"
#include "spdlog/spdlog.h"

namespace lorad::server {

void FillUsageAndIdle(const ServerConfig& config, storage::JobStore* store, const IdleSwitch* idle_switch,
                      lorad::v1::ServerInfo* info) {
  info->set_price_per_hour(config.price_per_hour);
  info->set_cost_since_start(static_cast<double>(info->uptime_s()) / 3600.0 * config.price_per_hour);
  const int64_t started_ms = NowUnixMs() - info->uptime_s() * 1000;
  if (auto usage = store->UsageSince(started_ms); usage.ok()) {
    info->set_jobs_gpu_seconds_since_start(usage->gpu_seconds);
    info->set_jobs_cost_since_start(usage->cost);
  } else {
    spdlog::warn("GetServerInfo: no job usage: {}", usage.status().ToString());
  }
  if (idle_switch != nullptr) {
    info->set_on_idle_command(idle_switch->options().command);
    info->set_on_idle_after_s(absl::ToDoubleSeconds(idle_switch->options().after));
    info->set_idle_for_s(idle_switch->idle_for_s());
  }
  if (auto events = store->ListServerEvents(5); events.ok()) {
    for (const auto& e : *events) {
      auto* out = info->add_recent_events();
      out->set_id(e.id);
      out->set_time_unix_ms(e.time_ms);
      out->set_kind(e.kind);
      out->set_message(e.message);
    }
  }
}

}  // namespace lorad::server
