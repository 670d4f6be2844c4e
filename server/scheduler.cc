#include "server/scheduler.h"
#include "server/models/model_manager.h"

#include <algorithm>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "core/base/clock.h"
#include "core/base/sha256.h"
#include "server/disk_cleanup.h"
#include "server/disk_space.h"
#include "server/job_outcome.h"
#include "server/launch_plan.h"
#include "server/local_executor.h"
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

storage::SlotCharge ChargeForSlots(const SchedulerOptions& options, const std::vector<int>& slots) {
  storage::SlotCharge charge = ChargeForSlot(options, slots.empty() ? -1 : slots.front());
  for (size_t i = 1; i < slots.size(); ++i) charge.gpus += ChargeForSlot(options, slots[i]).gpus;
  return charge;
}

DispatchPlan PlanDispatch(const std::vector<QueuedJob>& queue, int free_slots, int total_slots,
                          const std::function<bool(int64_t blocked)>& reserve) {
  DispatchPlan plan;
  bool reserving = false;
  for (const QueuedJob& job : queue) {
    if (job.slots > total_slots) {
      plan.too_big.push_back(job.id);
      continue;
    }
    if (reserving) continue;  // still listed: a too-big job behind it fails now
    if (job.slots <= free_slots) {
      plan.start.push_back(job.id);
      free_slots -= job.slots;
    } else if (plan.blocked == 0) {
      plan.blocked = job.id;
      reserving = reserve(job.id);
    }
  }
  return plan;
}

Scheduler::Scheduler(storage::JobStore* store, EventHub* hub, SchedulerOptions options)
    : store_(store), hub_(hub), options_(std::move(options)) {
  executor_ = options_.executor ? options_.executor : std::make_shared<LocalExecutor>();
  absl::MutexLock lock(&mu_);
  slot_busy_.assign(std::max(options_.slots, 0), false);
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
    auto job = store_->GetJob(job_id);
    if (!job.ok()) return job.status();
    const fs::path job_dir = options_.jobs_dir / std::to_string(job_id);
    auto run = executor_->Reattach(*job, job_dir, [this, job_id](int64_t after_seq) {
      return CommittedOffset(job_id, after_seq);
    });
    if (!run.ok()) {
      Log()->error("job {}: cannot re-attach ({}); re-queued", job_id, run.status().ToString());
    } else if (*run) {
      const std::string what = (*run)->Describe();
      Log()->info("job {} still runs as {}: re-attached", job_id, what);
      Record(job_id, LogWrite(lorad::v1::Log::INFO, absl::StrCat("lorad restarted: re-attached to ", what)), false);
      absl::MutexLock lock(&mu_);
      std::vector<int> slots = TakeFreeSlots(executor_->SlotsFor(1));
      std::shared_ptr<AttemptRun> shared(std::move(*run));
      Spawn(std::move(slots), job_id, [this, record = *job, shared](Slot* slot) {
        SuperviseRun(slot, record, shared.get());
      });
      continue;
    }
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
  for (auto& run : runs_) {
    if (run && run->job_id == job_id && !run->done) run->cancel = true;
  }
}

int Scheduler::running() {
  absl::MutexLock lock(&mu_);
  int count = 0;
  for (auto& run : runs_) count += run && !run->done ? 1 : 0;
  return count;
}

int64_t Scheduler::CommittedOffset(int64_t job_id, int64_t after_seq) {
  int64_t offset = 0;
  while (true) {
    auto events = store_->ReadEvents(job_id, after_seq, 1000);
    if (!events.ok() || events->empty()) break;
    for (const auto& e : *events) offset = std::max(offset, e.event.source_offset());
    after_seq = events->back().seq;
  }
  return offset;
}

void Scheduler::Shutdown() {
  {
    absl::MutexLock lock(&mu_);
    if (stopping_ && !dispatcher_.joinable()) return;
    stopping_ = true;
    for (auto& run : runs_) {
      if (run) run->stop = true;
    }
    cv_.SignalAll();
  }
  if (dispatcher_.joinable()) dispatcher_.join();
  std::vector<std::unique_ptr<Slot>> runs;
  {
    absl::MutexLock lock(&mu_);
    runs.swap(runs_);
  }
  for (auto& run : runs) {
    if (run && run->thread.joinable()) run->thread.join();
  }
}

