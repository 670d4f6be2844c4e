#include "server/dataset_tag.h"

#include <fstream>
#include <map>
#include <random>

#include <nlohmann/json.hpp>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "core/base/sha256.h"
#include "core/base/status_macros.h"
#include "core/base/subprocess.h"
#include "server/dataset_delete.h"
#include "server/dataset_upload.h"
#include "server/paths.h"
#include "spdlog/spdlog.h"

namespace lorad::server {
namespace fs = std::filesystem;
namespace {

constexpr size_t kMaxCaptionsReturned = 1000;

std::string Quoted(const std::string& s) { return absl::StrCat("\"", absl::CHexEscape(s.substr(0, 200)), "\""); }

// Removes the staging folder on every path out of TagStoredDataset.
class StagingFolder {
 public:
  explicit StagingFolder(fs::path path) : path_(std::move(path)) {}
  ~StagingFolder() {
    if (path_.empty()) return;
    std::error_code ec;
    fs::remove_all(path_, ec);  // never follows symlinks; none are created
  }
  StagingFolder(const StagingFolder&) = delete;
  StagingFolder& operator=(const StagingFolder&) = delete;
  const fs::path& path() const { return path_; }
  void Release() { path_.clear(); }

 private:
  fs::path path_;
};

// Hard links (a copy across file systems) of every regular file below
// `source` into `staging`, same relative paths. A symlink is refused: the
// dataset's files must be its own.
absl::Status StageFiles(const fs::path& source, const fs::path& staging, const std::string& name) {
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(source, ec); !ec && it != fs::end(it); it.increment(ec)) {
    const fs::path rel = fs::relative(it->path(), source);
    const fs::file_status status = it->symlink_status(ec);
    if (ec) break;
    if (fs::is_symlink(status)) {
      return absl::PermissionDeniedError(absl::StrCat("dataset ", Quoted(name), " holds a symbolic link (",
                                                      rel.generic_string(),
                                                      "); lorad tags only files a dataset owns: replace the link "
                                                      "with the file and upload it again"));
    }
    const fs::path target = staging / rel;
    if (fs::is_directory(status)) {
      fs::create_directories(target, ec);
    } else if (fs::is_regular_file(status)) {
      fs::create_hard_link(it->path(), target, ec);
      if (ec) {
        ec.clear();
        fs::copy_file(it->path(), target, ec);
      }
    }
    if (ec) {
      return absl::InternalError(absl::StrCat("cannot stage ", rel.generic_string(), " of dataset ", Quoted(name),
                                              ": ", ec.message()));
    }
  }
  if (ec) return absl::InternalError(absl::StrCat("cannot list dataset ", Quoted(name), ": ", ec.message()));
  return absl::OkStatus();
}

bool IsImage(const fs::path& path) {
  const std::string ext = absl::AsciiStrToLower(path.extension().string());
  return ext == ".png" || ext == ".jpg" || ext == ".jpeg" || ext == ".webp" || ext == ".bmp";
}

// The upload's content id (server/dataset_upload.cc): sha256 over the sorted
// "path\tsha256\n" lines, first 32 hex digits; plus the folder's totals.
struct FolderContent {
  std::string id;
  int64_t bytes = 0;
  int files = 0;
  int images = 0;
};

absl::StatusOr<FolderContent> HashFolder(const fs::path& folder) {
  std::map<std::string, std::string> files;
  FolderContent content;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(folder, ec); !ec && it != fs::end(it); it.increment(ec)) {
    if (!it->is_regular_file(ec) || it->is_symlink(ec)) continue;
    std::ifstream in(it->path(), std::ios::binary);
    Sha256 hash;
    std::string buffer(1 << 20, '\0');
    while (in.read(buffer.data(), static_cast<std::streamsize>(buffer.size())) || in.gcount() > 0) {
      hash.Update(std::string_view(buffer.data(), static_cast<size_t>(in.gcount())));
      content.bytes += in.gcount();
    }
    if (in.bad()) return absl::InternalError(absl::StrCat("cannot read ", it->path().string()));
    const std::string rel = fs::relative(it->path(), folder).generic_string();
    files[rel] = hash.HexDigest();
    content.images += IsImage(rel) ? 1 : 0;
  }
  if (ec) return absl::InternalError(absl::StrCat("cannot list ", folder.string(), ": ", ec.message()));
  Sha256 id_hash;
  for (const auto& entry : files) id_hash.Update(absl::StrCat(entry.first, "\t", entry.second, "\n"));
  content.id = id_hash.HexDigest().substr(0, 32);
  content.files = static_cast<int>(files.size());
  return content;
}

}  // namespace

