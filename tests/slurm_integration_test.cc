// lorad with executor = "slurm" against a real single-node Slurm (issue 15):
// Debian's munged, slurmctld and slurmd, started by the test with a
// slurm.conf it writes (one node = localhost, no GPUs, no accounting, state
// under a temp dir, SlurmUser=root). Skips, saying why, when not root or when
// the binaries are missing (deploy/install-deps.sh installs them).
//
// Every job is an sbatch job; lorad follows rank 0's events file. Covered:
// three jobs all finish with gap-free events; `scancel` from outside is seen
// (CANCELLED, Slurm's words); a cancel through lorad is an scancel; lorad
// killed -9 mid-run re-attaches on restart and loses or repeats no event;
// a node failure (NODE_FAIL) re-queues the job, which resumes from its state.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <netinet/in.h>
#include <sys/socket.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <thread>

#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "tests/daemon_harness.h"

namespace lorad::tests {
namespace {
namespace fs = std::filesystem;
using lorad::v1::Job;
using lorad::v1::JobEvent;

std::string Output(const std::string& command) {
  std::string out;
  FILE* pipe = ::popen(command.c_str(), "r");
  if (pipe == nullptr) return out;
  std::array<char, 4096> buffer{};
  size_t n = 0;
  while ((n = std::fread(buffer.data(), 1, buffer.size(), pipe)) > 0) out.append(buffer.data(), n);
  ::pclose(pipe);
  return out;
}

int FreePort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  return ntohs(addr.sin_port);
}

pid_t Spawn(const std::vector<std::string>& args, const fs::path& log) {
  std::vector<std::string> copy = args;
  std::vector<char*> argv;
  for (auto& a : copy) argv.push_back(a.data());
  argv.push_back(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) {
    FILE* out = std::freopen(log.c_str(), "a", stdout);
    FILE* err = std::freopen(log.c_str(), "a", stderr);
    (void)out;
    (void)err;
    ::setpgid(0, 0);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  return pid;
}

// munged + slurmctld + slurmd for one node, all state under `dir`.
class SlurmCluster {
 public:
  static std::string SkipReason() {
    if (::geteuid() != 0) return "not root: slurmd and munged run as root here (CI runs as root)";
    for (const char* tool : {"/usr/sbin/munged", "/usr/sbin/slurmctld", "/usr/sbin/slurmd", "/usr/bin/sbatch",
                             "/usr/bin/scontrol", "/usr/bin/scancel", "/usr/bin/srun", "/usr/bin/squeue"}) {
      if (!fs::exists(tool)) {
        return absl::StrCat(tool, " is missing: install slurmctld slurmd slurm-client munge (deploy/install-deps.sh)");
      }
    }
    return "";
  }

  explicit SlurmCluster(fs::path dir) : dir_(std::move(dir)) {}
  ~SlurmCluster() { Stop(); }

  // "" on success, else what went wrong (with the logs to read).
  std::string Start() {
    fs::remove_all(dir_);
    for (const char* sub : {"state", "spool", "munge"}) fs::create_directories(dir_ / sub);
    fs::permissions(dir_ / "munge", fs::perms::owner_all | fs::perms::group_exec | fs::perms::others_exec);
    const fs::path key = dir_ / "munge" / "munge.key";
    {
      std::ifstream random("/dev/urandom", std::ios::binary);
      std::string bytes(1024, '\0');
      random.read(bytes.data(), static_cast<std::streamsize>(bytes.size()));
      std::ofstream(key, std::ios::binary) << bytes;
    }
    fs::permissions(key, fs::perms::owner_read);
    const std::string munge = (dir_ / "munge").string();
    const std::string munged = absl::StrCat("/usr/sbin/munged --force --socket=", munge, "/munge.socket --key-file=",
                                            key.string(), " --pid-file=", munge, "/munged.pid --log-file=", munge,
                                            "/munged.log --seed-file=", munge, "/munged.seed");
    if (std::system(munged.c_str()) != 0) return absl::StrCat("munged did not start: ", munge, "/munged.log");
    munged_started_ = true;

    const int cpus = static_cast<int>(std::max(1L, ::sysconf(_SC_NPROCESSORS_ONLN)));
    const std::string d = dir_.string();
    std::ofstream(dir_ / "slurm.conf") << absl::StrCat(
        "ClusterName=loradtest\nSlurmctldHost=localhost\nSlurmUser=root\nSlurmdUser=root\n",
        "SlurmctldPort=", FreePort(), "\nSlurmdPort=", FreePort(), "\n",
        "AuthType=auth/munge\nCredType=cred/munge\nAuthInfo=socket=", munge, "/munge.socket\n",
        "StateSaveLocation=", d, "/state\nSlurmdSpoolDir=", d, "/spool\n",
        "SlurmctldPidFile=", d, "/slurmctld.pid\nSlurmdPidFile=", d, "/slurmd.pid\n",
        "SlurmctldLogFile=", d, "/slurmctld.log\nSlurmdLogFile=", d, "/slurmd.log\n",
        // No cgroups in a container: processes tracked by parentage, no task binding.
        "ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\n",
        "SchedulerType=sched/backfill\nSelectType=select/cons_tres\nSelectTypeParameters=CR_CPU\n",
        "MpiDefault=none\nReturnToService=2\nJobCompType=jobcomp/none\n",
        "AccountingStorageType=accounting_storage/none\nJobAcctGatherType=jobacct_gather/none\n",
        "KillWait=5\nMinJobAge=300\nSlurmdParameters=config_overrides\n",
        "NodeName=localhost NodeHostname=localhost CPUs=", cpus, " RealMemory=1000 State=UNKNOWN\n",
        "PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP\n");
    ::setenv("SLURM_CONF", (dir_ / "slurm.conf").c_str(), 1);  // lorad and its sbatch inherit it
    slurmctld_ = Spawn({"/usr/sbin/slurmctld", "-D", "-f", (dir_ / "slurm.conf").string()}, dir_ / "slurmctld.out");
    slurmd_ = Spawn({"/usr/sbin/slurmd", "-D", "-f", (dir_ / "slurm.conf").string(), "-N", "localhost"},
                    dir_ / "slurmd.out");
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (std::chrono::steady_clock::now() < deadline) {
      if (absl::StrContains(Output("sinfo -h -o %T 2>/dev/null"), "idle")) return "";
      std::this_thread::sleep_for(std::chrono::milliseconds(250));
    }
    return absl::StrCat("the node never became idle; see ", d, "/slurmctld.log and ", d, "/slurmd.log");
  }

  void Stop() {
    for (pid_t* pid : {&slurmd_, &slurmctld_}) {
      if (*pid <= 0) continue;
      ::kill(*pid, SIGTERM);
      int status = 0;
      ::waitpid(*pid, &status, 0);
      *pid = -1;
    }
    if (munged_started_) {
      pid_t munged = 0;
      std::ifstream(dir_ / "munge" / "munged.pid") >> munged;
      if (munged > 0) ::kill(munged, SIGTERM);
      munged_started_ = false;
    }
  }

  const fs::path& dir() const { return dir_; }

 private:
  fs::path dir_;
  pid_t slurmctld_ = -1;
  pid_t slurmd_ = -1;
  bool munged_started_ = false;
};

fs::path TestRoot(const std::string& name) {
  return fs::temp_directory_path() / absl::StrCat("lorad_slurm_", getpid(), "_", name);
}

std::string SlurmIdOf(Daemon& d, int64_t job_id, int attempt = 1) {
  std::ifstream in(d.data_dir() / "jobs" / std::to_string(job_id) / "slurm" / absl::StrCat("attempt-", attempt, ".id"));
  std::string id;
  in >> id;
  return id;
}

std::string SlurmState(const std::string& id) {
  const std::string out = Output(absl::StrCat("scontrol show job -o ", id, " 2>&1"));
  const size_t at = out.find("JobState=");
  if (at == std::string::npos) return out;
  return out.substr(at + 9, out.find(' ', at) - at - 9);
}

// Progress steps of a job's events, in order.
std::vector<int64_t> Steps(const std::vector<JobEvent>& events) {
  std::vector<int64_t> steps;
  for (const auto& e : events) {
    if (e.event().has_progress()) steps.push_back(e.event().progress().step());
  }
  return steps;
}

bool HasLog(const std::vector<JobEvent>& events, const std::string& text) {
  for (const auto& e : events) {
    if (e.event().has_log() && absl::StrContains(e.event().log().message(), text)) return true;
  }
  return false;
}

class SlurmTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    skip_ = new std::string(SlurmCluster::SkipReason());
    if (!skip_->empty()) return;
    cluster_ = new SlurmCluster(TestRoot("cluster"));
    const std::string error = cluster_->Start();
    if (!error.empty()) {
      *skip_ = error;
      return;
    }
    const fs::path toml = cluster_->dir() / "lorad.toml";
    std::ofstream(toml) << "executor = \"slurm\"\n[slurm]\ngres = \"\"\npoll_s = 0.5\n";
    daemon_ = new Daemon(TestRoot("daemon"), DaemonOptions{4, 5, "test-token", {"--config", toml.string()}});
    daemon_->Start();
    dataset_ = new std::string(daemon_->UploadTestDataset(3));
  }
  static void TearDownTestSuite() {
    if (daemon_) {
      if (daemon_->running()) EXPECT_EQ(daemon_->Stop(), 0);
      Output("scancel --user=root 2>&1");  // nothing of the test outlives it
      // Slurm's steps may still be writing into the job folders for KillWait.
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
      while (!Output("squeue -h -o %i 2>/dev/null").empty() && std::chrono::steady_clock::now() < deadline) {
        std::this_thread::sleep_for(std::chrono::milliseconds(250));
      }
      std::error_code ec;
      fs::remove_all(daemon_->data_dir(), ec);
    }
    delete daemon_;
    delete cluster_;  // stops slurmd, slurmctld, munged
    std::error_code ec;
    if (!HasFailure()) fs::remove_all(TestRoot("cluster"), ec);
    delete dataset_;
    delete skip_;
    daemon_ = nullptr;
    cluster_ = nullptr;
  }
  void SetUp() override {
    if (!skip_->empty()) GTEST_SKIP() << "Slurm test skipped: " << *skip_;
  }
  static Job WaitEnd(int64_t id, double timeout_s = 300) {
    return daemon_->WaitFor(id, [](const Job& j) { return IsTerminal(j.state()); }, timeout_s);
  }
  static std::string* skip_;
  static SlurmCluster* cluster_;
  static Daemon* daemon_;
  static std::string* dataset_;
};
std::string* SlurmTest::skip_ = nullptr;
SlurmCluster* SlurmTest::cluster_ = nullptr;
Daemon* SlurmTest::daemon_ = nullptr;
std::string* SlurmTest::dataset_ = nullptr;

