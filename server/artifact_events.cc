#include "server/artifact_events.h"

#include "absl/strings/str_cat.h"
#include "core/base/sha256.h"
#include "server/paths.h"

namespace lorad::server {
namespace fs = std::filesystem;
namespace {

int64_t TreeBytes(const fs::path& path) {
  std::error_code ec;
  if (fs::is_regular_file(path, ec)) return static_cast<int64_t>(fs::file_size(path, ec));
  int64_t total = 0;
  for (auto it = fs::recursive_directory_iterator(path, ec); !ec && it != fs::end(it); it.increment(ec)) {
    if (it->is_regular_file(ec)) total += static_cast<int64_t>(it->file_size(ec));
  }
  return total;
}

fs::path Resolved(const fs::path& path) {
  std::error_code ec;
  fs::path resolved = fs::weakly_canonical(path, ec);
  return ec ? path.lexically_normal() : resolved;
}

// The artifact's name: relative to the output folder, else to the job folder.
std::string ArtifactName(const fs::path& path, const JobFolder& job) {
  fs::path name = path.lexically_relative(job.output);
  if (name.empty() || name.string().rfind("..", 0) == 0) name = path.lexically_relative(job.dir);
  return name.string();
}

}  // namespace

std::optional<fs::path> ReportedArtifactPath(const lorad::v1::Event& event) {
  std::string path;
  if (event.has_checkpoint()) path = event.checkpoint().path();
  if (event.has_sample()) path = event.sample().path();
  if (path.empty()) return std::nullopt;
  return fs::path(path);
}

JobFolder ResolveJobFolder(const fs::path& job_dir) {
  return JobFolder{Resolved(job_dir), Resolved(job_dir / "output")};
}

ArtifactFile InspectArtifactFile(const fs::path& reported, const JobFolder& job, bool want_sha256) {
  ArtifactFile file;
  file.path = Resolved(reported);
  file.inside_job = IsWithin(job.dir, file.path);
  if (!file.inside_job) return file;
  std::error_code ec;
  file.is_directory = fs::is_directory(file.path, ec);
  file.bytes = TreeBytes(file.path);
  if (want_sha256 && !file.is_directory) {
    if (auto sha = Sha256File(file.path.string()); sha.ok()) file.sha256 = *sha;
  }
  return file;
}

MappedEvent MapWorkerEvent(lorad::v1::Event event, const std::optional<ArtifactFile>& file, const JobFolder& job,
                           int64_t now_ms) {
  MappedEvent mapped;
  if (event.has_finished()) {
    mapped.finished = event.finished();
    return mapped;
  }
  if (event.has_progress()) mapped.step = event.progress().step();
  storage::EventWrite write;
  if (file && !file->inside_job) {
    const auto reported = ReportedArtifactPath(event);
    storage::EventWrite warning;
    warning.event.set_time_unix_ms(now_ms);
    warning.event.mutable_log()->set_level(lorad::v1::Log::WARN);
    warning.event.mutable_log()->set_message(
        absl::StrCat("worker reported ", reported ? reported->string() : file->path.string(), " outside ",
                     job.dir.string(), "; not recorded as an artifact"));
    mapped.writes.push_back(std::move(warning));
  } else if (file && (event.has_checkpoint() || event.has_sample())) {
    storage::ArtifactRecord a;
    a.path = file->path.string();
    a.name = ArtifactName(file->path, job);
    a.is_directory = file->is_directory;
    a.bytes = file->bytes;
    if (event.has_checkpoint()) {
      const auto& c = event.checkpoint();
      a.kind = c.kind() != lorad::v1::ARTIFACT_KIND_UNSPECIFIED ? c.kind()
               : a.is_directory                                 ? lorad::v1::ARTIFACT_KIND_STATE
                                                                : lorad::v1::ARTIFACT_KIND_LORA;
      a.step = c.step();
      a.sha256 = c.sha256();
      a.is_final = c.is_final();
    } else {
      a.kind = lorad::v1::ARTIFACT_KIND_SAMPLE;
      a.step = event.sample().step();
      a.sha256 = event.sample().sha256();
    }
    if (a.sha256.empty()) a.sha256 = file->sha256;
    if (a.kind == lorad::v1::ARTIFACT_KIND_LORA) mapped.lora = a.path;
    write.artifact = std::move(a);
  }
  write.event = std::move(event);
  mapped.writes.push_back(std::move(write));
  return mapped;
}

}  // namespace lorad::server
