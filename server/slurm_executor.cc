#include "server/slurm_executor.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <fstream>
#include <set>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "core/base/subprocess.h"
#include "spdlog/spdlog.h"

namespace lorad::server {
namespace fs = std::filesystem;

namespace {

std::shared_ptr<spdlog::logger> Log() {
  auto logger = spdlog::get("scheduler");
  return logger ? logger : spdlog::default_logger();
}

std::string ShellQuote(const std::string& text) {
  return absl::StrCat("'", absl::StrReplaceAll(text, {{"'", "'\\''"}}), "'");
}

std::string Tool(const SlurmOptions& options, const std::string& name) {
  return options.bin_dir.empty() ? name : (fs::path(options.bin_dir) / name).string();
}

absl::Status WriteFileAtomically(const fs::path& path, const std::string& text, mode_t mode) {
  const fs::path tmp = path.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << text;
    out.flush();
    if (!out) return absl::InternalError(absl::StrCat("cannot write ", tmp.string()));
  }
  ::chmod(tmp.c_str(), mode);
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot rename ", tmp.string(), ": ", ec.message()));
  return absl::OkStatus();
}

// The value of `key=` in scontrol's one-line output (values end at a space).
std::string Field(const std::string& text, const std::string& key) {
  size_t at = 0;
  while ((at = text.find(key + "=", at)) != std::string::npos) {
    if (at == 0 || text[at - 1] == ' ' || text[at - 1] == '\n') {
      const size_t begin = at + key.size() + 1;
      const size_t end = text.find_first_of(" \n", begin);
      return text.substr(begin, end == std::string::npos ? std::string::npos : end - begin);
    }
    at += key.size();
  }
  return "";
}

// "N:S" -> exit code and signal, as ExitInfo keeps them (-1 when signalled).
void ParseExitCode(const std::string& text, SlurmJobState* state) {
  std::vector<std::string> parts = absl::StrSplit(text, ':');
  int code = 0, sig = 0;
  if (!parts.empty()) (void)absl::SimpleAtoi(parts[0], &code);
  if (parts.size() > 1) (void)absl::SimpleAtoi(parts[1], &sig);
  state->term_signal = sig;
  state->exit_code = sig != 0 ? -1 : code;
}

std::string TailOfFile(const fs::path& path, size_t bytes) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return "";
  in.seekg(0, std::ios::end);
  const std::streamoff size = in.tellg();
  const std::streamoff from = size > static_cast<std::streamoff>(bytes) ? size - static_cast<std::streamoff>(bytes) : 0;
  in.seekg(from);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

class SlurmRun : public AttemptRun {
 public:
  SlurmRun(const SlurmOptions& options, std::string slurm_id, fs::path job_dir, int attempt, int64_t offset)
      : options_(options), id_(std::move(slurm_id)), job_dir_(std::move(job_dir)), attempt_(attempt),
        offset_(offset) {}

  std::string Describe() const override { return absl::StrCat("Slurm job ", id_); }