absl::StatusOr<fs::path> ResolveModelsFile(const fs::path& models_root, const std::string& relative,
                                           const std::string& what) {
  if (absl::Status valid = ValidateRelativePath(relative); !valid.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(what, " ", Quoted(relative),
                                                   " must be a path relative to the daemon's models root ",
                                                   models_root.string(), ": ", valid.message()));
  }
  fs::path path = models_root;
  std::error_code ec;
  for (const auto& part : fs::path(relative)) {
    path /= part;
    const fs::file_status status = fs::symlink_status(path, ec);
    if (fs::is_symlink(status)) {
      return absl::PermissionDeniedError(absl::StrCat(what, " ", Quoted(relative), ": ", path.string(),
                                                      " is a symbolic link; lorad reads only real files in the "
                                                      "models root"));
    }
    if (ec || !fs::exists(status)) {
      return absl::NotFoundError(absl::StrCat(what, " ", Quoted(relative), " not found in the models root ",
                                              models_root.string(), " (copy it there first)"));
    }
  }
  if (!fs::is_regular_file(fs::symlink_status(path, ec)) || !IsWithin(models_root, path)) {
    return absl::InvalidArgumentError(absl::StrCat(what, " ", Quoted(relative), " is not a file in the models root"));
  }
  return path;
}

