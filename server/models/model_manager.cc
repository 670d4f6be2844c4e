#include "server/models/model_manager.h"

#include <fstream>

#include <toml++/toml.h>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "core/base/clock.h"
#include "core/base/sha256.h"
#include "core/io/safetensors_header.h"
#include "core/models/base_model.h"
#include "server/disk_space.h"
#include "server/job_config.h"
#include "spdlog/spdlog.h"

namespace lorad::server {
namespace fs = std::filesystem;
using storage::ModelRecord;
using storage::ModelState;

namespace {

constexpr char kModelKey[] = "pretrained_model_name_or_path";

bool IsHex(absl::string_view text) {
  for (char c : text) {
    if (!absl::ascii_isxdigit(static_cast<unsigned char>(c))) return false;
  }
  return !text.empty();
}

absl::Status ValidateSha256(const std::string& sha256) {
  if (sha256.size() != 64 || !IsHex(sha256)) {
    return absl::InvalidArgumentError(absl::StrCat("sha256 '", sha256, "' is not 64 hex digits"));
  }
  return absl::OkStatus();
}

std::string GiB(int64_t bytes) { return absl::StrCat(static_cast<double>(bytes) / (int64_t{1} << 30)); }

// The model key's string value where kohya reads it: top level or one section deep.
std::optional<std::string> ModelValue(const toml::table& table) {
  if (auto v = table[kModelKey].value<std::string>()) return v;
  for (auto&& [name, node] : table) {
    if (const auto* sub = node.as_table()) {
      if (auto v = (*sub)[kModelKey].value<std::string>()) return v;
    }
  }
  return std::nullopt;
}

}  // namespace

absl::StatusOr<ModelFacts> ReadModelFacts(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::error_code ec;
  const uint64_t size = fs::file_size(path, ec);
  if (!in || ec) return absl::InvalidArgumentError(absl::StrCat("cannot read ", path.string()));
  uint8_t prefix[8] = {0};
  in.read(reinterpret_cast<char*>(prefix), 8);
  const std::string what = "the model file";
  absl::StatusOr<uint64_t> length = io::ReadSafetensorsHeaderLength(prefix, size, what);
  if (!length.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("not a safetensors checkpoint (", length.status().message(), ")"));
  }
  std::string header(*length, '\0');
  in.read(header.data(), static_cast<std::streamsize>(header.size()));
  std::vector<io::TensorInfo> tensors;
  io::Metadata metadata;
  if (absl::Status s = io::ParseSafetensorsHeaderText(header, size, what, &tensors, &metadata); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("not a safetensors checkpoint (", s.message(), ")"));
  }
  ModelFacts facts;
  facts.family = "unknown";
  std::vector<std::string> names;
  names.reserve(tensors.size());
  for (const auto& tensor : tensors) {
    names.push_back(tensor.name);
    // The text encoders tell the families apart in the original (single-file) layout.
    if (absl::StartsWith(tensor.name, "conditioner.embedders.1.")) facts.family = "sdxl";
    else if (facts.family == "unknown" && absl::StartsWith(tensor.name, "cond_stage_model.model.")) facts.family = "sd2";
    else if (facts.family == "unknown" && absl::StartsWith(tensor.name, "cond_stage_model.transformer.")) facts.family = "sd15";
  }
  const models::BaseModelFacts base = models::DescribeBaseModel(names, metadata);
  facts.prediction = models::PredictionName(base.prediction);
  facts.lineage = base.lineage;
  return facts;
}

std::string TomlQuoted(const std::string& text) {
  std::string out = "\"";
  for (char c : text) {
    if (c == '"' || c == '\\') out.push_back('\\');
    out.push_back(c);
  }
  out.push_back('"');
  return out;
}

ModelManager::ModelManager(storage::JobStore* store, EventHub* hub, std::function<void()> model_ready,
                           ModelManagerOptions options)
    : store_(store),
      hub_(hub),
      model_ready_(std::move(model_ready)),
      options_(std::move(options)),
      http_(options_.http),
      pull_pool_("model pulls", std::max(1, options_.parallel_pulls), 256) {}

