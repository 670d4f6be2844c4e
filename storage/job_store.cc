#include "storage/job_store.h"

#include <algorithm>
#include <chrono>

#include "absl/strings/str_cat.h"
#include "core/base/clock.h"
#include "core/base/status_macros.h"
#include "storage/schema.h"

namespace lorad::storage {
namespace {

constexpr char kJobColumns[] =
    "j.id, j.name, j.state, j.priority, COALESCE(j.request_id, ''), COALESCE(s.name, ''), "
    "j.dataset, j.config_toml, j.dataset_config_toml, j.created_ms, j.started_ms, "
    "j.finished_ms, j.step, j.total_steps, j.loss, j.reason, j.exit_code, j.term_signal, "
    "j.slot, j.attempts, j.last_seq, j.final_lora_path, j.resumed_from_step, "
    "j.cancel_requested";
constexpr char kJobFrom[] = " FROM jobs j LEFT JOIN sweeps s ON s.id = j.sweep_id ";

JobRecord ReadJob(const Statement& row) {
  JobRecord job;
  job.id = row.Int(0);
  job.name = row.Text(1);
  job.state = static_cast<JobState>(row.Int(2));
  job.priority = static_cast<int>(row.Int(3));
  job.request_id = row.Text(4);
  job.sweep = row.Text(5);
  job.dataset = row.Text(6);
  job.config_toml = row.Text(7);
  job.dataset_config_toml = row.Text(8);
  job.created_ms = row.Int(9);
  job.started_ms = row.Int(10);
  job.finished_ms = row.Int(11);
  job.step = row.Int(12);
  job.total_steps = row.Int(13);
  job.loss = row.Double(14);
  job.reason = row.Text(15);
  job.exit_code = static_cast<int>(row.Int(16));
  job.term_signal = static_cast<int>(row.Int(17));
  job.slot = static_cast<int>(row.Int(18));
  job.attempts = static_cast<int>(row.Int(19));
  job.last_seq = row.Int(20);
  job.final_lora_path = row.Text(21);
  job.resumed_from_step = row.Int(22);
  job.cancel_requested = row.Int(23) != 0;
  return job;
}

constexpr char kArtifactColumns[] =
    "id, job_id, kind, path, name, bytes, sha256, step, created_ms, is_directory, is_final";

ArtifactRecord ReadArtifact(const Statement& row) {
  ArtifactRecord a;
  a.id = row.Int(0);
  a.job_id = row.Int(1);
  a.kind = static_cast<lorad::v1::ArtifactKind>(row.Int(2));
  a.path = row.Text(3);
  a.name = row.Text(4);
  a.bytes = row.Int(5);
  a.sha256 = row.Text(6);
  a.step = row.Int(7);
  a.created_ms = row.Int(8);
  a.is_directory = row.Int(9) != 0;
  a.is_final = row.Int(10) != 0;
  return a;
}

constexpr char kDatasetColumns[] = "id, name, path, bytes, files, images, created_ms";

DatasetRecord ReadDataset(const Statement& row) {
  DatasetRecord d;
  d.id = row.Text(0);
  d.name = row.Text(1);
  d.path = row.Text(2);
  d.bytes = row.Int(3);
  d.files = static_cast<int>(row.Int(4));
  d.images = static_cast<int>(row.Int(5));
  d.created_ms = row.Int(6);
  return d;
}

lorad::v1::Event LogEvent(int64_t time_ms, const std::string& message) {
  lorad::v1::Event event;
  event.set_time_unix_ms(time_ms);
  event.mutable_log()->set_level(lorad::v1::Log::INFO);
  event.mutable_log()->set_message(message);
  return event;
}

absl::Status UpsertHyperparameter(Database& db, int64_t job_id, const std::string& key,
                                  const std::string& value) {
  ASSIGN_OR_RETURN(Statement stmt,
                         db.Prepare("INSERT INTO hyperparameters(job_id, key, value) "
                                    "VALUES(?, ?, ?) ON CONFLICT(job_id, key) "
                                    "DO UPDATE SET value = excluded.value"));
  return stmt.Bind(1, job_id).Bind(2, key).Bind(3, value).Run();
}

}  // namespace


bool IsTerminal(JobState state) {
  return state == JobState::kSucceeded || state == JobState::kFailed ||
         state == JobState::kCancelled;
}

const char* JobStateName(JobState state) {
  switch (state) {
    case JobState::kQueued: return "QUEUED";
    case JobState::kRunning: return "RUNNING";
    case JobState::kSucceeded: return "SUCCEEDED";
    case JobState::kFailed: return "FAILED";
    case JobState::kCancelled: return "CANCELLED";
  }
  return "UNKNOWN";
}

std::string EventTypeName(const lorad::v1::Event& event) {
  switch (event.kind_case()) {
    case lorad::v1::Event::kJobStarted: return "job_started";
    case lorad::v1::Event::kProgress: return "progress";
    case lorad::v1::Event::kCheckpoint: return "checkpoint";
    case lorad::v1::Event::kSample: return "sample";
    case lorad::v1::Event::kWarning: return "warning";
    case lorad::v1::Event::kLog: return "log";
    case lorad::v1::Event::kFinished: return "finished";
    case lorad::v1::Event::KIND_NOT_SET: break;
  }
  return "unknown";
}

Usage SumUsage(const std::vector<AttemptRecord>& attempts, int64_t now_ms, int64_t since_ms) {
  Usage usage;
  for (const AttemptRecord& a : attempts) {
    const int64_t begin = std::max(a.started_ms, since_ms);
    const int64_t end = a.ended_ms > 0 ? a.ended_ms : now_ms;
    if (end <= begin) continue;
    const double gpu_seconds = static_cast<double>(end - begin) / 1000.0 * a.gpus;
    usage.gpu_seconds += gpu_seconds;
    usage.cost += gpu_seconds / 3600.0 * a.price_per_gpu_hour;
  }
  return usage;
}

absl::StatusOr<std::unique_ptr<JobStore>> JobStore::Open(const std::string& path, const Clock* clock) {
  ASSIGN_OR_RETURN(Database db, Database::Open(path));
  RETURN_IF_ERROR(db.Migrate(SchemaMigrations()));
  return std::unique_ptr<JobStore>(new JobStore(std::move(db), clock));
}

namespace {

constexpr char kAttemptColumns[] = "job_id, attempt, slot, gpus, price_per_gpu_hour, started_ms, ended_ms";

AttemptRecord ReadAttempt(const Statement& row) {
  AttemptRecord a;
  a.job_id = row.Int(0);
  a.attempt = static_cast<int>(row.Int(1));
  a.slot = static_cast<int>(row.Int(2));
  a.gpus = static_cast<int>(row.Int(3));
  a.price_per_gpu_hour = row.Double(4);
  a.started_ms = row.Int(5);
  a.ended_ms = row.Int(6);
  return a;
}

}  // namespace

absl::Status JobStore::FillUsageLocked(std::vector<JobRecord>& jobs) {
  if (jobs.empty()) return absl::OkStatus();
  std::string sql = absl::StrCat("SELECT ", kAttemptColumns, " FROM job_attempts WHERE job_id IN (");
  for (size_t i = 0; i < jobs.size(); ++i) absl::StrAppend(&sql, i ? ", ?" : "?");
  absl::StrAppend(&sql, ")");
  ASSIGN_OR_RETURN(Statement stmt, db_.Prepare(sql));
  for (size_t i = 0; i < jobs.size(); ++i) stmt.Bind(static_cast<int>(i + 1), jobs[i].id);
  std::map<int64_t, std::vector<AttemptRecord>> by_job;
  while (true) {
    ASSIGN_OR_RETURN(bool row, stmt.Step());
    if (!row) break;
    AttemptRecord attempt = ReadAttempt(stmt);
    by_job[attempt.job_id].push_back(attempt);
  }
  const int64_t now = clock_->NowUnixMs();
  for (JobRecord& job : jobs) job.usage = SumUsage(by_job[job.id], now);
  return absl::OkStatus();
}

absl::Status JobStore::EndAttemptLocked(int64_t job_id, int64_t ended_ms) {
  ASSIGN_OR_RETURN(Statement end,
                   db_.Prepare("UPDATE job_attempts SET ended_ms = MAX(started_ms, ?) "
                               "WHERE job_id = ? AND ended_ms = 0"));
  return end.Bind(1, ended_ms).Bind(2, job_id).Run();
}

absl::Status JobStore::EndInterruptedAttempts() {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(Transaction txn, Transaction::Begin(db_));
  ASSIGN_OR_RETURN(
      Statement end,
      db_.Prepare("UPDATE job_attempts SET ended_ms = MAX(started_ms, COALESCE("
                  "(SELECT MAX(e.time_ms) FROM events e WHERE e.job_id = job_attempts.job_id), 0)) "
                  "WHERE ended_ms = 0"));
  RETURN_IF_ERROR(end.Run());
  return txn.Commit();
}

absl::StatusOr<std::vector<AttemptRecord>> JobStore::ListAttempts(int64_t job_id) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(Statement stmt, db_.Prepare(absl::StrCat("SELECT ", kAttemptColumns,
                                                            " FROM job_attempts WHERE job_id = ? ORDER BY attempt")));
  stmt.Bind(1, job_id);
  std::vector<AttemptRecord> attempts;
  while (true) {
    ASSIGN_OR_RETURN(bool row, stmt.Step());
    if (!row) break;
    attempts.push_back(ReadAttempt(stmt));
  }
  return attempts;
}