  WorkerReport Supervise(const WorkerSessionOptions& options) override {
    WorkerReport report;
    report.last_step = options.first_step;
    EventIngest ingest(options, &report, /*stamp_offsets=*/true, offset_);
    read_at_ = offset_;
    const fs::path events = SlurmFile(job_dir_, attempt_, ".events");
    auto next_poll = Clock::now();
    bool scancelled = false;
    SlurmJobState state;
    while (true) {
      Follow(events, &ingest);
      if (!report.stream_error.empty() && !scancelled) {
        scancelled = Scancel("its events file is corrupt");
      }
      if (!scancelled && options.cancel_requested && options.cancel_requested()) {
        scancelled = Scancel("cancel requested");
      }
      if (!scancelled && options.daemon_stopping && options.daemon_stopping()) {
        report.detached = true;  // it runs on; the next start re-attaches at the recorded offset
        return report;
      }
      // Its Finished event came: the end is near, ask at once.
      if (Clock::now() >= next_poll || (report.finished && !asked_after_finish_)) {
        asked_after_finish_ = report.finished.has_value();
        state = Query();
        next_poll = Clock::now() + std::chrono::milliseconds(static_cast<int64_t>(options_.poll_s * 1000));
        if (state.terminal() || (!state.known && !state.state.empty())) break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    Follow(events, &ingest);  // what rank 0 wrote last
    if (state.known) {
      ApplySlurmEnd(state, id_, scancelled, &report);
    } else if (report.finished) {
      // Forgotten by the controller and no accounting: its own words decide.
      const bool succeeded = report.finished->status() == lorad::v1::Finished::SUCCEEDED;
      report.exit = ExitInfo{succeeded ? 0 : 1, 0};
    } else {
      report.exit = ExitInfo{1, 0};
      report.lost_reason = absl::StrCat("Slurm no longer knows job ", id_,
                                        " (it ended while lorad was away, and sacct has no record of it)");
    }
    report.stderr_tail = LastLines(TailOfFile(SlurmFile(job_dir_, attempt_, ".out"), 16384), 8);
    return report;
  }

 private:
  using Clock = std::chrono::steady_clock;

  // Reads what rank 0 appended since the last look.
  void Follow(const fs::path& events, EventIngest* ingest) {
    if (fd_ < 0) {
      fd_ = ::open(events.c_str(), O_RDONLY | O_CLOEXEC);
      if (fd_ < 0) return;  // pending: not written yet
    }
    char buffer[65536];
    while (true) {
      const ssize_t r = ::pread(fd_, buffer, sizeof(buffer), read_at_);
      if (r <= 0) break;
      read_at_ += r;
      if (!ingest->Feed(buffer, static_cast<size_t>(r))) break;
    }
  }

  bool Scancel(const std::string& why) {
    SubprocessOptions run;
    run.argv = {Tool(options_, "scancel"), id_};
    run.timeout = absl::Seconds(60);
    auto result = RunSubprocess(run);
    if (!result.ok() || !result->succeeded()) {
      Log()->error("scancel {} ({}) failed: {}", id_, why,
                   result.ok() ? result->Describe() + ": " + result->stderr_tail : result.status().ToString());
      return false;  // tried again on the next pass
    }
    Log()->info("scancel {}: {}", id_, why);
    return true;
  }

  // scontrol while the controller remembers the job, else sacct. A
  // controller that does not answer is neither: state "" (ask again later).
  SlurmJobState Query() {
    SubprocessOptions show;
    show.argv = {Tool(options_, "scontrol"), "show", "job", "-o", id_};
    show.timeout = absl::Seconds(30);
    auto shown = RunSubprocess(show);
    if (shown.ok() && shown->succeeded()) {
      SlurmJobState state = ParseScontrolJob(shown->stdout_text);
      if (state.known) return state;
    }
    const bool forgotten = shown.ok() && absl::StrContains(absl::AsciiStrToLower(shown->stderr_tail), "invalid job id");
    if (!forgotten) {
      Log()->warn("scontrol show job {}: {}", id_,
                  shown.ok() ? shown->Describe() + ": " + shown->stderr_tail : shown.status().ToString());
      return {};
    }
    SubprocessOptions acct;
    acct.argv = {Tool(options_, "sacct"), "-n", "-P", "-X", "-j", id_, "-o", "State,ExitCode"};
    acct.timeout = absl::Seconds(30);
    auto accounted = RunSubprocess(acct);
    if (accounted.ok() && accounted->succeeded()) {
      SlurmJobState state = ParseSacctJob(accounted->stdout_text);
      if (state.known) return state;
    }
    SlurmJobState gone;
    gone.state = "UNKNOWN";  // known = false: forgotten for good
    return gone;
  }

  const SlurmOptions& options_;  // the executor's; it outlives its runs
  const std::string id_;
  const fs::path job_dir_;
  const int attempt_;
  const int64_t offset_;
  int64_t read_at_ = 0;
  int fd_ = -1;
  bool asked_after_finish_ = false;

 public:
  ~SlurmRun() override {
    if (fd_ >= 0) ::close(fd_);
  }
};

}  // namespace

fs::path SlurmFile(const fs::path& job_dir, int attempt, const std::string& suffix) {
  return job_dir / "slurm" / absl::StrCat("attempt-", attempt, suffix);
}

bool SlurmJobState::terminal() const {
  static const std::set<std::string> kTerminal = {"COMPLETED", "FAILED",        "CANCELLED", "TIMEOUT",
                                                  "NODE_FAIL", "BOOT_FAIL",     "PREEMPTED", "OUT_OF_MEMORY",
                                                  "DEADLINE",  "SPECIAL_EXIT", "REVOKED"};
  return known && kTerminal.count(state) > 0;
}

SlurmJobState ParseScontrolJob(const std::string& text) {
  SlurmJobState state;
  state.state = Field(text, "JobState");
  state.known = !state.state.empty();
  state.reason = Field(text, "Reason");
  if (state.reason == "None") state.reason.clear();
  ParseExitCode(Field(text, "ExitCode"), &state);
  return state;
}

SlurmJobState ParseSacctJob(const std::string& text) {
  SlurmJobState state;
  const std::string line = std::string(absl::StripAsciiWhitespace(text.substr(0, text.find('\n'))));
  std::vector<std::string> columns = absl::StrSplit(line, '|');
  if (columns.size() < 2 || columns[0].empty()) return state;
  // "CANCELLED by 1000": the state is the first word.
  state.state = columns[0].substr(0, columns[0].find(' '));
  state.known = true;
  ParseExitCode(columns[1], &state);
  return state;
}

void ApplySlurmEnd(const SlurmJobState& state, const std::string& slurm_id, bool lorad_cancelled,
                   WorkerReport* report) {
  report->exit = ExitInfo{state.exit_code, state.term_signal};
  const std::string why = state.reason.empty() ? "" : absl::StrCat(", reason ", state.reason);
  if (state.state == "COMPLETED" || state.state == "FAILED") return;  // the exit status says it
  if (state.state == "CANCELLED") {
    if (!lorad_cancelled) {
      report->external_cancel = absl::StrCat("cancelled outside lorad: Slurm job ", slurm_id,
                                             " is CANCELLED (scancel by a user or an administrator", why, ")");
    }
    return;
  }
  if (state.state == "NODE_FAIL" || state.state == "BOOT_FAIL" || state.state == "PREEMPTED") {
    report->lost_reason = absl::StrCat("Slurm job ", slurm_id, " ended ", state.state,
                                       state.state == "PREEMPTED" ? " (preempted)" : " (a node of the job failed)", why);
    return;
  }
  if (state.state == "TIMEOUT") {
    report->first_failure = absl::StrCat("Slurm ended job ", slurm_id,
                                         " at its time limit (TIMEOUT; raise slurm.time_limit in lorad.toml)");
  } else if (state.state == "OUT_OF_MEMORY") {
    report->first_failure = absl::StrCat("Slurm ended job ", slurm_id, " for exceeding its memory (OUT_OF_MEMORY)");
  } else {
    report->first_failure = absl::StrCat("Slurm job ", slurm_id, " ended ", state.state, why);
  }
}

SlurmScripts RenderSlurmScripts(const SlurmOptions& options, const AttemptSpec& spec) {
  const int gpus = std::max(spec.world_size, 1);
  SlurmScripts scripts;
  std::string& rank = scripts.rank;
  absl::StrAppend(&rank, "#!/bin/bash\n# One rank of lorad job ", spec.job_id, ", attempt ", spec.attempt,
                  ", started by srun (written by lorad).\n"
                  "# Slurm's task variables become torchrun's, which lorad-train reads.\n"
                  "set -eu\n"
                  "if [ \"${SLURM_NTASKS:-1}\" -gt 1 ]; then\n"
                  "  export WORLD_SIZE=\"$SLURM_NTASKS\" RANK=\"$SLURM_PROCID\" LOCAL_RANK=\"$SLURM_LOCALID\"\n"
                  "  # \"2(x3)\" or \"4,2\": this job spreads its tasks evenly, the first count is every node's.\n"
                  "  export LOCAL_WORLD_SIZE=\"${SLURM_STEP_TASKS_PER_NODE%%[(,]*}\"\n"
                  "fi\n");
  for (const auto& [key, value] : spec.base.env) absl::StrAppend(&rank, "export ", key, "=", ShellQuote(value), "\n");
  std::vector<std::string> argv;
  for (const auto& arg : spec.base.argv) argv.push_back(ShellQuote(arg));
  const std::string command = absl::StrJoin(argv, " ");
  absl::StrAppend(&rank, "cd ", ShellQuote(spec.base.working_dir.empty() ? spec.job_dir.string() : spec.base.working_dir),
                  "\n",
                  "# Rank 0 alone reports; lorad follows this file.\n"
                  "if [ \"${SLURM_PROCID:-0}\" = 0 ]; then\n"
                  "  exec ", command, " --events-file ", ShellQuote(SlurmFile(spec.job_dir, spec.attempt, ".events").string()),
                  "\nfi\nexec ", command, "\n");

  const int nodes = options.gpus_per_node > 0 ? (gpus + options.gpus_per_node - 1) / options.gpus_per_node : 1;
  const int per_node = (gpus + nodes - 1) / nodes;
  std::string& sbatch = scripts.sbatch;
  absl::StrAppend(&sbatch, "#!/bin/bash\n# lorad job ", spec.job_id, ", attempt ", spec.attempt,
                  " (written by lorad; the daemon follows this job by its id).\n");
  absl::StrAppend(&sbatch, "#SBATCH --nodes=", nodes, "\n#SBATCH --ntasks=", gpus, "\n");
  if (nodes > 1) absl::StrAppend(&sbatch, "#SBATCH --ntasks-per-node=", per_node, "\n");
  if (!options.gres.empty()) {
    absl::StrAppend(&sbatch, "#SBATCH --gres=",
                    absl::StrReplaceAll(options.gres, {{"{gpus}", std::to_string(per_node)}}), "\n");
  }
  if (options.cpus_per_task > 0) absl::StrAppend(&sbatch, "#SBATCH --cpus-per-task=", options.cpus_per_task, "\n");
  if (!options.partition.empty()) absl::StrAppend(&sbatch, "#SBATCH --partition=", options.partition, "\n");
  if (!options.account.empty()) absl::StrAppend(&sbatch, "#SBATCH --account=", options.account, "\n");
  if (!options.time_limit.empty()) absl::StrAppend(&sbatch, "#SBATCH --time=", options.time_limit, "\n");
  // A node failure re-queues in lorad (from the saved state), not in Slurm.
  absl::StrAppend(&sbatch, "#SBATCH --no-requeue\n");
  for (const auto& extra : options.sbatch_args) absl::StrAppend(&sbatch, "#SBATCH ", extra, "\n");
  absl::StrAppend(&sbatch,
                  "set -eu\n"
                  "# The rendezvous: rank 0 listens on the job's first node, at a port from the job id.\n"
                  "MASTER_ADDR=\"$(", ShellQuote(Tool(options, "scontrol")),
                  " show hostnames \"$SLURM_JOB_NODELIST\" | head -n 1)\"\n"
                  "export MASTER_ADDR\n"
                  "export MASTER_PORT=\"$((20000 + SLURM_JOB_ID % 20000))\"\n"
                  "exec ", ShellQuote(Tool(options, "srun")), " --kill-on-bad-exit=1 --label /bin/bash ",
                  ShellQuote(SlurmFile(spec.job_dir, spec.attempt, ".rank.sh").string()), "\n");
  return scripts;
}

std::string SlurmExecutor::JobName(int64_t job_id, int attempt) const {
  return absl::StrCat(options_.name_prefix, "-", job_id, "-a", attempt);
}

absl::StatusOr<std::unique_ptr<AttemptRun>> SlurmExecutor::Launch(const AttemptSpec& spec) {
  std::error_code ec;
  fs::create_directories(spec.job_dir / "slurm", ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", (spec.job_dir / "slurm").string(), ": ", ec.message()));
  const SlurmScripts scripts = RenderSlurmScripts(options_, spec);
  const fs::path batch = SlurmFile(spec.job_dir, spec.attempt, ".sbatch");
  if (auto s = WriteFileAtomically(batch, scripts.sbatch, 0644); !s.ok()) return s;
  if (auto s = WriteFileAtomically(SlurmFile(spec.job_dir, spec.attempt, ".rank.sh"), scripts.rank, 0755); !s.ok()) {
    return s;
  }
  // A launch retried after a failed sbatch starts from an empty events file.
  fs::remove(SlurmFile(spec.job_dir, spec.attempt, ".events"), ec);
  SubprocessOptions submit;
  // Daemon-made values go on the command line (argv: no quoting issues); the
  // script's #SBATCH lines hold the job's shape.
  submit.argv = {Tool(options_, "sbatch"),
                 "--parsable",
                 absl::StrCat("--job-name=", JobName(spec.job_id, spec.attempt)),
                 absl::StrCat("--output=", SlurmFile(spec.job_dir, spec.attempt, ".out").string()),
                 "--open-mode=append",
                 absl::StrCat("--chdir=", spec.job_dir.string()),
                 batch.string()};
  submit.timeout = absl::Seconds(120);
  auto result = RunSubprocess(submit);
  if (!result.ok()) return absl::UnavailableError(absl::StrCat("sbatch: ", result.status().message()));
  if (!result->succeeded()) {
    return absl::FailedPreconditionError(absl::StrCat("sbatch refused the job (", result->Describe(), "): ",
                                                      absl::StripAsciiWhitespace(result->stderr_tail),
                                                      "; check the [slurm] settings in lorad.toml"));
  }
  const std::string id(absl::StripAsciiWhitespace(result->stdout_text.substr(0, result->stdout_text.find(';'))));
  int64_t numeric = 0;
  if (!absl::SimpleAtoi(id, &numeric)) {
    return absl::InternalError(absl::StrCat("sbatch --parsable answered '", result->stdout_text, "', not a job id"));
  }
  if (auto s = WriteFileAtomically(SlurmFile(spec.job_dir, spec.attempt, ".id"),
                                   absl::StrCat(id, " ", spec.first_seq, "\n"), 0644);
      !s.ok()) {
    return s;
  }
  return std::unique_ptr<AttemptRun>(new SlurmRun(options_, id, spec.job_dir, spec.attempt, 0));
}

absl::StatusOr<std::unique_ptr<AttemptRun>> SlurmExecutor::Reattach(
    const storage::JobRecord& job, const fs::path& job_dir,
    const std::function<int64_t(int64_t after_seq)>& committed_offset) {
  const int attempt = job.attempts;
  std::string id;
  int64_t first_seq = -1;
  {
    std::ifstream in(SlurmFile(job_dir, attempt, ".id"));
    in >> id >> first_seq;
  }
  if (id.empty()) {
    // Killed between sbatch and writing the id: find it by its name.
    SubprocessOptions find;
    find.argv = {Tool(options_, "squeue"), "-h", "-n", JobName(job.id, attempt), "-o", "%i"};
    find.timeout = absl::Seconds(30);
    auto found = RunSubprocess(find);
    if (!found.ok() || !found->succeeded()) {
      return absl::UnavailableError(absl::StrCat(
          "squeue: ", found.ok() ? found->Describe() + ": " + found->stderr_tail : found.status().ToString()));
    }
    id = std::string(absl::StripAsciiWhitespace(found->stdout_text.substr(0, found->stdout_text.find('\n'))));
    if (id.empty()) return std::unique_ptr<AttemptRun>();  // never submitted
    first_seq = -1;
  }
  // Nothing of a job found only by name was recorded from its file yet.
  const int64_t offset = first_seq >= 0 ? committed_offset(first_seq) : 0;
  return std::unique_ptr<AttemptRun>(new SlurmRun(options_, id, job_dir, attempt, offset));
}

}  // namespace lorad::server
