// JobStore's model records (issue 13): base models content-addressed by
// sha256, and the queued jobs that wait on one.
#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/base/status_macros.h"
#include "storage/job_store.h"

namespace lorad::storage {
namespace {

constexpr char kModelColumns[] =
    "id, COALESCE(sha256, ''), name, path, partial_path, bytes, bytes_done, family, prediction, lineage, "
    "source_url, state, reason, created_ms";

ModelRecord ReadModel(const Statement& row) {
  ModelRecord m;
  m.id = row.Int(0);
  m.sha256 = row.Text(1);
  m.name = row.Text(2);
  m.path = row.Text(3);
  m.partial_path = row.Text(4);
  m.bytes = row.Int(5);
  m.bytes_done = row.Int(6);
  m.family = row.Text(7);
  m.prediction = row.Text(8);
  m.lineage = row.Text(9);
  m.source_url = row.Text(10);
  m.state = static_cast<ModelState>(row.Int(11));
  m.reason = row.Text(12);
  m.created_ms = row.Int(13);
  return m;
}

void BindSha(Statement& stmt, int index, const std::string& sha256) {
  if (sha256.empty()) {
    stmt.BindNull(index);
  } else {
    stmt.Bind(index, sha256);
  }
}

absl::StatusOr<ModelRecord> GetModelIn(Database& db, int64_t model_id) {
  ASSIGN_OR_RETURN(Statement stmt, db.Prepare(absl::StrCat("SELECT ", kModelColumns, " FROM models WHERE id = ?")));
  stmt.Bind(1, model_id);
  ASSIGN_OR_RETURN(bool row, stmt.Step());
  if (!row) return absl::NotFoundError(absl::StrCat("model ", model_id, " does not exist (see `loractl models ls`)"));
  return ReadModel(stmt);
}

absl::StatusOr<std::vector<int64_t>> ActiveJobsIn(Database& db, int64_t model_id, bool queued_only) {
  ASSIGN_OR_RETURN(Statement stmt,
                   db.Prepare(queued_only ? "SELECT id FROM jobs WHERE model_id = ? AND state = 1 ORDER BY id"
                                          : "SELECT id FROM jobs WHERE model_id = ? AND state IN (1, 2) ORDER BY id"));
  stmt.Bind(1, model_id);
  std::vector<int64_t> ids;
  while (true) {
    ASSIGN_OR_RETURN(bool row, stmt.Step());
    if (!row) break;
    ids.push_back(stmt.Int(0));
  }
  return ids;
}

}  // namespace

const char* ModelStateName(ModelState state) {
  switch (state) {
    case ModelState::kDownloading: return "DOWNLOADING";
    case ModelState::kUploading: return "UPLOADING";
    case ModelState::kReady: return "READY";
    case ModelState::kFailed: return "FAILED";
  }
  return "UNKNOWN";
}

absl::StatusOr<ModelRecord> JobStore::CreateModel(const ModelRecord& model) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(Transaction txn, Transaction::Begin(db_));
  ASSIGN_OR_RETURN(Statement taken, db_.Prepare("SELECT name, COALESCE(sha256, '') FROM models WHERE name = ? OR sha256 = ?"));
  taken.Bind(1, model.name);
  BindSha(taken, 2, model.sha256);
  ASSIGN_OR_RETURN(bool clash, taken.Step());
  if (clash) {
    return absl::AlreadyExistsError(
        taken.Text(0) == model.name
            ? absl::StrCat("a model named '", model.name, "' exists already (choose another --name, or `loractl models rm ",
                           model.name, "` first)")
            : absl::StrCat("the model with sha256 ", model.sha256, " exists already, named '", taken.Text(0), "'"));
  }
  ASSIGN_OR_RETURN(Statement insert,
                   db_.Prepare("INSERT INTO models(sha256, name, path, partial_path, bytes, bytes_done, family, "
                               "prediction, lineage, source_url, state, reason, created_ms) "
                               "VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"));
  BindSha(insert, 1, model.sha256);
  insert.Bind(2, model.name).Bind(3, model.path).Bind(4, model.partial_path).Bind(5, model.bytes)
      .Bind(6, model.bytes_done).Bind(7, model.family).Bind(8, model.prediction).Bind(9, model.lineage)
      .Bind(10, model.source_url).Bind(11, static_cast<int>(model.state)).Bind(12, model.reason)
      .Bind(13, clock_->NowUnixMs());
  RETURN_IF_ERROR(insert.Run());
  ASSIGN_OR_RETURN(ModelRecord stored, GetModelIn(db_, db_.LastInsertRowId()));
  RETURN_IF_ERROR(txn.Commit());
  return stored;
}

absl::StatusOr<ModelRecord> JobStore::GetModel(int64_t model_id) {
  absl::MutexLock lock(&mu_);
  return GetModelIn(db_, model_id);
}