absl::StatusOr<std::vector<std::string>> TagArguments(const lorad::v1::TagDatasetRequest& request,
                                                      const fs::path& model, const fs::path& tags_csv) {
  std::vector<std::string> args = {"--model", model.string(), "--tags", tags_csv.string(), "--json"};
  auto probability = [&](const char* flag, bool has, float value) -> absl::Status {
    if (!has) return absl::OkStatus();
    if (!(value >= 0.0f) || value > 2.0f) {
      return absl::InvalidArgumentError(absl::StrCat(flag + 2, " must be a probability in 0..1 (above 1 "
                                                     "disables the category), got ", value));
    }
    args.insert(args.end(), {flag, absl::StrCat(value)});
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(probability("--threshold", request.has_threshold(), request.threshold()));
  RETURN_IF_ERROR(probability("--character-threshold", request.has_character_threshold(),
                              request.character_threshold()));
  if (!request.mode().empty()) {
    if (request.mode() != "merge" && request.mode() != "overwrite" && request.mode() != "skip-existing") {
      return absl::InvalidArgumentError(absl::StrCat("mode ", Quoted(request.mode()),
                                                     " is not one of merge, overwrite, skip-existing"));
    }
    args.insert(args.end(), {"--mode", request.mode()});
  }
  if (request.keep_tokens() < 0 || request.keep_tokens() > 1000) {
    return absl::InvalidArgumentError(absl::StrCat("keep_tokens must be in 0..1000, got ", request.keep_tokens()));
  }
  if (request.keep_tokens() > 0) args.insert(args.end(), {"--keep-tokens", absl::StrCat(request.keep_tokens())});
  if (request.trigger().find('\n') != std::string::npos || request.trigger().find(',') != std::string::npos ||
      request.trigger().size() > 200) {
    return absl::InvalidArgumentError("trigger must be one caption token: no comma or newline, at most 200 bytes");
  }
  if (!request.trigger().empty()) args.insert(args.end(), {"--trigger", request.trigger()});
  if (const std::string& ext = request.caption_extension(); !ext.empty()) {
    const std::string bare = ext[0] == '.' ? ext.substr(1) : ext;
    if (bare.empty() || bare.size() > 16 ||
        !std::all_of(bare.begin(), bare.end(), [](char c) { return absl::ascii_isalnum(c) || c == '_'; })) {
      return absl::InvalidArgumentError(absl::StrCat("caption_extension ", Quoted(ext),
                                                     " must be an extension such as .txt or .caption"));
    }
    args.insert(args.end(), {"--caption-extension", "." + bare});
  }
  std::string undesired;
  for (const auto& tag : request.undesired_tags()) absl::StrAppend(&undesired, undesired.empty() ? "" : ",", tag);
  if (!undesired.empty()) args.insert(args.end(), {"--undesired-tags", undesired});
  if (request.character_tags_first()) args.push_back("--character-tags-first");
  if (request.use_rating_tags()) args.push_back("--use-rating-tags");
  if (request.keep_underscores()) args.push_back("--keep-underscores");
  return args;
}

absl::StatusOr<lorad::v1::TagDatasetResponse> TagStoredDataset(storage::JobStore* store, absl::Mutex* datasets_mu,
                                                               const TagJob& job,
                                                               const lorad::v1::TagDatasetRequest& request,
                                                               std::function<bool()> should_stop) {
  if (request.model().empty()) {
    return absl::InvalidArgumentError("model is empty: give the tagger's model.onnx, relative to the models root");
  }
  ASSIGN_OR_RETURN(fs::path model, ResolveModelsFile(job.models_root, request.model(), "model"));
  const std::string tags_rel =
      !request.tags_csv().empty()
          ? request.tags_csv()
          : (fs::path(request.model()).parent_path() / "selected_tags.csv").generic_string();
  ASSIGN_OR_RETURN(fs::path tags_csv, ResolveModelsFile(job.models_root, tags_rel, "tags_csv"));
  ASSIGN_OR_RETURN(std::vector<std::string> args, TagArguments(request, model, tags_csv));
  if (!request.name().empty() && (request.name().size() > 200 || request.name().find('\n') != std::string::npos)) {
    return absl::InvalidArgumentError("name must be one line of at most 200 bytes");
  }

  std::random_device rd;
  StagingFolder staging(job.datasets_root / absl::StrCat(".incoming-tag-", rd(), rd()));
  lorad::v1::TagDatasetResponse response;
  std::string source_name;
  {
    // No delete may hide the source while its files are linked.
    absl::ReaderMutexLock lock(datasets_mu);
    ASSIGN_OR_RETURN(DatasetToDelete source, FindDatasetToDelete(store, job.datasets_root, request.dataset()));
    if (source.folder.empty()) {
      return absl::FailedPreconditionError(absl::StrCat("dataset ", Quoted(request.dataset()),
                                                        " has no folder in the datasets root to tag"));
    }
    response.set_source_id(source.record ? source.record->id : "");
    source_name = source.record ? source.record->name : source.folder.filename().string();
    std::error_code ec;
    fs::create_directories(staging.path(), ec);
    if (ec) return absl::InternalError(absl::StrCat("cannot create ", staging.path().string(), ": ", ec.message()));
    RETURN_IF_ERROR(StageFiles(source.folder, staging.path(), request.dataset()));
  }

  SubprocessOptions options;
  options.argv = {job.binary, staging.path().string()};
  options.argv.insert(options.argv.end(), args.begin(), args.end());
  options.should_stop = std::move(should_stop);
  options.stderr_tail_bytes = 16384;
  auto run = RunSubprocess(options);
  if (!run.ok()) {
    if (run.status().code() == absl::StatusCode::kCancelled) return run.status();
    return absl::UnavailableError(absl::StrCat("lorad-tag (", job.binary, ") did not run: ", run.status().message()));
  }
  std::ofstream(job.stderr_log) << run->stderr_tail;
  if (!run->succeeded()) {
    // 1: some images failed (named on stderr); 2: arguments, model or tag list.
    const std::string tail = run->stderr_tail.substr(run->stderr_tail.size() - std::min<size_t>(3000, run->stderr_tail.size()));
    const auto code = run->exit_code == 1 || run->exit_code == 2 ? absl::StatusCode::kInvalidArgument
                                                                  : absl::StatusCode::kInternal;
    return absl::Status(code, absl::StrCat("tagging dataset ", Quoted(request.dataset()), " failed (lorad-tag ",
                                           run->Describe(), "); nothing was stored: ", tail));
  }
  nlohmann::json report = nlohmann::json::parse(run->stdout_text, nullptr, false);
  if (report.is_discarded() || !report.is_object()) {
    return absl::InternalError("lorad-tag printed no JSON report");
  }
  response.set_images(report.value("images", 0));
  response.set_written(report.value("written", 0));
  response.set_skipped(report.value("skipped", 0));
  response.set_trigger_after_kept(report.value("trigger_after_kept", 0));
  response.set_caption_extension(report.value("caption_extension", std::string()));
  if (report.contains("captions") && report["captions"].is_array()) {
    for (const auto& c : report["captions"]) {
      if (static_cast<size_t>(response.captions_size()) >= kMaxCaptionsReturned) {
        response.set_captions_truncated(true);
        break;
      }
      auto* caption = response.add_captions();
      caption->set_path(c.value("path", std::string()));
      caption->set_caption(c.value("caption", std::string()));
    }
  }

  ASSIGN_OR_RETURN(FolderContent content, HashFolder(staging.path()));
  const fs::path final_dir = job.datasets_root / content.id;
  absl::StatusOr<storage::DatasetRecord> stored = absl::UnknownError("not stored");
  {
    absl::ReaderMutexLock lock(datasets_mu);
    std::error_code ec;
    if (!fs::exists(final_dir)) {
      fs::rename(staging.path(), final_dir, ec);
      if (!ec) staging.Release();
    }
    if (ec) return absl::InternalError(absl::StrCat("cannot store the tagged dataset: ", ec.message()));
    auto existing = store->GetDataset(content.id);
    if (existing.ok()) {
      stored = *existing;  // the same files were stored before (e.g. tagged twice alike)
    } else {
      storage::DatasetRecord record{content.id,
                                    request.name().empty() ? absl::StrCat(source_name, "-tagged") : request.name(),
                                    final_dir.string(), content.bytes, content.files, content.images, 0};
      stored = store->PutDataset(record);
    }
  }
  if (!stored.ok()) return stored.status();
  ToProto(*stored, response.mutable_dataset());
  spdlog::info("dataset {} tagged into {} ({} captions written, {} skipped)", request.dataset(), content.id,
               response.written(), response.skipped());
  return response;
}

}  // namespace lorad::server