TEST_F(SlurmTest, ThreeJobsRunAsSbatchJobsAndAllFinishWithGapFreeEvents) {
  Daemon& d = *daemon_;
  std::vector<int64_t> ids;
  // The third is data-parallel: srun starts 2 ranks (--ntasks=2) that meet at
  // the first node of the allocation.
  for (int i = 0; i < 3; ++i) {
    ids.push_back(d.Submit(Daemon::TinyConfig(5, 0, i == 2 ? "gpus = 2\n" : ""), *dataset_, absl::StrCat("slurm-", i)));
  }
  for (int64_t id : ids) {
    const Job job = WaitEnd(id);
    ASSERT_EQ(job.state(), lorad::v1::JOB_STATE_SUCCEEDED) << job.reason();
    EXPECT_EQ(job.step(), 5);
    EXPECT_EQ(job.attempts(), 1);
    const std::string slurm_id = SlurmIdOf(d, id);
    ASSERT_FALSE(slurm_id.empty());
    EXPECT_EQ(SlurmState(slurm_id), "COMPLETED");
    const auto events = d.ReadAllEvents(id);
    ExpectContiguous(events, 1, absl::StrCat("job ", id));
    EXPECT_EQ(Steps(events), (std::vector<int64_t>{1, 2, 3, 4, 5}));
    EXPECT_TRUE(HasLog(events, absl::StrCat(" (Slurm job ", slurm_id, ")"))) << "no start line naming the Slurm job";
    // The files the executor wrote, under the data dir.
    const fs::path slurm_dir = d.data_dir() / "jobs" / std::to_string(id) / "slurm";
    for (const char* name : {"attempt-1.sbatch", "attempt-1.rank.sh", "attempt-1.out", "attempt-1.events"}) {
      EXPECT_TRUE(fs::exists(slurm_dir / name)) << name;
    }
    EXPECT_TRUE(fs::exists(job.final_lora_path())) << job.final_lora_path();
  }
  // Slurm's task variables became the rendezvous: SLURM_PROCID -> RANK,
  // SLURM_NTASKS -> WORLD_SIZE, the first node -> MASTER_ADDR (srun --label
  // prefixes each rank's lines).
  std::ifstream out(d.data_dir() / "jobs" / std::to_string(ids[2]) / "slurm" / "attempt-1.out");
  const std::string text((std::istreambuf_iterator<char>(out)), {});
  EXPECT_TRUE(absl::StrContains(text, "0: data-parallel rank 0 of 2 (local rank 0 of 2), rendezvous at localhost:"))
      << text;
  EXPECT_TRUE(absl::StrContains(text, "1: data-parallel rank 1 of 2 (local rank 1 of 2), rendezvous at localhost:"))
      << text;
  std::ifstream script(d.data_dir() / "jobs" / std::to_string(ids[2]) / "slurm" / "attempt-1.sbatch");
  const std::string sbatch((std::istreambuf_iterator<char>(script)), {});
  EXPECT_TRUE(absl::StrContains(sbatch, "#SBATCH --ntasks=2\n")) << sbatch;
}