ModelManager::~ModelManager() { Shutdown(); }

fs::path ModelManager::StoredPath(const std::string& sha256) const {
  return options_.models_root / "sha256" / absl::StrCat(sha256, ".safetensors");
}

fs::path ModelManager::PartialPath(int64_t model_id) const {
  return options_.models_root / ".partial" / absl::StrCat(model_id, ".part");
}

absl::Status ModelManager::Start() {
  std::error_code ec;
  for (const fs::path& dir : {options_.models_root / "sha256", options_.models_root / ".partial"}) {
    fs::create_directories(dir, ec);
    if (ec) return absl::PermissionDeniedError(absl::StrCat("cannot create ", dir.string(), ": ", ec.message()));
  }
  auto models = store_->ListModels();
  if (!models.ok()) return models.status();
  for (const ModelRecord& model : *models) {
    if (model.state != ModelState::kDownloading) continue;
    spdlog::info("model '{}': resuming its download at byte {}", model.name, fs::exists(PartialPath(model.id))
                                                                                ? fs::file_size(PartialPath(model.id))
                                                                                : 0);
    if (absl::Status s = QueuePull(model.id); !s.ok()) return s;
  }
  return absl::OkStatus();
}

void ModelManager::Shutdown() {
  pull_pool_.Shutdown();
  check_pool_.Shutdown();
}

absl::Status ModelManager::CheckReserve(int64_t more_bytes) const {
  const int64_t available = AvailableBytes(options_.models_root);
  if (available == INT64_MAX) return absl::OkStatus();
  if (available - more_bytes < options_.free_reserve_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "storing ", more_bytes, " more bytes would leave ", std::max<int64_t>(available - more_bytes, 0),
        " bytes free on the disk holding ", options_.models_root.string(), ", under the reserve of ",
        options_.free_reserve_bytes, " bytes (", GiB(options_.free_reserve_bytes),
        " GiB, models_free_reserve_gb in lorad.toml / --models-free-reserve-gb): free space there "
        "(`loractl models rm`) or lower the reserve"));
  }
  return absl::OkStatus();
}

absl::Status ModelManager::QueuePull(int64_t model_id) {
  {
    absl::MutexLock lock(&mu_);
    if (!busy_.insert(model_id).second) return absl::OkStatus();  // already on its way
  }
  absl::Status queued = pull_pool_.Submit([this, model_id](const std::atomic<bool>& stopping) {
    RunPull(model_id, stopping);
    absl::MutexLock lock(&mu_);
    busy_.erase(model_id);
    abandon_.erase(model_id);
  });
  if (!queued.ok()) {
    absl::MutexLock lock(&mu_);
    busy_.erase(model_id);
  }
  return queued;
}

absl::StatusOr<ModelRecord> ModelManager::Pull(const std::string& url, const std::string& sha256_in,
                                               const std::string& name_in) {
  auto source = ResolvePullSource(url, options_.sources);
  if (!source.ok()) return source.status();
  const std::string sha256 = absl::AsciiStrToLower(sha256_in);
  if (!sha256.empty()) {
    if (absl::Status s = ValidateSha256(sha256); !s.ok()) return s;
  }
  const std::string name = name_in.empty() ? DefaultModelName(source->file_name) : name_in;
  if (absl::Status s = ValidateModelName(name); !s.ok()) return s;

  auto models = store_->ListModels();
  if (!models.ok()) return models.status();
  for (const ModelRecord& model : *models) {
    const bool same_file = !sha256.empty() && model.sha256 == sha256;
    const bool same_pull = model.name == name && model.source_url == url;
    if ((same_file || same_pull) && model.state != ModelState::kFailed) {
      if (model.state == ModelState::kDownloading) {
        if (absl::Status s = QueuePull(model.id); !s.ok()) return s;
      }
      return model;  // no second download
    }
    if (model.name == name && model.state == ModelState::kFailed) {
      ModelRecord restart = model;
      restart.sha256 = sha256;
      restart.source_url = url;
      restart.bytes = 0;
      restart.state = ModelState::kDownloading;
      std::error_code ec;
      fs::remove(PartialPath(model.id), ec);
      if (absl::Status s = store_->RestartModel(restart); !s.ok()) return s;
      if (absl::Status s = QueuePull(model.id); !s.ok()) return s;
      Notify(model.id);
      return store_->GetModel(model.id);
    }
  }
  ModelRecord record;
  record.sha256 = sha256;
  record.name = name;
  record.source_url = url;
  record.state = ModelState::kDownloading;
  auto created = store_->CreateModel(record);
  if (!created.ok()) return created.status();
  store_->AddServerEvent("model", absl::StrCat("pulling model '", name, "' from ", net::RedactUrl(url, source->secrets)))
      .IgnoreError();
  if (absl::Status s = QueuePull(created->id); !s.ok()) {
    store_->MarkModelFailed(created->id, std::string(s.message())).IgnoreError();
    return s;
  }
  return created;
}

