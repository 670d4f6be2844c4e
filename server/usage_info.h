// GetServerInfo's cost and idle-switch fields (issue 13).
#pragma once

#include "lorad/v1/lorad.pb.h"
#include "server/config.h"
#include "server/idle_switch.h"
#include "storage/job_store.h"

namespace lorad::server {

// Fills price_per_hour, cost_since_start (the box's meter: uptime x price),
// the GPU time and cost of jobs since the start (the start is now minus
// `info->uptime_s()`, so set that first), the idle switch's settings and idle
// time (`idle_switch` null: off) and the latest server events.
void FillUsageAndIdle(const ServerConfig& config, storage::JobStore* store, const IdleSwitch* idle_switch,
                      lorad::v1::ServerInfo* info);

}  // namespace lorad::server