TEST_F(SlurmTest, ScancelFromOutsideIsSeenAndLoradsCancelIsAnScancel) {
  Daemon& d = *daemon_;
  const int64_t outside = d.Submit(Daemon::TinyConfig(100000, 0), *dataset_, "scancelled-outside");
  const int64_t inside = d.Submit(Daemon::TinyConfig(100000, 0), *dataset_, "cancelled-through-lorad");
  for (int64_t id : {outside, inside}) d.ReadEventsUntil(id, [](const lorad::v1::Event& e) { return e.has_progress(); });

  const std::string outside_id = SlurmIdOf(d, outside);
  ASSERT_FALSE(outside_id.empty());
  ASSERT_EQ(std::system(absl::StrCat("scancel ", outside_id).c_str()), 0);
  Job job = WaitEnd(outside, 120);
  EXPECT_EQ(job.state(), lorad::v1::JOB_STATE_CANCELLED) << job.reason();
  EXPECT_TRUE(absl::StartsWith(job.reason(), absl::StrCat("cancelled outside lorad: Slurm job ", outside_id,
                                                          " is CANCELLED")))
      << job.reason();

  lorad::v1::CancelJobRequest cancel;
  cancel.set_job_id(inside);
  cancel.set_reason("enough");
  auto ctx = d.client().Context();
  ASSERT_TRUE(d.client().stub()->CancelJob(ctx.get(), cancel, &job).ok());
  job = WaitEnd(inside, 120);
  EXPECT_EQ(job.state(), lorad::v1::JOB_STATE_CANCELLED) << job.reason();
  EXPECT_TRUE(absl::StartsWith(job.reason(), "enough")) << job.reason();
  EXPECT_EQ(SlurmState(SlurmIdOf(d, inside)), "CANCELLED");
  ExpectContiguous(d.ReadAllEvents(inside), 1, "cancelled job");
}