void ModelManager::RunPull(int64_t model_id, const std::atomic<bool>& stopping) {
  auto model = store_->GetModel(model_id);
  if (!model.ok() || model->state != ModelState::kDownloading) return;
  auto source = ResolvePullSource(model->source_url, options_.sources);
  if (!source.ok()) return Fail(model_id, std::string(source.status().message()));

  std::string refusal;  // set by the progress hook: ends the transfer
  bool checked_reserve = false;
  absl::Time last_report = absl::InfinitePast();
  net::CallOptions call;
  call.headers = source->headers;
  call.secrets = source->secrets;
  call.cancel = [&] {
    if (stopping.load() || !refusal.empty()) return true;
    absl::MutexLock lock(&mu_);
    return abandon_.count(model_id) > 0;
  };
  call.progress = [&](int64_t done, int64_t total) {
    if (!checked_reserve && total > 0) {
      checked_reserve = true;
      if (absl::Status s = CheckReserve(total - done); !s.ok()) refusal = std::string(s.message());
    }
    const absl::Time now = absl::Now();
    if (now - last_report >= absl::Milliseconds(250) || done == total) {
      last_report = now;
      store_->SetModelProgress(model_id, done, std::max<int64_t>(total, 0)).IgnoreError();
      Notify(model_id);
    }
  };
  // One download may span several failures: the client resumes with Range.
  auto downloaded = http_.Download(source->url, PartialPath(model_id), call);
  {
    absl::MutexLock lock(&mu_);
    if (abandon_.count(model_id) > 0) return;  // deleted meanwhile: Delete removed the files
  }
  if (!refusal.empty()) return Fail(model_id, refusal);
  if (!downloaded.ok()) {
    if (stopping.load()) {
      spdlog::info("model '{}': download paused by the daemon's stop; it resumes at the next start", model->name);
      return;
    }
    return Fail(model_id, absl::StrCat("download failed: ", downloaded.status().message()));
  }
  spdlog::info("model '{}': {} bytes downloaded in {} attempt(s) ({} resumed with Range)", model->name,
               downloaded->bytes, downloaded->attempts, downloaded->range_resumes);
  auto fresh = store_->GetModel(model_id);
  if (!fresh.ok()) return;
  Finalize(*fresh).IgnoreError();
}