absl::StatusOr<Usage> JobStore::UsageSince(int64_t since_ms) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(Statement stmt,
                   db_.Prepare(absl::StrCat("SELECT ", kAttemptColumns,
                                            " FROM job_attempts WHERE ended_ms = 0 OR ended_ms > ?")));
  stmt.Bind(1, since_ms);
  std::vector<AttemptRecord> attempts;
  while (true) {
    ASSIGN_OR_RETURN(bool row, stmt.Step());
    if (!row) break;
    attempts.push_back(ReadAttempt(stmt));
  }
  return SumUsage(attempts, clock_->NowUnixMs(), since_ms);
}

absl::StatusOr<ServerEventRecord> JobStore::AddServerEvent(const std::string& kind, const std::string& message) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(Transaction txn, Transaction::Begin(db_));
  ServerEventRecord event{0, clock_->NowUnixMs(), kind, message};
  ASSIGN_OR_RETURN(Statement insert,
                   db_.Prepare("INSERT INTO server_events(time_ms, kind, message) VALUES(?, ?, ?)"));
  RETURN_IF_ERROR(insert.Bind(1, event.time_ms).Bind(2, kind).Bind(3, message).Run());
  event.id = db_.LastInsertRowId();
  RETURN_IF_ERROR(txn.Commit());
  return event;
}