TEST_F(SlurmTest, LoradKilledMidRunReattachesAndNoEventIsLostOrRepeated) {
  Daemon& d = *daemon_;
  const int steps = 400;  // long enough to still run when lorad comes back
  const int64_t id = d.Submit(Daemon::TinyConfig(steps, 0), *dataset_, "survives-lorad");
  d.ReadEventsUntil(id, [](const lorad::v1::Event& e) { return e.has_progress() && e.progress().step() >= 3; });
  const std::string slurm_id = SlurmIdOf(d, id);
  ASSERT_FALSE(slurm_id.empty());
  d.Kill9();
  const fs::path events_file = d.data_dir() / "jobs" / std::to_string(id) / "slurm" / "attempt-1.events";
  const auto size_at_kill = fs::file_size(events_file);
  std::this_thread::sleep_for(std::chrono::seconds(3));
  // Slurm ran it on without lorad.
  EXPECT_GT(fs::file_size(events_file), size_at_kill);
  ASSERT_EQ(SlurmState(slurm_id), "RUNNING");
  d.Start();
  const Job job = WaitEnd(id);
  ASSERT_EQ(job.state(), lorad::v1::JOB_STATE_SUCCEEDED) << job.reason();
  EXPECT_EQ(job.attempts(), 1);  // re-attached, not re-queued
  const auto events = d.ReadAllEvents(id);
  ExpectContiguous(events, 1, "re-attached job");
  std::vector<int64_t> expected;
  for (int s = 1; s <= steps; ++s) expected.push_back(s);
  EXPECT_EQ(Steps(events), expected);  // every step once: nothing lost, nothing read twice
  EXPECT_TRUE(HasLog(events, absl::StrCat("re-attached to Slurm job ", slurm_id)));
  // Events recorded after the restart came from the followed file, step by step.
  int64_t reattached_at = 0, progress_after = 0;
  for (const auto& e : events) {
    if (e.event().has_log() && absl::StrContains(e.event().log().message(), "re-attached")) reattached_at = e.seq();
    if (reattached_at > 0 && e.event().has_progress()) ++progress_after;
  }
  EXPECT_GT(progress_after, 0);
}