absl::StatusOr<std::vector<ModelRecord>> JobStore::ListModels() {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(Statement stmt, db_.Prepare(absl::StrCat("SELECT ", kModelColumns, " FROM models ORDER BY id")));
  std::vector<ModelRecord> out;
  while (true) {
    ASSIGN_OR_RETURN(bool row, stmt.Step());
    if (!row) break;
    out.push_back(ReadModel(stmt));
  }
  return out;
}

absl::Status JobStore::SetModelProgress(int64_t model_id, int64_t bytes_done, int64_t bytes) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(Statement stmt, db_.Prepare("UPDATE models SET bytes_done = ?, bytes = ? WHERE id = ?"));
  return stmt.Bind(1, bytes_done).Bind(2, bytes).Bind(3, model_id).Run();
}

absl::StatusOr<ModelRecord> JobStore::MarkModelReady(const ModelRecord& model) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(Transaction txn, Transaction::Begin(db_));
  ASSIGN_OR_RETURN(Statement other, db_.Prepare("SELECT name FROM models WHERE sha256 = ? AND id != ?"));
  other.Bind(1, model.sha256).Bind(2, model.id);
  ASSIGN_OR_RETURN(bool clash, other.Step());
  if (clash) {
    return absl::AlreadyExistsError(
        absl::StrCat("the same file (sha256 ", model.sha256, ") is stored already as model '", other.Text(0), "'"));
  }
  ASSIGN_OR_RETURN(Statement update,
                   db_.Prepare("UPDATE models SET sha256 = ?, path = ?, partial_path = '', bytes = ?, bytes_done = ?, "
                               "family = ?, prediction = ?, lineage = ?, state = 3, reason = '' WHERE id = ?"));
  RETURN_IF_ERROR(update.Bind(1, model.sha256).Bind(2, model.path).Bind(3, model.bytes).Bind(4, model.bytes)
                      .Bind(5, model.family).Bind(6, model.prediction).Bind(7, model.lineage).Bind(8, model.id)
                      .Run());
  ASSIGN_OR_RETURN(ModelRecord stored, GetModelIn(db_, model.id));
  RETURN_IF_ERROR(txn.Commit());
  return stored;
}

absl::StatusOr<std::vector<int64_t>> JobStore::MarkModelFailed(int64_t model_id, const std::string& reason) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(Transaction txn, Transaction::Begin(db_));
  ASSIGN_OR_RETURN(Statement update,
                   db_.Prepare("UPDATE models SET state = 4, reason = ?, partial_path = '' WHERE id = ?"));
  RETURN_IF_ERROR(update.Bind(1, reason).Bind(2, model_id).Run());
  ASSIGN_OR_RETURN(std::vector<int64_t> waiting, ActiveJobsIn(db_, model_id, /*queued_only=*/true));
  RETURN_IF_ERROR(txn.Commit());
  return waiting;
}

absl::Status JobStore::RestartModel(const ModelRecord& model) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(Statement update,
                   db_.Prepare("UPDATE models SET sha256 = ?, source_url = ?, partial_path = ?, bytes = ?, "
                               "bytes_done = 0, state = ?, reason = '' WHERE id = ?"));
  BindSha(update, 1, model.sha256);
  return update.Bind(2, model.source_url).Bind(3, model.partial_path).Bind(4, model.bytes)
      .Bind(5, static_cast<int>(model.state)).Bind(6, model.id).Run();
}

absl::Status JobStore::DeleteModel(int64_t model_id) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(Transaction txn, Transaction::Begin(db_));
  ASSIGN_OR_RETURN(std::vector<int64_t> active, ActiveJobsIn(db_, model_id, /*queued_only=*/false));
  if (!active.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "model ", model_id, " is used by queued or running job(s) ", absl::StrJoin(active, ", "),
        "; cancel them or wait for them to end, then delete it"));
  }
  ASSIGN_OR_RETURN(Statement stmt, db_.Prepare("DELETE FROM models WHERE id = ?"));
  RETURN_IF_ERROR(stmt.Bind(1, model_id).Run());
  if (db_.Changes() == 0) return absl::NotFoundError(absl::StrCat("model ", model_id, " does not exist"));
  return txn.Commit();
}

absl::StatusOr<std::vector<int64_t>> JobStore::ActiveJobsOnModel(int64_t model_id) {
  absl::MutexLock lock(&mu_);
  return ActiveJobsIn(db_, model_id, /*queued_only=*/false);
}

absl::StatusOr<std::optional<ModelRecord>> JobStore::ModelOfJob(int64_t job_id) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(Statement stmt, db_.Prepare("SELECT model_id FROM jobs WHERE id = ? AND model_id IS NOT NULL"));
  stmt.Bind(1, job_id);
  ASSIGN_OR_RETURN(bool row, stmt.Step());
  if (!row) return std::optional<ModelRecord>();
  ASSIGN_OR_RETURN(ModelRecord model, GetModelIn(db_, stmt.Int(0)));
  return std::optional<ModelRecord>(std::move(model));
}

}  // namespace lorad::storage