absl::StatusOr<std::vector<ServerEventRecord>> JobStore::ListServerEvents(int limit) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(Statement stmt, db_.Prepare("SELECT id, time_ms, kind, message FROM server_events "
                                               "ORDER BY id DESC LIMIT ?"));
  stmt.Bind(1, limit);
  std::vector<ServerEventRecord> events;
  while (true) {
    ASSIGN_OR_RETURN(bool row, stmt.Step());
    if (!row) break;
    events.push_back(ServerEventRecord{stmt.Int(0), stmt.Int(1), stmt.Text(2), stmt.Text(3)});
  }
  return events;
}

absl::StatusOr<JobRecord> JobStore::GetJobLocked(int64_t job_id) {
  ASSIGN_OR_RETURN(Statement stmt,
                         db_.Prepare(absl::StrCat("SELECT ", kJobColumns, kJobFrom, "WHERE j.id = ?")));
  stmt.Bind(1, job_id);
  ASSIGN_OR_RETURN(bool row, stmt.Step());
  if (!row) {
    return absl::NotFoundError(absl::StrCat("job ", job_id, " does not exist (see `loractl ls`)"));
  }
  return ReadJob(stmt);
}

absl::StatusOr<JobRecord> JobStore::GetJob(int64_t job_id) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(JobRecord job, GetJobLocked(job_id));
  std::vector<JobRecord> one = {std::move(job)};
  RETURN_IF_ERROR(FillUsageLocked(one));
  return std::move(one.front());
}

absl::StatusOr<SubmitResult> JobStore::Submit(const JobSpec& spec) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(Transaction txn, Transaction::Begin(db_));
  SubmitResult result;
  if (!spec.request_id.empty()) {
    ASSIGN_OR_RETURN(Statement find, db_.Prepare("SELECT id FROM jobs WHERE request_id = ?"));
    find.Bind(1, spec.request_id);
    ASSIGN_OR_RETURN(bool found, find.Step());
    if (found) {
      ASSIGN_OR_RETURN(result.job, GetJobLocked(find.Int(0)));
      result.created = false;
      return result;  // the transaction rolls back: nothing was written
    }
  }
  std::optional<int64_t> sweep_id;
  if (!spec.sweep.empty()) {
    ASSIGN_OR_RETURN(Statement insert_sweep,
                           db_.Prepare("INSERT INTO sweeps(name, created_ms) VALUES(?, ?) "
                                       "ON CONFLICT(name) DO NOTHING"));
    RETURN_IF_ERROR(insert_sweep.Bind(1, spec.sweep).Bind(2, clock_->NowUnixMs()).Run());
    ASSIGN_OR_RETURN(Statement find_sweep, db_.Prepare("SELECT id FROM sweeps WHERE name = ?"));
    find_sweep.Bind(1, spec.sweep);
    ASSIGN_OR_RETURN(bool found, find_sweep.Step());
    if (found) sweep_id = find_sweep.Int(0);
  }
  ASSIGN_OR_RETURN(
      Statement insert,
      db_.Prepare("INSERT INTO jobs(name, state, priority, request_id, sweep_id, dataset, "
                  "config_toml, dataset_config_toml, created_ms, model_id) VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"));
  insert.Bind(1, spec.name).Bind(2, static_cast<int>(JobState::kQueued)).Bind(3, spec.priority);
  if (spec.request_id.empty()) {
    insert.BindNull(4);
  } else {
    insert.Bind(4, spec.request_id);
  }
  if (sweep_id) {
    insert.Bind(5, *sweep_id);
  } else {
    insert.BindNull(5);
  }
  insert.Bind(6, spec.dataset).Bind(7, spec.config_toml).Bind(8, spec.dataset_config_toml)
      .Bind(9, clock_->NowUnixMs());
  if (spec.model_id > 0) {
    insert.Bind(10, spec.model_id);
  } else {
    insert.BindNull(10);
  }
  RETURN_IF_ERROR(insert.Run());
  const int64_t job_id = db_.LastInsertRowId();
  for (const auto& [key, value] : spec.hyperparameters) {
    RETURN_IF_ERROR(UpsertHyperparameter(db_, job_id, key, value));
  }
  EventWrite queued;
  queued.event =
      LogEvent(clock_->NowUnixMs(), absl::StrCat("job ", job_id, " queued (priority ", spec.priority, ")"));
  ASSIGN_OR_RETURN(StoredEvent event, AppendEventLocked(job_id, queued));
  result.events.push_back(std::move(event));
  ASSIGN_OR_RETURN(result.job, GetJobLocked(job_id));
  RETURN_IF_ERROR(txn.Commit());
  result.created = true;
  return result;
}

absl::StatusOr<std::map<std::string, std::string>> JobStore::GetHyperparameters(int64_t job_id) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(Statement stmt,
                         db_.Prepare("SELECT key, value FROM hyperparameters WHERE job_id = ?"));
  stmt.Bind(1, job_id);
  std::map<std::string, std::string> result;
  while (true) {
    ASSIGN_OR_RETURN(bool row, stmt.Step());
    if (!row) break;
    result[stmt.Text(0)] = stmt.Text(1);
  }
  return result;
}