absl::StatusOr<ModelRecord> ModelManager::Finalize(ModelRecord record) {
  const fs::path partial = PartialPath(record.id);
  std::error_code ec;
  const int64_t size = static_cast<int64_t>(fs::file_size(partial, ec));
  auto fail = [&](const std::string& reason) -> absl::Status {
    fs::remove(partial, ec);
    Fail(record.id, reason);
    return absl::FailedPreconditionError(absl::StrCat("model '", record.name, "': ", reason));
  };
  if (ec) return fail(absl::StrCat("the received file is missing: ", ec.message()));
  absl::StatusOr<std::string> sha256 = Sha256File(partial);
  if (!sha256.ok()) return fail(std::string(sha256.status().message()));
  if (!record.sha256.empty() && *sha256 != record.sha256) {
    return fail(absl::StrCat("sha256 mismatch: expected ", record.sha256, ", the ", size, " bytes received hash to ",
                             *sha256, " (wrong or corrupted file; the partial file was removed)"));
  }
  absl::StatusOr<ModelFacts> facts = ReadModelFacts(partial);
  if (!facts.ok()) return fail(std::string(facts.status().message()));
  const fs::path stored = StoredPath(*sha256);
  fs::create_directories(stored.parent_path(), ec);
  record.sha256 = *sha256;
  record.path = stored.string();
  record.bytes = size;
  record.family = facts->family;
  record.prediction = facts->prediction;
  record.lineage = facts->lineage;
  auto ready = store_->MarkModelReady(record);
  if (!ready.ok()) return fail(std::string(ready.status().message()));
  // Recorded first: a crash between the two leaves a READY record whose file
  // is still the partial one; the rename below is idempotent on a restart.
  if (fs::exists(stored)) {
    fs::remove(partial, ec);
  } else {
    fs::rename(partial, stored, ec);
    if (ec) return fail(absl::StrCat("cannot move the model into ", stored.string(), ": ", ec.message()));
  }
  spdlog::info("model '{}' ready: {} ({} bytes, {}, {})", record.name, stored.string(), size, facts->family,
               facts->prediction);
  store_->AddServerEvent("model", absl::StrCat("model '", record.name, "' ready (sha256 ", *sha256, ", ", size,
                                               " bytes, ", facts->family, ")"))
      .IgnoreError();
  Notify(record.id);
  if (model_ready_) model_ready_();
  return ready;
}

void ModelManager::Fail(int64_t model_id, const std::string& reason) {
  auto model = store_->GetModel(model_id);
  const std::string name = model.ok() ? model->name : absl::StrCat(model_id);
  auto waiting = store_->MarkModelFailed(model_id, reason);
  spdlog::error("model '{}' failed: {}", name, reason);
  store_->AddServerEvent("model", absl::StrCat("model '", name, "' failed: ", reason)).IgnoreError();
  if (waiting.ok()) {
    for (int64_t job_id : *waiting) {
      const std::string why = absl::StrCat("base model '", name, "' failed: ", reason);
      storage::EventWrite write;
      write.event.set_time_unix_ms(NowUnixMs());
      write.event.mutable_finished()->set_status(lorad::v1::Finished::FAILED);
      write.event.mutable_finished()->set_reason(why);
      write.end = storage::JobEnd{storage::JobState::kFailed, why, 0, 0};
      auto stored = store_->AppendEvent(job_id, write);
      if (stored.ok()) {
        hub_->Publish(*stored, true);
      } else {
        spdlog::error("job {}: cannot record its model's failure: {}", job_id, stored.status().ToString());
      }
    }
  }
  Notify(model_id);
}

absl::StatusOr<ModelRecord> ModelManager::Find(const std::string& reference) {
  auto models = store_->ListModels();
  if (!models.ok()) return models.status();
  for (const ModelRecord& model : *models) {
    if (model.name == reference) return model;
  }
  const std::string lower = absl::AsciiStrToLower(reference);
  absl::string_view prefix = lower;
  int64_t id = 0;
  if (absl::StartsWith(prefix, "#") && absl::SimpleAtoi(prefix.substr(1), &id)) {
    for (const ModelRecord& model : *models) {
      if (model.id == id) return model;
    }
  }
  const bool explicit_hash = absl::ConsumePrefix(&prefix, "sha256:");
  if (IsHex(prefix) && (prefix.size() >= 8 || explicit_hash)) {
    std::vector<const ModelRecord*> matches;
    for (const ModelRecord& model : *models) {
      if (!model.sha256.empty() && absl::StartsWith(model.sha256, prefix)) matches.push_back(&model);
    }
    if (matches.size() == 1) return *matches.front();
    if (matches.size() > 1) {
      return absl::InvalidArgumentError(absl::StrCat("sha256 prefix '", std::string(prefix), "' matches ", matches.size(),
                                                     " models: give more digits"));
    }
  }
  return absl::NotFoundError(absl::StrCat("no model named '", reference,
                                          "' or with that sha256 (see `loractl models ls`; add one with "
                                          "`loractl models pull URL` or `loractl models upload FILE`)"));
}

