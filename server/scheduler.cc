#include "server/scheduler.h"

#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <deque>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "proto/event_stream.h"
#include "server/paths.h"
#include "server/sha256.h"
#include "server/worker_process.h"
#include "spdlog/spdlog.h"

namespace lorad::server {
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

std::shared_ptr<spdlog::logger> Log() {
  auto logger = spdlog::get("scheduler");
  return logger ? logger : spdlog::default_logger();
}

storage::EventWrite LogWrite(lorad::v1::Log::Level level, const std::string& message) {
  storage::EventWrite write;
  write.event.set_time_unix_ms(events::NowUnixMs());
  write.event.mutable_log()->set_level(level);
  write.event.mutable_log()->set_message(message);
  return write;
}

// Keeps the last lines a worker wrote to stderr, for a failure reason.
class StderrTail {
 public:
  void Append(const char* data, size_t n) {
    text_.append(data, n);
    if (text_.size() > 16384) text_.erase(0, text_.size() - 8192);
  }
  std::string LastLines(int count) const {
    std::vector<std::string> lines = absl::StrSplit(text_, '\n', absl::SkipWhitespace());
    if (static_cast<int>(lines.size()) > count) lines.erase(lines.begin(), lines.end() - count);
    return absl::StrJoin(lines, "\n");
  }

 private:
  std::string text_;
};

int64_t TreeBytes(const fs::path& path) {
  std::error_code ec;
  if (fs::is_regular_file(path, ec)) return static_cast<int64_t>(fs::file_size(path, ec));
  int64_t total = 0;
  for (auto it = fs::recursive_directory_iterator(path, ec); !ec && it != fs::end(it);
       it.increment(ec)) {
    if (it->is_regular_file(ec)) total += static_cast<int64_t>(it->file_size(ec));
  }
  return total;
}

}  // namespace

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
    auto claimed = store_->ClaimNext(free_slot);
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
      absl::MutexLock done_lock(&mu_);
      raw->done = true;
      work_hint_ = true;
      cv_.SignalAll();
    });
    slots_[free_slot] = std::move(slot);
  }
}