absl::StatusOr<JobPage> JobStore::ListJobs(const JobFilter& filter) {
  absl::MutexLock lock(&mu_);
  const int page_size = filter.page_size <= 0 ? 50 : std::min(filter.page_size, 1000);
  std::string sql = absl::StrCat("SELECT ", kJobColumns, kJobFrom, "WHERE 1=1");
  if (!filter.states.empty()) {
    absl::StrAppend(&sql, " AND j.state IN (");
    for (size_t i = 0; i < filter.states.size(); ++i) absl::StrAppend(&sql, i ? ", ?" : "?");
    absl::StrAppend(&sql, ")");
  }
  if (!filter.name_contains.empty()) absl::StrAppend(&sql, " AND instr(j.name, ?) > 0");
  if (!filter.sweep.empty()) absl::StrAppend(&sql, " AND s.name = ?");
  if (filter.before_id > 0) absl::StrAppend(&sql, " AND j.id < ?");
  absl::StrAppend(&sql, " ORDER BY j.id DESC LIMIT ?");
  ASSIGN_OR_RETURN(Statement stmt, db_.Prepare(sql));
  int index = 1;
  for (JobState state : filter.states) stmt.Bind(index++, static_cast<int>(state));
  if (!filter.name_contains.empty()) stmt.Bind(index++, filter.name_contains);
  if (!filter.sweep.empty()) stmt.Bind(index++, filter.sweep);
  if (filter.before_id > 0) stmt.Bind(index++, filter.before_id);
  stmt.Bind(index++, page_size + 1);  // one extra row tells whether another page exists
  JobPage page;
  while (true) {
    ASSIGN_OR_RETURN(bool row, stmt.Step());
    if (!row) break;
    page.jobs.push_back(ReadJob(stmt));
  }
  if (static_cast<int>(page.jobs.size()) > page_size) {
    page.jobs.pop_back();
    page.next_before_id = page.jobs.back().id;
  }
  RETURN_IF_ERROR(FillUsageLocked(page.jobs));
  return page;
}

absl::StatusOr<std::optional<JobRecord>> JobStore::ClaimNext(int slot, SlotCharge charge) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(Transaction txn, Transaction::Begin(db_));
  ASSIGN_OR_RETURN(Statement pick,
                         db_.Prepare("SELECT id FROM jobs WHERE state = ? "
                                     // A job on a model still downloading waits for it.
                                     "AND (model_id IS NULL OR model_id IN (SELECT id FROM models WHERE state = 3)) "
                                     "ORDER BY priority DESC, id ASC LIMIT 1"));
  pick.Bind(1, static_cast<int>(JobState::kQueued));
  ASSIGN_OR_RETURN(bool found, pick.Step());
  if (!found) return std::optional<JobRecord>();
  const int64_t job_id = pick.Int(0);
  ASSIGN_OR_RETURN(Statement update,
                         db_.Prepare("UPDATE jobs SET state = ?, slot = ?, attempts = attempts + 1, "
                                     "started_ms = ?, exit_code = 0, term_signal = 0 WHERE id = ?"));
  RETURN_IF_ERROR(update.Bind(1, static_cast<int>(JobState::kRunning)).Bind(2, slot)
                            .Bind(3, clock_->NowUnixMs()).Bind(4, job_id).Run());
  ASSIGN_OR_RETURN(JobRecord job, GetJobLocked(job_id));
  ASSIGN_OR_RETURN(Statement attempt,
                   db_.Prepare("INSERT OR REPLACE INTO job_attempts(job_id, attempt, slot, gpus, "
                               "price_per_gpu_hour, started_ms, ended_ms) VALUES(?, ?, ?, ?, ?, ?, 0)"));
  RETURN_IF_ERROR(attempt.Bind(1, job_id).Bind(2, job.attempts).Bind(3, slot).Bind(4, std::max(charge.gpus, 1))
                      .Bind(5, charge.price_per_gpu_hour).Bind(6, job.started_ms).Run());
  RETURN_IF_ERROR(txn.Commit());
  return std::optional<JobRecord>(std::move(job));
}

absl::StatusOr<std::optional<JobRecord>> JobStore::ClaimJob(int64_t job_id, int slot, SlotCharge charge) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(Transaction txn, Transaction::Begin(db_));
  ASSIGN_OR_RETURN(Statement pick,
                   db_.Prepare("SELECT id FROM jobs WHERE id = ? AND state = ? "
                               "AND (model_id IS NULL OR model_id IN (SELECT id FROM models WHERE state = 3))"));
  pick.Bind(1, job_id).Bind(2, static_cast<int>(JobState::kQueued));
  ASSIGN_OR_RETURN(bool found, pick.Step());
  if (!found) return std::optional<JobRecord>();
  ASSIGN_OR_RETURN(Statement update,
                   db_.Prepare("UPDATE jobs SET state = ?, slot = ?, attempts = attempts + 1, "
                               "started_ms = ?, exit_code = 0, term_signal = 0 WHERE id = ?"));
  RETURN_IF_ERROR(update.Bind(1, static_cast<int>(JobState::kRunning)).Bind(2, slot)
                      .Bind(3, clock_->NowUnixMs()).Bind(4, job_id).Run());
  ASSIGN_OR_RETURN(JobRecord job, GetJobLocked(job_id));
  ASSIGN_OR_RETURN(Statement attempt,
                   db_.Prepare("INSERT OR REPLACE INTO job_attempts(job_id, attempt, slot, gpus, "
                               "price_per_gpu_hour, started_ms, ended_ms) VALUES(?, ?, ?, ?, ?, ?, 0)"));
  RETURN_IF_ERROR(attempt.Bind(1, job_id).Bind(2, job.attempts).Bind(3, slot).Bind(4, std::max(charge.gpus, 1))
                      .Bind(5, charge.price_per_gpu_hour).Bind(6, job.started_ms).Run());
  RETURN_IF_ERROR(txn.Commit());
  return std::optional<JobRecord>(std::move(job));
}

