#include "server/scheduler.h"
#include "server/models/model_manager.h"

#include <algorithm>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "core/base/clock.h"
#include "core/base/sha256.h"
#include "server/disk_cleanup.h"
#include "server/disk_space.h"
#include "server/job_outcome.h"
#include "server/launch_plan.h"
#include "server/paths.h"
#include "server/worker_process.h"
#include "server/worker_session.h"
#include "spdlog/spdlog.h"

namespace lorad::server {
namespace fs = std::filesystem;

namespace {

std::shared_ptr<spdlog::logger> Log() {
  auto logger = spdlog::get("scheduler");
  return logger ? logger : spdlog::default_logger();
}

storage::EventWrite LogWrite(lorad::v1::Log::Level level, const std::string& message) {
  storage::EventWrite write;
  write.event.set_time_unix_ms(NowUnixMs());
  write.event.mutable_log()->set_level(level);
  write.event.mutable_log()->set_message(message);
  return write;
}

}  // namespace

storage::SlotCharge ChargeForSlot(const SchedulerOptions& options, int slot) {
  auto gpus_of = [&](int i) {
    if (i < 0 || i >= static_cast<int>(options.slot_gpus.size())) return 1;
    int count = 0;
    for (absl::string_view id : absl::StrSplit(options.slot_gpus[i], ',', absl::SkipWhitespace())) {
      count += id.empty() ? 0 : 1;
    }
    return std::max(count, 1);
  };
  int box = 0;
  for (int i = 0; i < options.slots; ++i) box += gpus_of(i);
  storage::SlotCharge charge;
  charge.gpus = gpus_of(slot);
  charge.price_per_gpu_hour = box > 0 ? options.price_per_hour / box : 0;
  return charge;
}

Scheduler::Scheduler(storage::JobStore* store, EventHub* hub, SchedulerOptions options)
    : store_(store), hub_(hub), options_(std::move(options)) {
  absl::MutexLock lock(&mu_);
  for (int i = 0; i < options_.slots; ++i) slots_.push_back(nullptr);
}

Scheduler::~Scheduler() { Shutdown(); }

absl::StatusOr<fs::path> Scheduler::ResolveDataset(storage::JobStore* store, const JobRoots& roots,
                                                   const std::string& reference) {
  if (reference.empty()) return fs::path();
  if (auto dataset = store->GetDataset(reference); dataset.ok()) return fs::path(dataset->path);
  std::vector<fs::path> allowed = {roots.datasets_root};
  allowed.insert(allowed.end(), roots.extra_roots.begin(), roots.extra_roots.end());
  auto path = ConfinePath("dataset", reference, roots.datasets_root, allowed);
  if (!path.ok()) return path.status();
  if (!fs::is_directory(*path)) {
    return absl::NotFoundError(absl::StrCat("dataset '", reference, "' is neither an uploaded dataset id ",
                                            "nor a folder under ", roots.datasets_root.string(),
                                            " (upload it with `loractl datasets upload DIR`)"));
  }
  return *path;
}

absl::Status Scheduler::Start() {
  // A crash's downtime is not charged: open attempts end at their last event.
  if (absl::Status ended = store_->EndInterruptedAttempts(); !ended.ok()) return ended;
  auto interrupted = store_->RunningJobIds();
  if (!interrupted.ok()) return interrupted.status();
  for (int64_t job_id : *interrupted) {
    auto event = store_->Requeue(
        job_id, "lorad restarted after an unclean stop; job re-queued to resume from its last saved state");
    if (!event.ok()) return event.status();
    Log()->warn("job {} was running when lorad stopped; re-queued", job_id);
    hub_->Publish(*event, event->event.has_finished());
  }
  dispatcher_ = std::thread([this] { DispatchLoop(); });
  return absl::OkStatus();
}

void Scheduler::NotifyQueued() {
  activity_.fetch_add(1);
  absl::MutexLock lock(&mu_);
  work_hint_ = true;
  cv_.SignalAll();
}

void Scheduler::Cancel(int64_t job_id) {
  absl::MutexLock lock(&mu_);
  for (auto& slot : slots_) {
    if (slot && slot->job_id == job_id && !slot->done) slot->cancel = true;
  }
}

int Scheduler::running() {
  absl::MutexLock lock(&mu_);
  int count = 0;
  for (auto& slot : slots_) count += slot && !slot->done ? 1 : 0;
  return count;
}

void Scheduler::Shutdown() {
  {
    absl::MutexLock lock(&mu_);
    if (stopping_ && !dispatcher_.joinable()) return;
    stopping_ = true;
    for (auto& slot : slots_) {
      if (slot) slot->stop = true;
    }
    cv_.SignalAll();
  }
  if (dispatcher_.joinable()) dispatcher_.join();
  std::vector<std::unique_ptr<Slot>> slots;
  {
    absl::MutexLock lock(&mu_);
    slots.swap(slots_);
  }
  for (auto& slot : slots) {
    if (slot && slot->thread.joinable()) slot->thread.join();
  }
}

void Scheduler::DispatchLoop() {
  while (true) {
    absl::MutexLock lock(&mu_);
    int free_slot = -1;
    auto ready = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      if (stopping_) return true;
      if (!work_hint_) return false;
      for (size_t i = 0; i < slots_.size(); ++i) {
        if (!slots_[i] || slots_[i]->done) {
          free_slot = static_cast<int>(i);
          return true;
        }
      }
      return false;
    };
    while (!ready()) cv_.WaitWithTimeout(&mu_, absl::Seconds(1));
    if (stopping_) return;
    if (slots_[free_slot] && slots_[free_slot]->thread.joinable()) slots_[free_slot]->thread.join();
    auto claimed = store_->ClaimNext(free_slot, ChargeForSlot(options_, free_slot));
    if (!claimed.ok()) {
      Log()->error("cannot claim a queued job: {}", claimed.status().ToString());
      work_hint_ = false;
      continue;
    }
    if (!claimed->has_value()) {
      work_hint_ = false;
      continue;
    }
    auto slot = std::make_unique<Slot>();
    slot->job_id = (*claimed)->id;
    Slot* raw = slot.get();
    slot->thread = std::thread([this, raw, free_slot, job = std::move(**claimed)]() mutable {
      RunJob(raw, free_slot, std::move(job));
      activity_.fetch_add(1);
      absl::MutexLock done_lock(&mu_);
      raw->done = true;
      work_hint_ = true;
      cv_.SignalAll();
    });
    slots_[free_slot] = std::move(slot);
  }
}