absl::StatusOr<std::vector<ModelRecord>> ModelManager::List() { return store_->ListModels(); }

absl::StatusOr<ModelRecord> ModelManager::Delete(const std::string& reference) {
  auto model = Find(reference);
  if (!model.ok()) return model.status();
  if (absl::Status s = store_->DeleteModel(model->id); !s.ok()) return s;
  {
    absl::MutexLock lock(&mu_);
    if (busy_.count(model->id) > 0) abandon_.insert(model->id);
  }
  std::error_code ec;
  fs::remove(PartialPath(model->id), ec);
  if (!model->path.empty()) fs::remove(model->path, ec);
  store_->AddServerEvent("model", absl::StrCat("model '", model->name, "' deleted")).IgnoreError();
  return model;
}

absl::StatusOr<ModelManager::JobModel> ModelManager::ResolveJobModel(const std::string& config_toml) {
  JobModel out{config_toml, 0};
  toml::table table;
  try {
    table = toml::parse(config_toml);
  } catch (const toml::parse_error&) {
    return out;  // PrepareJobConfig reports the syntax error with its position
  }
  const std::optional<std::string> value = ModelValue(table);
  if (!value || value->empty()) return out;
  std::error_code ec;
  const fs::path as_path = fs::path(*value).is_absolute() ? fs::path(*value) : options_.models_root / *value;
  const bool names_a_file = fs::exists(as_path, ec);
  const bool explicit_hash = absl::StartsWithIgnoreCase(*value, "sha256:");
  auto model = Find(*value);
  if (names_a_file && !explicit_hash) {
    // A path (the old way). A record's own file still protects the record.
    const fs::path canonical = fs::weakly_canonical(as_path, ec);
    if (auto models = store_->ListModels(); models.ok()) {
      for (const ModelRecord& m : *models) {
        if (!m.path.empty() && fs::weakly_canonical(m.path, ec) == canonical) out.model_id = m.id;
      }
    }
    return out;
  }
  if (!model.ok()) {
    if (explicit_hash || model.status().code() != absl::StatusCode::kNotFound) return model.status();
    return out;  // neither a record nor a file: PrepareJobConfig / the worker report the path
  }
  if (model->state == ModelState::kFailed) {
    return absl::FailedPreconditionError(absl::StrCat("model '", model->name, "' failed: ", model->reason,
                                                      "; pull or upload it again"));
  }
  // Not READY yet: the path it will have (or a provisional one the scheduler
  // replaces once the hash is known); the job waits in the queue meanwhile.
  const fs::path path = model->state == ModelState::kReady ? fs::path(model->path)
                        : !model->sha256.empty()             ? StoredPath(model->sha256)
                                                             : options_.models_root / "sha256" /
                                                                   absl::StrCat("pending-", model->id, ".safetensors");
  auto rewritten = ApplyOverrides(config_toml, {{kModelKey, TomlQuoted(path.string())}});
  if (!rewritten.ok()) return rewritten.status();
  out.config_toml = *rewritten;
  out.model_id = model->id;
  return out;
}