absl::StatusOr<CancelResult> JobStore::RequestCancel(int64_t job_id, const std::string& reason) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(Transaction txn, Transaction::Begin(db_));
  ASSIGN_OR_RETURN(JobRecord job, GetJobLocked(job_id));
  CancelResult result;
  const std::string why = reason.empty() ? "cancelled by request" : reason;
  if (job.state == JobState::kQueued) {
    EventWrite write;
    write.event.set_time_unix_ms(clock_->NowUnixMs());
    write.event.mutable_finished()->set_status(lorad::v1::Finished::CANCELLED);
    write.event.mutable_finished()->set_reason(why);
    write.event.mutable_finished()->set_final_step(job.step);
    write.end = JobEnd{JobState::kCancelled, why, 0, 0};
    ASSIGN_OR_RETURN(StoredEvent event, AppendEventLocked(job_id, write));
    result.events.push_back(std::move(event));
  } else if (job.state == JobState::kRunning && !job.cancel_requested) {
    ASSIGN_OR_RETURN(Statement update,
                           db_.Prepare("UPDATE jobs SET cancel_requested = 1, reason = ? WHERE id = ?"));
    RETURN_IF_ERROR(update.Bind(1, why).Bind(2, job_id).Run());
    EventWrite write;
    write.event = LogEvent(clock_->NowUnixMs(), absl::StrCat("cancel requested: ", why));
    ASSIGN_OR_RETURN(StoredEvent event, AppendEventLocked(job_id, write));
    result.events.push_back(std::move(event));
    result.needs_signal = true;
  } else if (job.state == JobState::kRunning) {
    result.needs_signal = true;  // repeated cancel: signal again, record nothing new
  }
  ASSIGN_OR_RETURN(result.job, GetJobLocked(job_id));
  RETURN_IF_ERROR(txn.Commit());
  return result;
}

absl::StatusOr<StoredEvent> JobStore::AppendEvent(int64_t job_id, const EventWrite& write) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(Transaction txn, Transaction::Begin(db_));
  ASSIGN_OR_RETURN(StoredEvent stored, AppendEventLocked(job_id, write));
  RETURN_IF_ERROR(txn.Commit());
  return stored;
}

absl::StatusOr<std::vector<StoredEvent>> JobStore::AppendEvents(int64_t job_id,
                                                                const std::vector<EventWrite>& writes) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(Transaction txn, Transaction::Begin(db_));
  std::vector<StoredEvent> stored;
  stored.reserve(writes.size());
  for (const auto& write : writes) {
    ASSIGN_OR_RETURN(StoredEvent event, AppendEventLocked(job_id, write));
    stored.push_back(std::move(event));
  }
  RETURN_IF_ERROR(txn.Commit());
  return stored;
}