TEST_F(SlurmTest, ANodeFailureRequeuesTheJobWhichResumesFromItsSavedState) {
  Daemon& d = *daemon_;
  const int64_t id = d.Submit(Daemon::TinyConfig(40, 4), *dataset_, "node-fails");
  d.ReadEventsUntil(id, [](const lorad::v1::Event& e) { return e.has_checkpoint() && e.checkpoint().step() >= 4; });
  const std::string first = SlurmIdOf(d, id);
  ASSERT_EQ(std::system("scontrol update nodename=localhost state=down reason=lorad-test"), 0);
  std::this_thread::sleep_for(std::chrono::seconds(2));
  // Back for attempt 2 (slurmd re-registering may have done it already).
  (void)std::system("scontrol update nodename=localhost state=resume >/dev/null 2>&1");
  // lorad sees NODE_FAIL, re-queues, and submits attempt 2 (the node returns).
  const Job job = WaitEnd(id);
  ASSERT_EQ(job.state(), lorad::v1::JOB_STATE_SUCCEEDED) << job.reason();
  EXPECT_EQ(job.attempts(), 2);
  EXPECT_GE(job.resumed_from_step(), 4);
  EXPECT_EQ(SlurmState(first), "NODE_FAIL");
  const auto events = d.ReadAllEvents(id);
  ExpectContiguous(events, 1, "re-queued job");
  EXPECT_TRUE(HasLog(events, absl::StrCat("Slurm job ", first, " ended NODE_FAIL")));
  EXPECT_EQ(Steps(events).back(), 40);
}

}  // namespace
}  // namespace lorad::tests
