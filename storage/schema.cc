// Schema migrations, applied in order by Database::Migrate (PRAGMA user_version).
// Never edit a released step: append a new one.
#include "storage/schema.h"

namespace lorad::storage {

const std::vector<std::string>& SchemaMigrations() {
  static const std::vector<std::string> migrations = {
      // 1: initial schema.
      R"sql(
CREATE TABLE sweeps (
  id INTEGER PRIMARY KEY,
  name TEXT NOT NULL UNIQUE,
  created_ms INTEGER NOT NULL
);
CREATE TABLE datasets (
  id TEXT PRIMARY KEY,
  name TEXT NOT NULL,
  path TEXT NOT NULL,
  bytes INTEGER NOT NULL,
  files INTEGER NOT NULL,
  images INTEGER NOT NULL,
  created_ms INTEGER NOT NULL
);
CREATE TABLE jobs (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  name TEXT NOT NULL,
  state INTEGER NOT NULL CHECK (state BETWEEN 1 AND 5),
  priority INTEGER NOT NULL DEFAULT 0,
  request_id TEXT UNIQUE,
  sweep_id INTEGER REFERENCES sweeps(id),
  dataset TEXT NOT NULL DEFAULT '',
  config_toml TEXT NOT NULL,
  dataset_config_toml TEXT NOT NULL DEFAULT '',
  created_ms INTEGER NOT NULL,
  started_ms INTEGER NOT NULL DEFAULT 0,
  finished_ms INTEGER NOT NULL DEFAULT 0,
  step INTEGER NOT NULL DEFAULT 0,
  total_steps INTEGER NOT NULL DEFAULT 0,
  loss REAL NOT NULL DEFAULT 0,
  reason TEXT NOT NULL DEFAULT '',
  exit_code INTEGER NOT NULL DEFAULT 0,
  term_signal INTEGER NOT NULL DEFAULT 0,
  slot INTEGER NOT NULL DEFAULT -1,
  attempts INTEGER NOT NULL DEFAULT 0,
  last_seq INTEGER NOT NULL DEFAULT 0,
  final_lora_path TEXT NOT NULL DEFAULT '',
  resumed_from_step INTEGER NOT NULL DEFAULT 0,
  cancel_requested INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX jobs_by_state ON jobs(state, priority DESC, id);
CREATE INDEX jobs_by_sweep ON jobs(sweep_id);
CREATE TABLE hyperparameters (
  job_id INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
  key TEXT NOT NULL,
  value TEXT NOT NULL,
  PRIMARY KEY (job_id, key)
) WITHOUT ROWID;
CREATE INDEX hyperparameters_by_key ON hyperparameters(key, value);
CREATE TABLE metrics (
  job_id INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
  step INTEGER NOT NULL,
  epoch INTEGER NOT NULL,
  time_ms INTEGER NOT NULL,
  loss REAL NOT NULL,
  loss_avg REAL NOT NULL,
  lr REAL NOT NULL,
  it_per_s REAL NOT NULL,
  images_per_s REAL NOT NULL,
  PRIMARY KEY (job_id, step)
) WITHOUT ROWID;
CREATE TABLE events (
  job_id INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
  seq INTEGER NOT NULL,
  time_ms INTEGER NOT NULL,
  type TEXT NOT NULL,
  payload BLOB NOT NULL,
  PRIMARY KEY (job_id, seq)
) WITHOUT ROWID;
CREATE TABLE artifacts (
  id INTEGER PRIMARY KEY,
  job_id INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
  kind INTEGER NOT NULL,
  path TEXT NOT NULL,
  name TEXT NOT NULL,
  bytes INTEGER NOT NULL,
  sha256 TEXT NOT NULL,
  step INTEGER NOT NULL,
  created_ms INTEGER NOT NULL,
  is_directory INTEGER NOT NULL,
  is_final INTEGER NOT NULL,
  UNIQUE (job_id, path)
);
)sql",
      // 2: sweeps remember how they were expanded (for the morning table).
      R"sql(
ALTER TABLE sweeps ADD COLUMN mode TEXT NOT NULL DEFAULT 'grid';
ALTER TABLE sweeps ADD COLUMN varied_keys TEXT NOT NULL DEFAULT '';
)sql",
      // 3: what each attempt of a job held and for how long (GPU time and cost,
      // issue 13), and daemon-wide events (the idle switch). Jobs that ended
      // before this step get their latest attempt's span, at no known price.
      R"sql(
CREATE TABLE job_attempts (
  job_id INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
  attempt INTEGER NOT NULL,
  slot INTEGER NOT NULL,
  gpus INTEGER NOT NULL,
  price_per_gpu_hour REAL NOT NULL,
  started_ms INTEGER NOT NULL,
  ended_ms INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (job_id, attempt)
) WITHOUT ROWID;
CREATE INDEX job_attempts_open ON job_attempts(ended_ms);
INSERT INTO job_attempts(job_id, attempt, slot, gpus, price_per_gpu_hour, started_ms, ended_ms)
  SELECT id, MAX(attempts, 1), -1, 1, 0, started_ms, finished_ms FROM jobs
  WHERE state IN (3, 4, 5) AND started_ms > 0 AND finished_ms >= started_ms;
CREATE TABLE server_events (
  id INTEGER PRIMARY KEY,
  time_ms INTEGER NOT NULL,
  kind TEXT NOT NULL,
  message TEXT NOT NULL
);
)sql",
      // 4: base models as records (issue 13), content-addressed by sha256
      // (NULL while a pull without a given hash runs); a job that names a
      // model record waits for it (jobs.model_id; NULL: a plain path).
      R"sql(
CREATE TABLE models (
  id INTEGER PRIMARY KEY,
  sha256 TEXT UNIQUE,
  name TEXT NOT NULL UNIQUE,
  path TEXT NOT NULL DEFAULT '',
  partial_path TEXT NOT NULL DEFAULT '',
  bytes INTEGER NOT NULL DEFAULT 0,
  bytes_done INTEGER NOT NULL DEFAULT 0,
  family TEXT NOT NULL DEFAULT '',
  prediction TEXT NOT NULL DEFAULT '',
  lineage TEXT NOT NULL DEFAULT '',
  source_url TEXT NOT NULL DEFAULT '',
  state INTEGER NOT NULL CHECK (state BETWEEN 1 AND 4),
  reason TEXT NOT NULL DEFAULT '',
  created_ms INTEGER NOT NULL
);
ALTER TABLE jobs ADD COLUMN model_id INTEGER REFERENCES models(id) ON DELETE SET NULL;
CREATE INDEX jobs_by_model ON jobs(model_id);
)sql",
  };
  return migrations;
}

}  // namespace lorad::storage