// Runs inside the caller's transaction.
absl::StatusOr<StoredEvent> JobStore::AppendEventLocked(int64_t job_id, const EventWrite& write) {
  ASSIGN_OR_RETURN(Statement bump,
                         db_.Prepare("UPDATE jobs SET last_seq = last_seq + 1 WHERE id = ? "
                                     "RETURNING last_seq"));
  bump.Bind(1, job_id);
  ASSIGN_OR_RETURN(bool found, bump.Step());
  if (!found) return absl::NotFoundError(absl::StrCat("job ", job_id, " does not exist"));
  StoredEvent stored{job_id, bump.Int(0), write.event};
  RETURN_IF_ERROR(bump.Run());
  if (stored.event.time_unix_ms() == 0) stored.event.set_time_unix_ms(clock_->NowUnixMs());
  const auto& event = stored.event;

  ASSIGN_OR_RETURN(Statement insert,
                         db_.Prepare("INSERT INTO events(job_id, seq, time_ms, type, payload) "
                                     "VALUES(?, ?, ?, ?, ?)"));
  RETURN_IF_ERROR(insert.Bind(1, job_id).Bind(2, stored.seq).Bind(3, event.time_unix_ms())
                            .Bind(4, EventTypeName(event)).BindBlob(5, event.SerializeAsString())
                            .Run());

  if (event.has_job_started()) {
    const auto& started = event.job_started();
    ASSIGN_OR_RETURN(Statement update,
                           db_.Prepare("UPDATE jobs SET total_steps = ?, resumed_from_step = ?, "
                                       "step = MAX(step, ?) WHERE id = ?"));
    RETURN_IF_ERROR(update.Bind(1, started.total_steps()).Bind(2, started.resumed_from_step())
                              .Bind(3, started.resumed_from_step()).Bind(4, job_id).Run());
    for (const auto& [key, value] : started.hyperparameters()) {
      RETURN_IF_ERROR(UpsertHyperparameter(db_, job_id, key, value));
    }
  } else if (event.has_progress()) {
    const auto& p = event.progress();
    ASSIGN_OR_RETURN(Statement update,
                           db_.Prepare("UPDATE jobs SET step = ?, total_steps = ?, loss = ? "
                                       "WHERE id = ?"));
    RETURN_IF_ERROR(update.Bind(1, p.step()).Bind(2, p.total_steps()).Bind(3, p.loss_avg())
                              .Bind(4, job_id).Run());
    ASSIGN_OR_RETURN(
        Statement metric,
        db_.Prepare("INSERT OR REPLACE INTO metrics(job_id, step, epoch, time_ms, loss, loss_avg, "
                    "lr, it_per_s, images_per_s) VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?)"));
    RETURN_IF_ERROR(metric.Bind(1, job_id).Bind(2, p.step()).Bind(3, p.epoch())
                              .Bind(4, event.time_unix_ms()).Bind(5, p.loss()).Bind(6, p.loss_avg())
                              .Bind(7, p.lr_size() > 0 ? p.lr(0).lr() : 0.0).Bind(8, p.it_per_s())
                              .Bind(9, p.images_per_s()).Run());
  }
  if (write.artifact) {
    const ArtifactRecord& a = *write.artifact;
    ASSIGN_OR_RETURN(
        Statement insert_artifact,
        db_.Prepare("INSERT INTO artifacts(job_id, kind, path, name, bytes, sha256, step, "
                    "created_ms, is_directory, is_final) VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT(job_id, path) DO UPDATE SET bytes = excluded.bytes, "
                    "sha256 = excluded.sha256, step = excluded.step, "
                    "created_ms = excluded.created_ms, is_final = excluded.is_final"));
    RETURN_IF_ERROR(insert_artifact.Bind(1, job_id).Bind(2, static_cast<int>(a.kind))
                              .Bind(3, a.path).Bind(4, a.name).Bind(5, a.bytes).Bind(6, a.sha256)
                              .Bind(7, a.step).Bind(8, clock_->NowUnixMs()).Bind(9, a.is_directory ? 1 : 0)
                              .Bind(10, a.is_final ? 1 : 0).Run());
    if (a.kind == lorad::v1::ARTIFACT_KIND_LORA && a.is_final) {
      ASSIGN_OR_RETURN(Statement update,
                             db_.Prepare("UPDATE jobs SET final_lora_path = ? WHERE id = ?"));
      RETURN_IF_ERROR(update.Bind(1, a.path).Bind(2, job_id).Run());
    }
  }
  if (write.end) {
    const JobEnd& end = *write.end;
    // One clock read for both: the attempt's GPU time never exceeds the job's wall time.
    const int64_t finished_ms = clock_->NowUnixMs();
    ASSIGN_OR_RETURN(
        Statement update,
        db_.Prepare("UPDATE jobs SET state = ?, reason = ?, exit_code = ?, term_signal = ?, "
                    "finished_ms = ?, slot = -1 WHERE id = ?"));
    RETURN_IF_ERROR(update.Bind(1, static_cast<int>(end.state)).Bind(2, end.reason)
                              .Bind(3, end.exit_code).Bind(4, end.term_signal).Bind(5, finished_ms)
                              .Bind(6, job_id).Run());
    RETURN_IF_ERROR(EndAttemptLocked(job_id, finished_ms));
  }
  return stored;
}

absl::StatusOr<StoredEvent> JobStore::Requeue(int64_t job_id, const std::string& why) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(Transaction txn, Transaction::Begin(db_));
  ASSIGN_OR_RETURN(JobRecord job, GetJobLocked(job_id));
  if (job.state != JobState::kRunning) {
    return absl::FailedPreconditionError(
        absl::StrCat("job ", job_id, " is ", JobStateName(job.state), ", not RUNNING"));
  }
  EventWrite write;
  if (job.cancel_requested) {
    // A cancel was pending when the worker stopped: honour it rather than rerun.
    write.event.set_time_unix_ms(clock_->NowUnixMs());
    write.event.mutable_finished()->set_status(lorad::v1::Finished::CANCELLED);
    write.event.mutable_finished()->set_reason(job.reason);
    write.event.mutable_finished()->set_final_step(job.step);
    write.end = JobEnd{JobState::kCancelled, job.reason, 0, 0};
  } else {
    write.event = LogEvent(clock_->NowUnixMs(), why);
    ASSIGN_OR_RETURN(Statement update,
                           db_.Prepare("UPDATE jobs SET state = ?, slot = -1 WHERE id = ?"));
    RETURN_IF_ERROR(update.Bind(1, static_cast<int>(JobState::kQueued)).Bind(2, job_id).Run());
  }
  RETURN_IF_ERROR(EndAttemptLocked(job_id, clock_->NowUnixMs()));
  ASSIGN_OR_RETURN(StoredEvent stored, AppendEventLocked(job_id, write));
  RETURN_IF_ERROR(txn.Commit());
  return stored;
}

absl::StatusOr<std::vector<int64_t>> JobStore::RunningJobIds() {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(Statement stmt, db_.Prepare("SELECT id FROM jobs WHERE state = ? ORDER BY id"));
  stmt.Bind(1, static_cast<int>(JobState::kRunning));
  std::vector<int64_t> ids;
  while (true) {
    ASSIGN_OR_RETURN(bool row, stmt.Step());
    if (!row) break;
    ids.push_back(stmt.Int(0));
  }
  return ids;
}

