#include "client/sweep_view.h"

#include <algorithm>
#include <map>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "core/planner/number_format.h"

namespace lorad::client {
namespace fs = std::filesystem;

absl::StatusOr<std::vector<lorad::v1::JobEvent>> ReadJobEvents(Client& client, int64_t job_id) {
  lorad::v1::StreamEventsRequest request;
  request.set_job_id(job_id);
  request.set_no_follow(true);
  auto ctx = client.Context(/*stream=*/true);
  auto reader = client.stub()->StreamEvents(ctx.get(), request);
  std::vector<lorad::v1::JobEvent> events;
  lorad::v1::JobEvent event;
  while (reader->Read(&event)) events.push_back(event);
  grpc::Status status = reader->Finish();
  if (!status.ok()) return FromGrpc(status);
  return events;
}

absl::StatusOr<lorad::v1::Sweep> GetSweep(Client& client, const std::string& reference) {
  lorad::v1::GetSweepRequest request;
  int64_t id = 0;
  if (absl::SimpleAtoi(reference, &id)) {
    request.set_sweep_id(id);
  } else {
    request.set_name(reference);
  }
  lorad::v1::Sweep sweep;
  auto ctx = client.Context();
  grpc::Status status = client.stub()->GetSweep(ctx.get(), request, &sweep);
  if (!status.ok()) return FromGrpc(status);
  return sweep;
}

absl::StatusOr<std::vector<planner::SweepTableRow>> SweepRows(Client& client, const lorad::v1::Sweep& sweep) {
  std::vector<planner::SweepTableRow> rows;
  for (const auto& job : sweep.jobs()) {
    auto events = ReadJobEvents(client, job.id());
    if (!events.ok()) return events.status();
    rows.push_back(SweepRow(sweep, job, CurveFromEvents(*events)));
  }
  return rows;
}

absl::StatusOr<std::vector<charts::LossSeries>> SweepLossSeries(Client& client, const lorad::v1::Sweep& sweep) {
  std::vector<charts::LossSeries> series;
  for (const auto& job : sweep.jobs()) {
    auto events = ReadJobEvents(client, job.id());
    if (!events.ok()) return events.status();
    JobCurve curve = CurveFromEvents(*events);
    if (curve.loss.empty()) continue;
    series.push_back({VariedLabel(sweep, job), std::move(curve.loss)});
  }
  return series;
}

absl::StatusOr<charts::SampleGrid> FetchSampleGrid(Client& client, const lorad::v1::Sweep& sweep,
                                                   const fs::path& cache_dir) {
  charts::SampleGrid grid;
  std::map<int, std::string> prompts;
  struct RowSamples {
    std::string label;
    std::map<int, std::string> paths;  // prompt index -> local file
  };
  std::vector<RowSamples> rows;
  for (const auto& job : sweep.jobs()) {
    auto events = ReadJobEvents(client, job.id());
    if (!events.ok()) return events.status();
    // The latest preview of each prompt.
    std::map<int, lorad::v1::Sample> latest;
    for (const auto& e : *events) {
      if (!e.event().has_sample()) continue;
      const auto& s = e.event().sample();
      auto it = latest.find(s.prompt_index());
      if (it == latest.end() || it->second.step() <= s.step()) latest[s.prompt_index()] = s;
      prompts.emplace(s.prompt_index(), s.prompt());
    }
    if (latest.empty()) continue;
    lorad::v1::ListArtifactsRequest list;
    list.set_job_id(job.id());
    list.set_kind(lorad::v1::ARTIFACT_KIND_SAMPLE);
    lorad::v1::ListArtifactsResponse artifacts;
    auto ctx = client.Context();
    grpc::Status status = client.stub()->ListArtifacts(ctx.get(), list, &artifacts);
    if (!status.ok()) return FromGrpc(status);
    RowSamples row;
    row.label = VariedLabel(sweep, job);
    for (const auto& [index, sample] : latest) {
      const std::string& path = sample.path();
      for (const auto& a : artifacts.artifacts()) {
        const std::string suffix = "/" + a.name();
        if (path.size() < suffix.size() || path.compare(path.size() - suffix.size(), suffix.size(), suffix) != 0) {
          continue;
        }
        const fs::path target = cache_dir / std::to_string(job.id()) / a.name();
        std::error_code ec;
        if (!fs::exists(target, ec)) {
          if (auto s = client.FetchArtifact(a, target); !s.ok()) return s;
        }
        row.paths[index] = target.string();
        break;
      }
    }
    rows.push_back(std::move(row));
  }
  if (rows.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "no job of sweep ", sweep.name(), " has preview images (set sample_prompts and sample_every_n_steps)"));
  }
  for (const auto& [index, prompt] : prompts) grid.column_labels.push_back(prompt);
  for (const auto& row : rows) {
    grid.row_labels.push_back(row.label);
    std::vector<std::string> cells;
    for (const auto& [index, prompt] : prompts) {
      auto it = row.paths.find(index);
      cells.push_back(it == row.paths.end() ? std::string() : it->second);
    }
    grid.image_paths.push_back(std::move(cells));
  }
  return grid;
}

}  // namespace lorad::client