absl::StatusOr<ModelManager::UploadTicket> ModelManager::BeginUpload(const std::string& sha256_in, int64_t size,
                                                                     const std::string& name, int64_t offset) {
  const std::string sha256 = absl::AsciiStrToLower(sha256_in);
  if (absl::Status s = ValidateSha256(sha256); !s.ok()) return s;
  if (size <= 0) return absl::InvalidArgumentError("the upload header needs the file's size (> 0)");
  if (absl::Status s = ValidateModelName(name); !s.ok()) return s;
  auto models = store_->ListModels();
  if (!models.ok()) return models.status();
  std::optional<ModelRecord> existing;
  for (const ModelRecord& model : *models) {
    if (model.sha256 == sha256) existing = model;
  }
  UploadTicket ticket;
  if (existing && existing->state == ModelState::kReady) {
    ticket.record = *existing;
    ticket.ready = true;
    return ticket;
  }
  if (existing && existing->state == ModelState::kDownloading) {
    return absl::AbortedError(absl::StrCat("model '", existing->name, "' (this sha256) is being pulled by the daemon; "
                                           "wait for it (`loractl models ls`)"));
  }
  std::error_code ec;
  if (existing && existing->state == ModelState::kUploading) {
    const int64_t have = fs::exists(PartialPath(existing->id), ec)
                             ? static_cast<int64_t>(fs::file_size(PartialPath(existing->id), ec))
                             : 0;
    if (offset != have) {
      return absl::FailedPreconditionError(absl::StrCat("the daemon holds ", have, " bytes of this upload; resume at offset ",
                                                        have, " (not ", offset, ")"));
    }
  } else if (offset != 0) {
    return absl::FailedPreconditionError(absl::StrCat("the daemon holds no part of this upload; start at offset 0"));
  }
  if (offset > size) return absl::InvalidArgumentError("offset beyond the file's size");
  if (absl::Status s = CheckReserve(size - offset); !s.ok()) return s;
  ModelRecord record;
  if (existing) {
    record = *existing;
    if (existing->state == ModelState::kFailed) {
      record.state = ModelState::kUploading;
      record.bytes = size;
      record.source_url = "upload";
      if (absl::Status s = store_->RestartModel(record); !s.ok()) return s;
    }
  } else {
    record.sha256 = sha256;
    record.name = name;
    record.bytes = size;
    record.source_url = "upload";
    record.state = ModelState::kUploading;
    auto created = store_->CreateModel(record);
    if (!created.ok()) return created.status();
    record = *created;
  }
  {
    absl::MutexLock lock(&mu_);
    if (!busy_.insert(record.id).second) {
      return absl::AbortedError(absl::StrCat("model '", record.name, "' is being uploaded by another call"));
    }
  }
  ticket.record = record;
  ticket.partial = PartialPath(record.id);
  return ticket;
}

void ModelManager::UploadProgress(int64_t model_id, int64_t bytes_done) {
  auto model = store_->GetModel(model_id);
  if (!model.ok()) return;
  store_->SetModelProgress(model_id, bytes_done, model->bytes).IgnoreError();
  Notify(model_id);
}

void ModelManager::CompleteUploadAsync(int64_t model_id,
                                       std::function<void(absl::StatusOr<ModelRecord>)> done) {
  auto shared_done = std::make_shared<std::function<void(absl::StatusOr<ModelRecord>)>>(std::move(done));
  absl::Status queued = check_pool_.Submit([this, model_id, shared_done](const std::atomic<bool>&) {
    auto model = store_->GetModel(model_id);
    if (!model.ok()) return (*shared_done)(model.status());
    (*shared_done)(Finalize(*model));
  });
  if (!queued.ok()) (*shared_done)(queued);
}

void ModelManager::EndUpload(int64_t model_id) {
  absl::MutexLock lock(&mu_);
  busy_.erase(model_id);
}

int64_t ModelManager::Watch(int64_t model_id, Watcher watcher) {
  absl::MutexLock lock(&mu_);
  const int64_t token = next_token_++;
  watchers_[token] = {model_id, std::move(watcher)};
  return token;
}

void ModelManager::Unwatch(int64_t token) {
  absl::MutexLock lock(&mu_);
  watchers_.erase(token);
}

void ModelManager::Notify(int64_t model_id) {
  std::vector<Watcher> targets;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& entry : watchers_) {
      if (entry.second.first == model_id) targets.push_back(entry.second.second);
    }
  }
  if (targets.empty()) return;
  auto model = store_->GetModel(model_id);
  if (!model.ok()) return;
  for (const Watcher& watcher : targets) watcher(*model);
}

}  // namespace lorad::server