absl::StatusOr<std::vector<StoredEvent>> JobStore::ReadEvents(int64_t job_id, int64_t after_seq,
                                                              int limit) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(Statement stmt,
                         db_.Prepare("SELECT seq, payload FROM events WHERE job_id = ? AND seq > ? "
                                     "ORDER BY seq LIMIT ?"));
  stmt.Bind(1, job_id).Bind(2, after_seq).Bind(3, limit);
  std::vector<StoredEvent> events;
  while (true) {
    ASSIGN_OR_RETURN(bool row, stmt.Step());
    if (!row) break;
    StoredEvent e{job_id, stmt.Int(0), {}};
    if (!e.event.ParseFromString(stmt.Blob(1))) {
      return absl::DataLossError(absl::StrCat("event ", e.seq, " of job ", job_id,
                                              " does not parse"));
    }
    events.push_back(std::move(e));
  }
  return events;
}

absl::StatusOr<std::vector<ArtifactRecord>> JobStore::ListArtifacts(int64_t job_id,
                                                                    lorad::v1::ArtifactKind kind) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(
      Statement stmt,
      db_.Prepare(absl::StrCat("SELECT ", kArtifactColumns, " FROM artifacts WHERE job_id = ? ",
                               kind == lorad::v1::ARTIFACT_KIND_UNSPECIFIED ? "" : "AND kind = ? ",
                               "ORDER BY id")));
  stmt.Bind(1, job_id);
  if (kind != lorad::v1::ARTIFACT_KIND_UNSPECIFIED) stmt.Bind(2, static_cast<int>(kind));
  std::vector<ArtifactRecord> artifacts;
  while (true) {
    ASSIGN_OR_RETURN(bool row, stmt.Step());
    if (!row) break;
    artifacts.push_back(ReadArtifact(stmt));
  }
  return artifacts;
}

absl::StatusOr<ArtifactRecord> JobStore::GetArtifact(int64_t artifact_id) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(
      Statement stmt,
      db_.Prepare(absl::StrCat("SELECT ", kArtifactColumns, " FROM artifacts WHERE id = ?")));
  stmt.Bind(1, artifact_id);
  ASSIGN_OR_RETURN(bool row, stmt.Step());
  if (!row) {
    return absl::NotFoundError(absl::StrCat("artifact ", artifact_id,
                                            " does not exist (see `loractl show JOB`)"));
  }
  return ReadArtifact(stmt);
}

absl::StatusOr<std::optional<ArtifactRecord>> JobStore::LatestState(int64_t job_id) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(
      Statement stmt,
      db_.Prepare(absl::StrCat("SELECT ", kArtifactColumns,
                               " FROM artifacts WHERE job_id = ? AND kind = ? "
                               "ORDER BY step DESC, created_ms DESC, id DESC LIMIT 1")));
  stmt.Bind(1, job_id).Bind(2, static_cast<int>(lorad::v1::ARTIFACT_KIND_STATE));
  ASSIGN_OR_RETURN(bool row, stmt.Step());
  if (!row) return std::optional<ArtifactRecord>();
  return std::optional<ArtifactRecord>(ReadArtifact(stmt));
}

absl::StatusOr<DatasetRecord> JobStore::PutDataset(const DatasetRecord& d) {
  absl::MutexLock lock(&mu_);
  {
    ASSIGN_OR_RETURN(Transaction txn, Transaction::Begin(db_));
    ASSIGN_OR_RETURN(
        Statement stmt,
        db_.Prepare("INSERT INTO datasets(id, name, path, bytes, files, images, created_ms) "
                    "VALUES(?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO NOTHING"));
    RETURN_IF_ERROR(stmt.Bind(1, d.id).Bind(2, d.name).Bind(3, d.path).Bind(4, d.bytes)
                              .Bind(5, d.files).Bind(6, d.images).Bind(7, clock_->NowUnixMs()).Run());
    RETURN_IF_ERROR(txn.Commit());
  }
  ASSIGN_OR_RETURN(
      Statement get,
      db_.Prepare(absl::StrCat("SELECT ", kDatasetColumns, " FROM datasets WHERE id = ?")));
  get.Bind(1, d.id);
  ASSIGN_OR_RETURN(bool row, get.Step());
  if (!row) return absl::InternalError("dataset vanished after insert");
  return ReadDataset(get);
}

absl::StatusOr<DatasetRecord> JobStore::GetDataset(const std::string& dataset_id) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(
      Statement get,
      db_.Prepare(absl::StrCat("SELECT ", kDatasetColumns, " FROM datasets WHERE id = ?")));
  get.Bind(1, dataset_id);
  ASSIGN_OR_RETURN(bool row, get.Step());
  if (!row) {
    return absl::NotFoundError(absl::StrCat("dataset ", dataset_id,
                                            " does not exist (see `loractl datasets ls`)"));
  }
  return ReadDataset(get);
}

