// Thin RAII layer over SQLite: a connection opened with WAL, busy_timeout and
// foreign keys; move-only prepared statements with bound values only; BEGIN
// IMMEDIATE transactions that roll back unless committed.
// Not thread-safe: callers serialise access to one Database (JobStore holds a mutex).
#pragma once

#include <sqlite3.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace lorad::storage {

class Statement {
 public:
  Statement() = default;
  Statement(sqlite3* db, sqlite3_stmt* stmt) : db_(db), stmt_(stmt) {}
  Statement(Statement&& other) noexcept;
  Statement& operator=(Statement&& other) noexcept;
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;
  ~Statement();

  // Bind by 1-based index. Text and blobs are copied (SQLITE_TRANSIENT).
  Statement& Bind(int index, int64_t value);
  Statement& Bind(int index, int value) { return Bind(index, static_cast<int64_t>(value)); }
  Statement& Bind(int index, double value);
  Statement& Bind(int index, absl::string_view text);
  Statement& Bind(int index, const std::string& text) { return Bind(index, absl::string_view(text)); }
  Statement& Bind(int index, const char* text) { return Bind(index, absl::string_view(text)); }
  Statement& BindBlob(int index, absl::string_view bytes);
  Statement& BindNull(int index);

  // Advances: true with a row, false when done. Errors name the SQL.
  absl::StatusOr<bool> Step();
  // Runs to completion, ignoring rows.
  absl::Status Run();

  int64_t Int(int column) const;
  double Double(int column) const;
  std::string Text(int column) const;
  std::string Blob(int column) const;
  bool IsNull(int column) const;

 private:
  absl::Status BindError() const;
  sqlite3* db_ = nullptr;
  sqlite3_stmt* stmt_ = nullptr;
  int bind_rc_ = SQLITE_OK;  // first failed bind, reported by Step
};

class Database {
 public:
  // Opens (creating) `path` with journal_mode=WAL, synchronous=FULL (durable
  // before acknowledged), busy_timeout, foreign_keys=ON.
  static absl::StatusOr<Database> Open(const std::string& path, int busy_timeout_ms = 5000);
  Database(Database&& other) noexcept : db_(other.db_) { other.db_ = nullptr; }
  Database& operator=(Database&& other) noexcept;
  Database(const Database&) = delete;
  Database& operator=(const Database&) = delete;
  ~Database();

  absl::StatusOr<Statement> Prepare(absl::string_view sql);
  // Executes SQL without parameters (schema, pragmas); may hold several statements.
  absl::Status Exec(absl::string_view sql);
  int64_t LastInsertRowId() const { return sqlite3_last_insert_rowid(db_); }
  int Changes() const { return sqlite3_changes(db_); }
  sqlite3* raw() const { return db_; }

  // Applies migrations[user_version..] in one BEGIN IMMEDIATE transaction and
  // sets user_version to migrations.size(). A database newer than the code is
  // FAILED_PRECONDITION (downgrade).
  absl::Status Migrate(const std::vector<std::string>& migrations);
  // PRAGMA integrity_check: OK when it reports "ok".
  absl::Status IntegrityCheck();

 private:
  explicit Database(sqlite3* db) : db_(db) {}
  sqlite3* db_ = nullptr;
};

// BEGIN IMMEDIATE on construction (takes the write lock up front, so a busy
// database waits in busy_timeout rather than failing mid-transaction); rolls back
// in the destructor unless Commit() succeeded.
class Transaction {
 public:
  static absl::StatusOr<Transaction> Begin(Database& db);
  Transaction(Transaction&& other) noexcept : db_(other.db_) { other.db_ = nullptr; }
  Transaction& operator=(Transaction&&) = delete;
  Transaction(const Transaction&) = delete;
  ~Transaction();
  absl::Status Commit();

 private:
  explicit Transaction(Database* db) : db_(db) {}
  Database* db_ = nullptr;
};

absl::Status SqliteError(sqlite3* db, int rc, absl::string_view what);

}  // namespace lorad::storage