void Scheduler::Record(int64_t job_id, storage::EventWrite write, bool terminal) {
  auto stored = store_->AppendEvent(job_id, write);
  if (!stored.ok()) {
    Log()->error("job {}: cannot record a {} event: {}", job_id, storage::EventTypeName(write.event),
                 stored.status().ToString());
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

void Scheduler::RunJob(Slot* slot, int slot_index, storage::JobRecord job) {
  const fs::path job_dir = options_.jobs_dir / std::to_string(job.id);
  auto fail = [&](const std::string& reason) {
    storage::EventWrite write;
    write.event.set_time_unix_ms(events::NowUnixMs());
    write.event.mutable_finished()->set_status(lorad::v1::Finished::FAILED);
    write.event.mutable_finished()->set_reason(reason);
    write.event.mutable_finished()->set_final_step(job.step);
    write.end = storage::JobEnd{storage::JobState::kFailed, reason, 0, 0};
    Record(job.id, std::move(write), true);
    Log()->error("job {} failed: {}", job.id, reason);
  };
  std::error_code ec;
  fs::create_directories(job_dir / "output", ec);
  if (ec) return fail(absl::StrCat("cannot create ", job_dir.string(), ": ", ec.message()));

  auto dataset_dir = ResolveDataset(store_, options_.roots, job.dataset);
  if (!dataset_dir.ok()) return fail(std::string(dataset_dir.status().message()));
  JobConfigInput input{job.config_toml, job.dataset_config_toml, *dataset_dir, job_dir};
  auto prepared = PrepareJobConfig(input, options_.roots);
  if (!prepared.ok()) return fail(std::string(prepared.status().message()));
  if (auto s = LinkSharedLatentCache(job_dir, *dataset_dir, *prepared); !s.ok()) {
    return fail(std::string(s.message()));
  }
  {
    std::ofstream(job_dir / "config.toml") << prepared->config_toml;
    if (!prepared->dataset_config_toml.empty()) {
      std::ofstream(job_dir / "dataset_config.toml") << prepared->dataset_config_toml;
    }
  }
  std::vector<std::string> argv = {options_.worker_binary};
  argv.insert(argv.end(), options_.worker_args.begin(), options_.worker_args.end());
  argv.insert(argv.end(), {"--config_file", (job_dir / "config.toml").string()});
  if (!prepared->dataset_config_toml.empty()) {
    argv.insert(argv.end(), {"--dataset_config", (job_dir / "dataset_config.toml").string()});
  }
  argv.insert(argv.end(), {"--events-fd", std::to_string(WorkerProcess::kChildEventsFd)});
  std::string resume_note;
  auto state = store_->LatestState(job.id);
  if (state.ok() && state->has_value() && fs::exists((*state)->path)) {
    argv.insert(argv.end(), {"--resume", (*state)->path});
    resume_note = absl::StrCat(", resuming from step ", (*state)->step, " (", (*state)->name, ")");
  }
  WorkerLaunch launch;
  launch.argv = argv;
  launch.working_dir = job_dir.string();
  if (!options_.slot_gpus.empty()) {
    launch.env.emplace_back("CUDA_VISIBLE_DEVICES",
                            options_.slot_gpus[slot_index % options_.slot_gpus.size()]);
  }
  auto worker_or = WorkerProcess::Start(launch);
  if (!worker_or.ok()) return fail(std::string(worker_or.status().message()));
  std::unique_ptr<WorkerProcess> worker = std::move(*worker_or);
  Log()->info("job {} attempt {} started on slot {} (pid {}){}", job.id, job.attempts, slot_index,
              worker->pid(), resume_note);
  Record(job.id,
         LogWrite(lorad::v1::Log::INFO,
                  absl::StrCat("attempt ", job.attempts, " started on slot ", slot_index, " (pid ",
                               worker->pid(), ")", resume_note)),
         false);

  std::ofstream worker_log(job_dir / "worker.log", std::ios::app);
  StderrTail tail;
  events::EventDecoder decoder;
  std::optional<lorad::v1::Finished> worker_finished;
  int64_t last_step = job.step;
  std::string last_lora;
  std::string stream_error;
  bool signalled = false, killed = false;
  Clock::time_point kill_at;

  std::vector<storage::EventWrite> pending;
  auto handle_event = [&](lorad::v1::Event event) {
    storage::EventWrite write;
    if (event.has_finished()) {
      worker_finished = event.finished();
      return;  // the daemon records the job's end itself, with the exit status
    }
    if (event.has_progress()) last_step = event.progress().step();
    std::string path;
    if (event.has_checkpoint()) path = event.checkpoint().path();
    if (event.has_sample()) path = event.sample().path();
    if (!path.empty()) {
      if (!IsWithin(job_dir, path)) {
        pending.push_back(LogWrite(lorad::v1::Log::WARN,
                                absl::StrCat("worker reported ", path, " outside ", job_dir.string(),
                                             "; not recorded as an artifact")));
      } else {
        storage::ArtifactRecord a;
        a.path = fs::weakly_canonical(path).string();
        a.name = fs::relative(a.path, fs::weakly_canonical(job_dir / "output"), ec).string();
        if (ec || a.name.rfind("..", 0) == 0) a.name = fs::relative(a.path, job_dir).string();
        a.is_directory = fs::is_directory(a.path);
        a.bytes = TreeBytes(a.path);
        if (event.has_checkpoint()) {
          const auto& c = event.checkpoint();
          a.kind = c.kind() == lorad::v1::ARTIFACT_KIND_UNSPECIFIED
                       ? (a.is_directory ? lorad::v1::ARTIFACT_KIND_STATE : lorad::v1::ARTIFACT_KIND_LORA)
                       : c.kind();
          a.step = c.step();
          a.sha256 = c.sha256();
          a.is_final = c.is_final();
        } else {
          a.kind = lorad::v1::ARTIFACT_KIND_SAMPLE;
          a.step = event.sample().step();
          a.sha256 = event.sample().sha256();
        }
        if (a.sha256.empty() && !a.is_directory) {
          if (auto sha = Sha256File(a.path); sha.ok()) a.sha256 = *sha;
        }
        if (a.kind == lorad::v1::ARTIFACT_KIND_LORA) last_lora = a.path;
        write.artifact = a;
      }
    }
    write.event = std::move(event);
    pending.push_back(std::move(write));
  };
  // Commits the burst read from the pipe in one transaction, then streams it.
  auto flush = [&] {
    if (pending.empty()) return;
    auto stored = store_->AppendEvents(job.id, pending);
    if (!stored.ok()) {
      Log()->error("job {}: cannot record {} events: {}", job.id, pending.size(), stored.status().ToString());
    } else {
      for (const auto& e : *stored) hub_->Publish(e, false);
    }
    pending.clear();
  };

  bool events_open = true, stderr_open = true, exited = false;
  ExitInfo exit_info;
  char buffer[65536];
  while (events_open || stderr_open) {
    pollfd fds[2];
    int n = 0;
    if (events_open) fds[n++] = {worker->events_fd(), POLLIN, 0};
    if (stderr_open) fds[n++] = {worker->stderr_fd(), POLLIN, 0};
    ::poll(fds, n, exited ? 0 : 100);
    if (events_open) {
      while (true) {
        const ssize_t r = ::read(worker->events_fd(), buffer, sizeof(buffer));
        if (r > 0) {
          decoder.Append(buffer, static_cast<size_t>(r));
          continue;
        }
        if (r == 0) events_open = false;
        break;  // EAGAIN or EOF
      }
      while (stream_error.empty()) {
        auto next = decoder.Next();
        if (!next.ok()) {
          stream_error = std::string(next.status().message());
          worker->Signal(SIGKILL);  // a corrupt event stream cannot be trusted
          break;
        }
        if (!next->has_value()) break;
        handle_event(std::move(**next));
      }
      flush();
      if (!events_open) worker->CloseEvents();
    }
    if (stderr_open) {
      while (true) {
        const ssize_t r = ::read(worker->stderr_fd(), buffer, sizeof(buffer));
        if (r > 0) {
          tail.Append(buffer, static_cast<size_t>(r));
          worker_log.write(buffer, r);
          continue;
        }
        if (r == 0) stderr_open = false;
        break;
      }
      worker_log.flush();
      if (!stderr_open) worker->CloseStderr();
    }
    if ((slot->cancel || slot->stop) && !signalled) {
      worker->Signal(SIGTERM);
      signalled = true;
      kill_at = Clock::now() + std::chrono::milliseconds(static_cast<int64_t>(options_.grace_s * 1000));
    }
    if (signalled && !killed && Clock::now() >= kill_at) {
      worker->Signal(SIGKILL);
      killed = true;
    }
    if (exited) break;  // one last non-blocking drain happened above
    if (worker->TryWait(&exit_info)) exited = true;  // grandchildren may hold the pipes
  }
  exit_info = worker->Wait();
  worker.reset();
  Log()->info("job {} worker exited: {}", job.id, exit_info.Describe());

  if (slot->stop && !slot->cancel) {
    auto event = store_->Requeue(job.id, absl::StrCat("lorad stopping; worker ", exit_info.Describe(),
                                                      "; job re-queued to resume from its last saved state"));
    if (event.ok()) {
      hub_->Publish(*event, event->event.has_finished());
    } else {
      Log()->error("job {}: cannot re-queue: {}", job.id, event.status().ToString());
    }
    return;
  }
  auto current = store_->GetJob(job.id);
  const bool cancelled = slot->cancel || (current.ok() && current->cancel_requested);
  storage::EventWrite write;
  write.event.set_time_unix_ms(events::NowUnixMs());
  auto* fin = write.event.mutable_finished();
  fin->set_final_step(last_step);
  fin->set_final_lora_path(worker_finished && !worker_finished->final_lora_path().empty()
                               ? worker_finished->final_lora_path()
                               : last_lora);
  storage::JobEnd end{storage::JobState::kFailed, "", exit_info.exit_code, exit_info.term_signal};
  if (cancelled) {
    end.state = storage::JobState::kCancelled;
    end.reason = absl::StrCat(current.ok() && !current->reason.empty() ? current->reason : "cancelled",
                              " (worker ", exit_info.Describe(), ")");
    fin->set_status(lorad::v1::Finished::CANCELLED);
  } else if (worker_finished && worker_finished->status() == lorad::v1::Finished::SUCCEEDED &&
             exit_info.exit_code == 0 && exit_info.term_signal == 0 && stream_error.empty()) {
    end.state = storage::JobState::kSucceeded;
    fin->set_status(lorad::v1::Finished::SUCCEEDED);
  } else {
    std::vector<std::string> parts;
    if (worker_finished && !worker_finished->reason().empty()) parts.push_back(worker_finished->reason());
    if (!stream_error.empty()) parts.push_back(absl::StrCat("corrupt event stream: ", stream_error));
    parts.push_back(absl::StrCat("lorad-train ", exit_info.Describe()));
    if (!worker_finished && exit_info.exit_code == 0 && exit_info.term_signal == 0) {
      parts.push_back("it exited without reporting the end of training");
    }
    const std::string stderr_tail = tail.LastLines(8);
    if (!stderr_tail.empty()) parts.push_back(absl::StrCat("last stderr lines:\n", stderr_tail));
    end.reason = absl::StrJoin(parts, "; ");
    fin->set_status(lorad::v1::Finished::FAILED);
  }
  fin->set_reason(end.reason);
  write.end = end;
  Log()->info("job {} {}{}{}", job.id, storage::JobStateName(end.state), end.reason.empty() ? "" : ": ",
              end.reason);
  Record(job.id, std::move(write), true);
}

}  // namespace lorad::server