absl::StatusOr<std::vector<DatasetRecord>> JobStore::ListDatasets() {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(
      Statement stmt,
      db_.Prepare(absl::StrCat("SELECT ", kDatasetColumns, " FROM datasets ORDER BY created_ms")));
  std::vector<DatasetRecord> result;
  while (true) {
    ASSIGN_OR_RETURN(bool row, stmt.Step());
    if (!row) break;
    result.push_back(ReadDataset(stmt));
  }
  return result;
}

absl::Status JobStore::DeleteDataset(const std::string& dataset_id) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(Transaction txn, Transaction::Begin(db_));
  ASSIGN_OR_RETURN(Statement stmt, db_.Prepare("DELETE FROM datasets WHERE id = ?"));
  RETURN_IF_ERROR(stmt.Bind(1, dataset_id).Run());
  if (db_.Changes() == 0) {
    return absl::NotFoundError(absl::StrCat("dataset ", dataset_id,
                                            " does not exist (see `loractl datasets ls`)"));
  }
  return txn.Commit();
}

absl::StatusOr<int64_t> JobStore::CountJobs(JobState state) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(Statement stmt, db_.Prepare("SELECT COUNT(*) FROM jobs WHERE state = ?"));
  stmt.Bind(1, static_cast<int>(state));
  ASSIGN_OR_RETURN(bool row, stmt.Step());
  return row ? stmt.Int(0) : 0;
}

namespace {

constexpr char kSweepColumns[] = "id, name, created_ms, mode, varied_keys";

SweepRecord ReadSweep(const Statement& row) {
  SweepRecord sweep;
  sweep.id = row.Int(0);
  sweep.name = row.Text(1);
  sweep.created_ms = row.Int(2);
  sweep.mode = row.Text(3);
  const std::string keys = row.Text(4);
  size_t start = 0;
  while (start < keys.size()) {
    size_t end = keys.find('\n', start);
    if (end == std::string::npos) end = keys.size();
    if (end > start) sweep.varied_keys.push_back(keys.substr(start, end - start));
    start = end + 1;
  }
  return sweep;
}

}  // namespace

absl::StatusOr<SweepRecord> JobStore::CreateSweep(const SweepRecord& sweep, bool reuse_existing) {
  if (sweep.name.empty()) return absl::InvalidArgumentError("a sweep needs a name");
  std::string keys;
  for (const auto& key : sweep.varied_keys) {
    if (key.find('\n') != std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat("sweep key '", key, "' contains a newline"));
    }
    absl::StrAppend(&keys, keys.empty() ? "" : "\n", key);
  }
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(Statement find,
                         db_.Prepare(absl::StrCat("SELECT ", kSweepColumns, " FROM sweeps WHERE name = ?")));
  find.Bind(1, sweep.name);
  ASSIGN_OR_RETURN(bool exists, find.Step());
  if (exists) {
    if (reuse_existing) return ReadSweep(find);
    return absl::AlreadyExistsError(absl::StrCat("a sweep named '", sweep.name,
                                                 "' exists already (see `loractl sweep ls`); pick another name"));
  }
  ASSIGN_OR_RETURN(
      Statement insert,
      db_.Prepare("INSERT INTO sweeps(name, created_ms, mode, varied_keys) VALUES(?, ?, ?, ?)"));
  RETURN_IF_ERROR(insert.Bind(1, sweep.name).Bind(2, clock_->NowUnixMs()).Bind(3, sweep.mode).Bind(4, keys).Run());
  ASSIGN_OR_RETURN(Statement again,
                         db_.Prepare(absl::StrCat("SELECT ", kSweepColumns, " FROM sweeps WHERE name = ?")));
  again.Bind(1, sweep.name);
  ASSIGN_OR_RETURN(bool row, again.Step());
  if (!row) return absl::InternalError("sweep vanished right after insert");
  return ReadSweep(again);
}

absl::StatusOr<SweepRecord> JobStore::GetSweep(int64_t sweep_id) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(Statement get,
                         db_.Prepare(absl::StrCat("SELECT ", kSweepColumns, " FROM sweeps WHERE id = ?")));
  get.Bind(1, sweep_id);
  ASSIGN_OR_RETURN(bool row, get.Step());
  if (!row) {
    return absl::NotFoundError(absl::StrCat("sweep ", sweep_id, " does not exist (see `loractl sweep ls`)"));
  }
  return ReadSweep(get);
}

absl::StatusOr<SweepRecord> JobStore::GetSweepByName(const std::string& name) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(Statement get,
                         db_.Prepare(absl::StrCat("SELECT ", kSweepColumns, " FROM sweeps WHERE name = ?")));
  get.Bind(1, name);
  ASSIGN_OR_RETURN(bool row, get.Step());
  if (!row) {
    return absl::NotFoundError(absl::StrCat("no sweep named '", name, "' (see `loractl sweep ls`)"));
  }
  return ReadSweep(get);
}

absl::StatusOr<std::vector<SweepRecord>> JobStore::ListSweeps() {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(Statement stmt,
                         db_.Prepare(absl::StrCat("SELECT ", kSweepColumns, " FROM sweeps ORDER BY id DESC")));
  std::vector<SweepRecord> result;
  while (true) {
    ASSIGN_OR_RETURN(bool row, stmt.Step());
    if (!row) break;
    result.push_back(ReadSweep(stmt));
  }
  return result;
}

absl::Status JobStore::IntegrityCheck() {
  absl::MutexLock lock(&mu_);
  return db_.IntegrityCheck();
}

}  // namespace lorad::storage