absl::Status Scheduler::RetryWhileTransient(int64_t job_id, const std::string& what,
                                            const std::function<absl::Status()>& attempt) {
  absl::Status status = attempt();
  absl::Duration wait = absl::Milliseconds(250);
  // UNAVAILABLE: another process holds the database past busy_timeout;
  // RESOURCE_EXHAUSTED: the disk is full. Both pass; anything else would not.
  while (status.code() == absl::StatusCode::kUnavailable || status.code() == absl::StatusCode::kResourceExhausted) {
    Log()->error("job {}: cannot record {} yet ({}); retrying in {}", job_id, what, status.ToString(),
                 absl::FormatDuration(wait));
    {
      absl::MutexLock lock(&mu_);
      if (mu_.AwaitWithTimeout(absl::Condition(&stopping_), wait)) return status;
    }
    wait = std::min(wait * 2, absl::Seconds(30));
    status = attempt();
    if (status.ok()) Log()->info("job {}: {} recorded after all", job_id, what);
  }
  return status;
}

void Scheduler::Record(int64_t job_id, storage::EventWrite write, bool terminal) {
  // Never dropped while the store cannot take it for a while: a job whose end
  // is lost stays RUNNING for its tails forever and no slot takes its place.
  // On a stop the retry ends; the next start re-queues a job left RUNNING.
  absl::StatusOr<storage::StoredEvent> stored = absl::UnknownError("not attempted");
  const absl::Status status = RetryWhileTransient(job_id, absl::StrCat("a ", storage::EventTypeName(write.event), " event"), [&] {
    stored = store_->AppendEvent(job_id, write);
    return stored.status();
  });
  if (!status.ok()) {
    Log()->error("job {}: cannot record a {} event: {}", job_id, storage::EventTypeName(write.event),
                 status.ToString());
    return;
  }
  hub_->Publish(*stored, terminal);
}

