// Test harness: a real `lorad` process on a loopback port with a temp data dir,
// the real `lorad-train` as its worker, the tiny SDXL fixture as the model, a
// generated image dataset, and a gRPC client.
#pragma once

#include <sys/types.h>

#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "client/client.h"

namespace lorad::tests {

std::filesystem::path BuildDir();  // $LORAD_BUILD_DIR
std::filesystem::path FixturesDir();
// The real lorad-train of this build ($LORAD_TEST_WORKER overrides the path).
std::filesystem::path WorkerBinary();  // $LORAD_FIXTURES or <repo>/../shared/fixtures

// Writes `count` small RGB PNGs with captions into dir/<repeats>_subject/.
void MakeImageDataset(const std::filesystem::path& dir, int count, int size = 64, int repeats = 1);

struct DaemonOptions {
  int slots = 1;
  double grace_s = 10;
  std::string token = "test-token";
  std::vector<std::string> extra_flags;
};

class Daemon {
 public:
  // A fresh data dir under `root`, its models root holding a tiny SDXL
  // checkpoint made by lorad-mkmodel.
  Daemon(std::filesystem::path root, DaemonOptions options);
  ~Daemon();  // SIGKILL if still running

  // Starts lorad and waits until it answers GetServerInfo.
  void Start();
  // SIGTERM and wait; returns lorad's exit status.
  int Stop();
  // kill -9, as a power loss would.
  void Kill9();
  bool running() const { return pid_ > 0; }

  client::Client& client() { return *client_; }
  std::unique_ptr<client::Client> NewClient(const std::string& token) const;
  const std::filesystem::path& data_dir() const { return data_dir_; }
  int port() const { return port_; }
  // The dashboard's port (lorad runs with --http 127.0.0.1:0).
  int http_port() const { return http_port_; }

  // A short tiny-SDXL training config (kohya TOML).
  static std::string TinyConfig(int max_steps, int save_every_n_steps, const std::string& extra = "");

  // Blocking helpers (fail the test on error).
  int64_t Submit(const std::string& config, const std::string& dataset, const std::string& name,
                 const std::string& request_id = "");
  lorad::v1::Job GetJob(int64_t job_id);
  // Polls until `pred(job)` or the timeout; returns the last job seen.
  lorad::v1::Job WaitFor(int64_t job_id, const std::function<bool(const lorad::v1::Job&)>& pred,
                         double timeout_s);
  // Reads the whole event stream (follow until the job ends).
  std::vector<lorad::v1::JobEvent> ReadAllEvents(int64_t job_id, int64_t after_seq = 0);
  // Follows the job's events from its first until `stop(event)` holds (that
  // event included) or the job ends; a test that needs `stop` checks the last.
  std::vector<lorad::v1::JobEvent> ReadEventsUntil(int64_t job_id,
                                                   const std::function<bool(const lorad::v1::Event&)>& stop);
  std::string UploadTestDataset(int images);

 private:
  std::filesystem::path data_dir_;
  DaemonOptions options_;
  pid_t pid_ = -1;
  int port_ = 0;
  int http_port_ = 0;
  std::unique_ptr<client::Client> client_;
};

bool IsTerminal(lorad::v1::JobState state);

// Asserts that `events` have the sequence numbers first, first + 1, ...; `what`
// names the stream in the failure.
void ExpectContiguous(const std::vector<lorad::v1::JobEvent>& events, int64_t first = 1,
                      const std::string& what = "");

}  // namespace lorad::tests