std::vector<int> Scheduler::TakeFreeSlots(int count) {
  std::vector<int> taken;
  for (size_t i = 0; i < slot_busy_.size() && static_cast<int>(taken.size()) < count; ++i) {
    if (!slot_busy_[i]) taken.push_back(static_cast<int>(i));
  }
  if (static_cast<int>(taken.size()) < count) return {};
  for (int i : taken) slot_busy_[i] = true;
  return taken;
}

void Scheduler::Spawn(std::vector<int> slots, int64_t job_id, std::function<void(Slot*)> body) {
  auto run = std::make_unique<Slot>();
  run->job_id = job_id;
  run->slots = std::move(slots);
  Slot* raw = run.get();
  run->thread = std::thread([this, raw, body = std::move(body)]() {
    body(raw);
    activity_.fetch_add(1);
    absl::MutexLock done_lock(&mu_);
    raw->done = true;
    for (int i : raw->slots) slot_busy_[i] = false;
    work_hint_ = true;
    cv_.SignalAll();
  });
  runs_.push_back(std::move(run));
}

void Scheduler::DispatchLoop() {
  while (true) {
    std::vector<std::pair<storage::JobRecord, std::string>> refused;
    {
      absl::MutexLock lock(&mu_);
      while (!stopping_ && !work_hint_) cv_.WaitWithTimeout(&mu_, absl::Seconds(1));
      if (stopping_) return;
      work_hint_ = false;
      // Finished runs go (their slots were freed as they ended).
      for (auto it = runs_.begin(); it != runs_.end();) {
        if ((*it)->done) {
          if ((*it)->thread.joinable()) (*it)->thread.join();
          it = runs_.erase(it);
        } else {
          ++it;
        }
      }
      refused = DispatchOnce();
    }
    // Outside mu_: recording retries while the store is busy, and waits on mu_.
    for (const auto& [job, reason] : refused) Fail(job, reason);
  }
}