absl::Status Scheduler::LinkSharedLatentCache(const fs::path& job_dir, const fs::path& dataset_dir,
                                              const PreparedJobConfig& prepared) {
  if (options_.latent_cache_root.empty()) return absl::OkStatus();
  auto flag = prepared.hyperparameters.find("cache_latents_to_disk");
  if (flag == prepared.hyperparameters.end() || flag->second != "true") return absl::OkStatus();
  auto model = prepared.hyperparameters.find("pretrained_model_name_or_path");
  // The cache keys include the VAE identity and each image's content hash, so
  // this grouping only decides which jobs can reuse entries, never correctness.
  Sha256 hasher;
  hasher.Update(dataset_dir.string());
  hasher.Update("\n");
  hasher.Update(prepared.dataset_config_toml);
  hasher.Update("\n");
  hasher.Update(model == prepared.hyperparameters.end() ? std::string() : model->second);
  const fs::path shared = options_.latent_cache_root / hasher.HexDigest().substr(0, 24);
  const fs::path link = job_dir / "output" / "latent_cache";
  std::error_code ec;
  fs::create_directories(shared, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create latent cache ", shared.string(), ": ", ec.message()));
  if (fs::exists(fs::symlink_status(link, ec))) return absl::OkStatus();  // resumed job: keep what it has
  fs::create_directory_symlink(shared, link, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot link ", link.string(), ": ", ec.message()));
  Log()->info("job folder {} shares latent cache {}", job_dir.string(), shared.string());
  return absl::OkStatus();
}

void Scheduler::Fail(const storage::JobRecord& job, const std::string& reason) {
  storage::EventWrite write;
  write.event.set_time_unix_ms(NowUnixMs());
  write.event.mutable_finished()->set_status(lorad::v1::Finished::FAILED);
  write.event.mutable_finished()->set_reason(reason);
  write.event.mutable_finished()->set_final_step(job.step);
  write.end = storage::JobEnd{storage::JobState::kFailed, reason, 0, 0};
  Record(job.id, std::move(write), true);
  Log()->error("job {} failed: {}", job.id, reason);
}

absl::StatusOr<PreparedJobConfig> Scheduler::PrepareJobFolder(const storage::JobRecord& job,
                                                              const fs::path& job_dir) {
  std::error_code ec;
  fs::create_directories(job_dir / "output", ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", job_dir.string(), ": ", ec.message()));
  auto dataset_dir = ResolveDataset(store_, options_.roots, job.dataset);
  if (!dataset_dir.ok()) return dataset_dir.status();
  std::string config_toml = job.config_toml;
  // A job on a model record reads the record's file (its hash, so its path,
  // may only have become known when the download finished).
  auto model = store_->ModelOfJob(job.id);
  if (!model.ok()) return model.status();
  if (model->has_value()) {
    if ((*model)->state != storage::ModelState::kReady) {
      return absl::FailedPreconditionError(absl::StrCat("base model '", (*model)->name, "' is ",
                                                        storage::ModelStateName((*model)->state), ", not READY"));
    }
    auto with_model = ApplyOverrides(config_toml, {{"pretrained_model_name_or_path", TomlQuoted((*model)->path)}});
    if (!with_model.ok()) return with_model.status();
    config_toml = std::move(*with_model);
  }
  JobConfigInput input{config_toml, job.dataset_config_toml, *dataset_dir, job_dir};
  auto prepared = PrepareJobConfig(input, options_.roots);
  if (!prepared.ok()) return prepared.status();
  if (auto s = LinkSharedLatentCache(job_dir, *dataset_dir, *prepared); !s.ok()) return s;
  std::ofstream(job_dir / "config.toml") << prepared->config_toml;
  if (!prepared->dataset_config_toml.empty()) {
    std::ofstream(job_dir / "dataset_config.toml") << prepared->dataset_config_toml;
  }
  return prepared;
}

std::optional<storage::ArtifactRecord> Scheduler::ResumePoint(int64_t job_id) {
  auto state = store_->LatestState(job_id);
  if (state.ok() && state->has_value() && fs::exists((*state)->path)) return **state;
  return std::nullopt;
}

void Scheduler::RecordBurst(int64_t job_id, const std::vector<storage::EventWrite>& writes) {
  // Retried like Record; meanwhile the worker blocks on its full events pipe,
  // so nothing it reports is lost.
  absl::StatusOr<std::vector<storage::StoredEvent>> stored = absl::UnknownError("not attempted");
  const absl::Status status = RetryWhileTransient(job_id, absl::StrCat(writes.size(), " events"), [&] {
    stored = store_->AppendEvents(job_id, writes);
    return stored.status();
  });
  if (!status.ok()) {
    Log()->error("job {}: cannot record {} events: {}", job_id, writes.size(), status.ToString());
    return;
  }
  for (const auto& e : *stored) hub_->Publish(e, false);
}

void Scheduler::RunJob(Slot* slot, int slot_index, storage::JobRecord job) {
  const fs::path job_dir = options_.jobs_dir / std::to_string(job.id);
  auto prepared = PrepareJobFolder(job, job_dir);
  if (!prepared.ok()) return Fail(job, std::string(prepared.status().message()));
  const LaunchPlan plan =
      PlanWorkerLaunch(options_, slot_index, job_dir, !prepared->dataset_config_toml.empty(), ResumePoint(job.id));
  auto worker = WorkerProcess::Start(plan.launch);
  if (!worker.ok()) return Fail(job, std::string(worker.status().message()));
  const std::string started = absl::StrCat("attempt ", job.attempts, " started on slot ", slot_index, " (pid ",
                                           (*worker)->pid(), ")", plan.resume_note);
  Log()->info("job {} {}", job.id, started);
  Record(job.id, LogWrite(lorad::v1::Log::INFO, started), false);

  WorkerSessionOptions session;
  session.job = ResolveJobFolder(job_dir);
  session.log_path = job_dir / "worker.log";
  session.first_step = job.step;
  session.grace_s = options_.grace_s;
  session.stop_requested = [slot] { return slot->cancel || slot->stop; };
  session.commit = [this, id = job.id](const std::vector<storage::EventWrite>& writes) { RecordBurst(id, writes); };
  const WorkerReport report = SuperviseWorker(worker->get(), session);
  worker->reset();
  Log()->info("job {} worker exited: {}", job.id, report.exit.Describe());
  FinishJob(slot, job.id, report);
}

void Scheduler::FinishJob(Slot* slot, int64_t job_id, const WorkerReport& report) {
  EndRequest request;
  request.daemon_stopping = slot->stop;
  request.cancel_requested = slot->cancel;
  if (!request.daemon_stopping || request.cancel_requested) {
    // A cancel recorded in the store may not have reached this slot yet.
    if (auto current = store_->GetJob(job_id); current.ok()) {
      request.cancel_requested = request.cancel_requested || current->cancel_requested;
      request.cancel_reason = current->reason;
    }
  }
  const JobOutcome outcome = ClassifyJobEnd(report, request);
  if (outcome.requeue) {
    auto event = store_->Requeue(job_id, outcome.requeue_reason);
    if (event.ok()) {
      hub_->Publish(*event, event->event.has_finished());
    } else {
      Log()->error("job {}: cannot re-queue: {}", job_id, event.status().ToString());
    }
    return;
  }
  storage::EventWrite write;
  write.event.set_time_unix_ms(NowUnixMs());
  *write.event.mutable_finished() = outcome.finished;
  write.end = outcome.end;
  if (outcome.end.state == storage::JobState::kFailed) {
    // A worker that hit a full disk fails with whatever write gave up first;
    // the reason says what to do about it.
    const std::string note = FullDiskNote(options_.jobs_dir);
    write.end->reason += note;
    write.event.mutable_finished()->set_reason(write.end->reason);
  }
  Log()->info("job {} {}{}{}", job_id, storage::JobStateName(outcome.end.state),
              outcome.end.reason.empty() ? "" : ": ", outcome.end.reason);
  Record(job_id, std::move(write), true);
  if (outcome.end.state == storage::JobState::kSucceeded) {
    // A writer killed mid-save earlier in the run (or a resumed attempt) can leave <file>.tmp.<pid>.
    for (const auto& tmp : RemoveTempFiles(options_.jobs_dir / std::to_string(job_id) / "output")) {
      Log()->info("job {}: removed leftover temp file {}", job_id, tmp.string());
    }
  }
}

}  // namespace lorad::server
