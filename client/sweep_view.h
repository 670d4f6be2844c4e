// What `loractl sweep show`, `plot`, `grid` and `fetch --sweep` read from the
// daemon: a sweep's jobs, their loss curves (from the persisted Progress
// events), and their preview images (Sample events + artifacts, downloaded).
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "client/client.h"
#include "client/charts/charts.h"
#include "client/sweep_rows.h"
#include "core/planner/loss_stats.h"
#include "core/planner/sweep_table.h"
#include "lorad/v1/lorad.pb.h"

namespace lorad::client {

// Every recorded event of a job (replay only, no follow).
absl::StatusOr<std::vector<lorad::v1::JobEvent>> ReadJobEvents(Client& client, int64_t job_id);

// The sweep by numeric id, or by name when `reference` is not a number.
absl::StatusOr<lorad::v1::Sweep> GetSweep(Client& client, const std::string& reference);

// One table row per job of the sweep (reads each job's events).
absl::StatusOr<std::vector<planner::SweepTableRow>> SweepRows(Client& client, const lorad::v1::Sweep& sweep);

// Loss series (one per job that logged progress), labelled with VariedLabel.
absl::StatusOr<std::vector<charts::LossSeries>> SweepLossSeries(Client& client, const lorad::v1::Sweep& sweep);

// Downloads each job's latest preview per prompt into cache_dir/<job id>/ and
// lays them out jobs x prompts. FailedPrecondition when no job has previews.
absl::StatusOr<charts::SampleGrid> FetchSampleGrid(Client& client, const lorad::v1::Sweep& sweep,
                                                   const std::filesystem::path& cache_dir);

}  // namespace lorad::client