std::vector<std::pair<storage::JobRecord, std::string>> Scheduler::DispatchOnce() {
  std::vector<std::pair<storage::JobRecord, std::string>> refused;
  storage::JobFilter filter;
  filter.states = {storage::JobState::kQueued};
  filter.page_size = 1000;
  std::vector<storage::JobRecord> queued;
  while (true) {
    auto page = store_->ListJobs(filter);
    if (!page.ok()) {
      Log()->error("cannot read the queue: {}", page.status().ToString());
      return refused;
    }
    for (auto& job : page->jobs) queued.push_back(std::move(job));
    if (page->next_before_id == 0) break;
    filter.before_id = page->next_before_id;
  }
  // ClaimNext's order: highest priority, then oldest.
  std::sort(queued.begin(), queued.end(), [](const storage::JobRecord& a, const storage::JobRecord& b) {
    return a.priority != b.priority ? a.priority > b.priority : a.id < b.id;
  });
  std::map<int64_t, const storage::JobRecord*> by_id;
  std::vector<QueuedJob> order;
  std::map<int64_t, int> still_queued;
  for (const auto& job : queued) {
    auto known = gpus_of_.find(job.id);
    int gpus = known != gpus_of_.end() ? known->second : 0;
    if (gpus == 0) {
      auto parsed = JobGpus(job.config_toml);
      if (!parsed.ok()) {
        refused.emplace_back(job, absl::StrCat("cannot start: ", parsed.status().message()));
        continue;
      }
      gpus = *parsed;
    }
    still_queued[job.id] = gpus;
    by_id[job.id] = &job;
    order.push_back({job.id, executor_->SlotsFor(gpus)});
  }
  gpus_of_ = std::move(still_queued);
  int free_slots = 0;
  for (bool busy : slot_busy_) free_slots += busy ? 0 : 1;
  const absl::Time now = absl::Now();
  const DispatchPlan plan = PlanDispatch(order, free_slots, options_.slots, [&](int64_t blocked) {
    if (blocked != blocked_id_) {
      blocked_id_ = blocked;
      blocked_since_ = now;
      Log()->info("job {} waits for {} free slot(s); {}", blocked, gpus_of_[blocked],
                  options_.backfill_s > 0 ? absl::StrCat("smaller jobs may pass it for ", options_.backfill_s, " s")
                                          : std::string("jobs behind it wait too (backfill_s = 0)"));
    }
    return now - blocked_since_ >= absl::Seconds(options_.backfill_s);
  });
  if (plan.blocked == 0) blocked_id_ = 0;
  for (int64_t id : plan.too_big) {
    const int gpus = gpus_of_[id];
    refused.emplace_back(*by_id[id], absl::StrCat("the job asks for gpus = ", gpus, " but this lorad has ", options_.slots,
                                  " GPU slot(s) (lorad.toml slots / gpus); lower gpus or run it where there are ",
                                  gpus, " GPUs (e.g. executor = \"slurm\")"));
    gpus_of_.erase(id);
  }
  for (int64_t id : plan.start) {
    const int gpus = gpus_of_[id];
    std::vector<int> slots = TakeFreeSlots(executor_->SlotsFor(gpus));
    if (slots.empty()) break;  // cannot happen: the plan fits the free slots
    storage::SlotCharge charge = ChargeForSlots(options_, slots);
    charge.gpus = std::max(charge.gpus, gpus);  // Slurm: one slot, the job's GPUs
    auto claimed = store_->ClaimJob(id, slots.front(), charge);
    if (!claimed.ok() || !claimed->has_value()) {
      // Cancelled meanwhile, or its model is not ready yet: the slots stay free.
      if (!claimed.ok()) Log()->error("cannot claim job {}: {}", id, claimed.status().ToString());
      for (int i : slots) slot_busy_[i] = false;
      continue;
    }
    gpus_of_.erase(id);
    Spawn(std::move(slots), id, [this, job = std::move(**claimed), gpus](Slot* slot) mutable {
      RunJob(slot, std::move(job), gpus);
    });
  }
  return refused;
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

void Scheduler::RunJob(Slot* slot, storage::JobRecord job, int gpus) {
  const fs::path job_dir = options_.jobs_dir / std::to_string(job.id);
  auto prepared = PrepareJobFolder(job, job_dir);
  if (!prepared.ok()) return Fail(job, std::string(prepared.status().message()));
  std::vector<std::string> gpu_ids;
  for (int i : slot->slots) {
    if (i >= 0 && i < static_cast<int>(options_.slot_gpus.size())) gpu_ids.push_back(options_.slot_gpus[i]);
  }
  const LaunchPlan plan =
      PlanWorkerLaunch(options_, gpu_ids, job_dir, !prepared->dataset_config_toml.empty(), ResumePoint(job.id));
  AttemptSpec spec;
  spec.job_id = job.id;
  spec.attempt = job.attempts;
  spec.job_dir = job_dir;
  spec.world_size = gpus;
  spec.base = plan.launch;
  spec.first_seq = job.last_seq;
  auto run = executor_->Launch(spec);
  if (!run.ok()) return Fail(job, std::string(run.status().message()));
  std::vector<std::string> slot_names;
  for (int i : slot->slots) slot_names.push_back(std::to_string(i));
  // "attempt 2 started on slot 1 (pid 4711)", as before multi-GPU jobs; or
  // "... on slots 0,1 with CUDA_VISIBLE_DEVICES=0,1, 2 GPUs (pids 4711, 4712; 2 ranks, ...)".
  std::string where;
  if (!slot->slots.empty()) {
    where = absl::StrCat(slot->slots.size() == 1 ? " on slot " : " on slots ", absl::StrJoin(slot_names, ","));
  }
  if (gpus > 1 && !gpu_ids.empty()) absl::StrAppend(&where, " with CUDA_VISIBLE_DEVICES=", absl::StrJoin(gpu_ids, ","));
  if (gpus > 1) absl::StrAppend(&where, ", ", gpus, " GPUs");
  const std::string started =
      absl::StrCat("attempt ", job.attempts, " started", where, " (", (*run)->Describe(), ")", plan.resume_note);
  Log()->info("job {} {}", job.id, started);
  Record(job.id, LogWrite(lorad::v1::Log::INFO, started), false);
  SuperviseRun(slot, job, run->get());
}

void Scheduler::SuperviseRun(Slot* slot, const storage::JobRecord& job, AttemptRun* run) {
  const fs::path job_dir = options_.jobs_dir / std::to_string(job.id);
  WorkerSessionOptions session;
  session.job = ResolveJobFolder(job_dir);
  session.log_path = job_dir / "worker.log";
  session.first_step = job.step;
  session.grace_s = options_.grace_s;
  session.cancel_requested = [slot] { return slot->cancel.load(); };
  session.daemon_stopping = [slot] { return slot->stop.load(); };
  session.commit = [this, id = job.id](const std::vector<storage::EventWrite>& writes) { RecordBurst(id, writes); };
  const WorkerReport report = run->Supervise(session);
  if (report.detached) {
    Log()->info("job {} left running as {}: the next start re-attaches to it", job.id, run->Describe());
    return;
  }
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
