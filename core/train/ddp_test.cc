// Data-parallel lorad-train, end to end on the CPU (Gloo) with real processes:
// 2 ranks with batch 2 equal 1 process with batch 4; resume with 2 ranks and
// with 1; a killed rank fails the job naming it within the timeout; and the
// same 2-rank run across two network namespaces joined by a veth pair.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "core/common/fixtures.h"
#include "core/io/safetensors.h"
#include "core/train/test_support.h"

namespace lorad::train {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

// LoRA weights after N steps: 2 ranks x batch 2 against 1 process x batch 4.
// The update is the same sum in another order (two half-batch forwards and an
// all-reduce against one batch of 4), so it matches to float rounding: ~5e-8
// measured, 1e-5 allowed. The runs use SGD with momentum (its state is saved
// and resumed): the weights stay linear in the gradients. AdamW divides by
// sqrt(v), which turns rounding noise in near-zero gradient entries into
// lr-sized steps (~1e-4 apart after 6 steps at lr 3e-3), so it would test
// Adam's conditioning rather than the all-reduce.
constexpr double kTolerance = 1e-5;
constexpr int kSteps = 6;

fs::path TrainBinary() {
  const char* dir = std::getenv("LORAD_BUILD_DIR");
  return fs::path(dir ? dir : "build") / "core" / "train" / "lorad-train";
}

std::string ReadFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A free TCP port for the rendezvous (each test its own).
int FreePort() {
  static int next = 29600 + static_cast<int>(::getpid() % 2000) * 2;
  return next += 7;
}

struct Proc {
  pid_t pid = -1;
  fs::path log;
};

// Starts lorad-train with `env` added (and, when `prefix` is set, under that
// command, e.g. `ip netns exec NAME`), stdout+stderr to `log`. `keep_fd` stays open.
Proc Start(const std::vector<std::string>& args, const std::vector<std::string>& env, const fs::path& log,
           const std::vector<std::string>& prefix = {}, int keep_fd = -1) {
  std::vector<std::string> argv_s = prefix;
  argv_s.push_back(TrainBinary().string());
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  std::vector<std::string> env_s;
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string v(*e);
    bool replaced = false;
    for (const auto& mine : env) replaced |= v.rfind(mine.substr(0, mine.find('=') + 1), 0) == 0;
    if (!replaced) env_s.push_back(v);
  }
  env_s.insert(env_s.end(), env.begin(), env.end());
  std::vector<char*> argv, envp;
  for (auto& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);
  for (auto& e : env_s) envp.push_back(e.data());
  envp.push_back(nullptr);
  const std::string log_path = log.string();
  Proc p;
  p.log = log;
  p.pid = ::fork();
  if (p.pid == 0) {
    const int fd = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(fd, 1);
    ::dup2(fd, 2);
    if (keep_fd >= 0) ::fcntl(keep_fd, F_SETFD, 0);
    ::execvpe(argv[0], argv.data(), envp.data());
    _exit(127);
  }
  return p;
}

// Exit code (128 + signal when killed), or -1 after `timeout` (the process is then killed).
int Wait(Proc& p, std::chrono::seconds timeout) {
  const auto deadline = Clock::now() + timeout;
  while (Clock::now() < deadline) {
    int status = 0;
    if (::waitpid(p.pid, &status, WNOHANG) == p.pid) {
      return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ::kill(p.pid, SIGKILL);
  ::waitpid(p.pid, nullptr, 0);
  return -1;
}

std::vector<std::string> RankEnv(int world, int rank, const std::string& addr, int port) {
  return {absl::StrCat("WORLD_SIZE=", world), absl::StrCat("RANK=", rank), absl::StrCat("LOCAL_RANK=", rank),
          absl::StrCat("LOCAL_WORLD_SIZE=", world), absl::StrCat("MASTER_ADDR=", addr),
          absl::StrCat("MASTER_PORT=", port)};
}

class DdpTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = fs::temp_directory_path() / absl::StrCat("lorad_ddp_test_", ::getpid());
    fs::remove_all(root_);
    fs::create_directories(root_);
    // 8 images of one bucket, 1 repeat: 2 global batches of 4 per epoch.
    ASSERT_TRUE(testing::WriteDatasetFolder(testing::MakeShapesDataset(8, 64), root_ / "images", 1).ok());
  }
  static void TearDownTestSuite() { fs::remove_all(root_); }

  // A config for the tiny SDXL fixture; `batch` per process.
  static fs::path WriteConfig(const std::string& name, int batch, int steps, double timeout_minutes = 1.0) {
    const fs::path dir = root_ / name;
    fs::create_directories(dir);
    const fs::path path = dir / "config.toml";
    std::ofstream(path) << "pretrained_model_name_or_path = \"" << FixturePath("tiny_sdxl.safetensors").string()
                        << "\"\ntokenizer_path = \"" << FixturePath("clip/bpe_simple_vocab_16e6.txt.gz").string()
                        << "\"\ntrain_data_dir = \"" << (root_ / "images").string() << "\"\noutput_dir = \""
                        << (dir / "out").string() << "\"\noutput_name = \"lora\"\n"
                        << "resolution = \"64\"\nnetwork_module = \"networks.lora\"\nnetwork_dim = 4\n"
                        << "network_alpha = 4\nlearning_rate = 0.5\noptimizer_type = \"SGD\"\n"
                        << "optimizer_args = [\"momentum=0.9\"]\n"
                        << "lr_scheduler = \"constant\"\nnetwork_train_unet_only = true\ncache_latents = true\n"
                        << "cache_text_encoder_outputs = true\ndevice = \"cpu\"\nseed = 77\nmax_grad_norm = 1.0\n"
                        << "train_batch_size = " << batch << "\nmax_train_steps = " << steps
                        << "\nsave_every_n_steps = " << steps / 2 << "\nsave_state = true\n"
                        << "ddp_timeout = " << timeout_minutes << "\n";
    return path;
  }

  static fs::path Out(const std::string& name) { return root_ / name / "out"; }

  // Runs `world` ranks on 127.0.0.1 (env as torchrun sets it); every exit code.
  static std::vector<int> RunRanks(const std::string& name, int world, const fs::path& config,
                                   const std::vector<std::string>& extra_args = {}) {
    const int port = FreePort();
    std::vector<Proc> procs;
    for (int r = 0; r < world; ++r) {
      std::vector<std::string> args = {"--config_file", config.string()};
      args.insert(args.end(), extra_args.begin(), extra_args.end());
      procs.push_back(Start(args, world > 1 ? RankEnv(world, r, "127.0.0.1", port) : std::vector<std::string>{},
                            root_ / name / absl::StrCat("rank", r, ".log")));
    }
    std::vector<int> codes;
    for (auto& p : procs) codes.push_back(Wait(p, std::chrono::seconds(600)));
    return codes;
  }

  static std::string Log(const std::string& name, int rank) {
    return ReadFile(root_ / name / absl::StrCat("rank", rank, ".log"));
  }

  static inline fs::path root_;
};

// Largest |a - b| over every tensor of two LoRA files (which must hold the same names).
double MaxDifference(const fs::path& a, const fs::path& b) {
  auto fa = io::SafetensorsFile::Open(a);
  auto fb = io::SafetensorsFile::Open(b);
  EXPECT_TRUE(fa.ok()) << a << ": " << fa.status();
  EXPECT_TRUE(fb.ok()) << b << ": " << fb.status();
  if (!fa.ok() || !fb.ok()) return INFINITY;
  EXPECT_EQ((*fa)->Names(), (*fb)->Names());
  double worst = 0;
  for (const std::string& name : (*fa)->Names()) {
    auto ta = (*fa)->Get(name);
    auto tb = (*fb)->Get(name);
    if (!ta.ok() || !tb.ok()) return INFINITY;
    worst = std::max(worst, (ta->to(torch::kFloat64) - tb->to(torch::kFloat64)).abs().max().item<double>());
  }
  return worst;
}

// Trains once: 1 process x batch 4 (the reference), and 2 ranks x batch 2.
class DdpRuns : public DdpTest {
 protected:
  static void SetUpTestSuite() {
    DdpTest::SetUpTestSuite();
    single_codes_ = RunRanks("single", 1, WriteConfig("single", 4, kSteps));
    ddp_codes_ = RunRanks("ddp", 2, WriteConfig("ddp", 2, kSteps));
  }
  static inline std::vector<int> single_codes_, ddp_codes_;
};

TEST_F(DdpRuns, TwoRanksOfBatchTwoEqualOneProcessOfBatchFour) {
  ASSERT_EQ(single_codes_, std::vector<int>({0})) << Log("single", 0);
  ASSERT_EQ(ddp_codes_, std::vector<int>({0, 0})) << Log("ddp", 0) << "\n--- rank 1:\n" << Log("ddp", 1);
  const std::string rank0 = Log("ddp", 0);
  EXPECT_NE(rank0.find("data-parallel rank 0 of 2"), std::string::npos) << rank0;
  EXPECT_NE(rank0.find("torchrun environment"), std::string::npos) << rank0;
  EXPECT_NE(rank0.find("global batch 4 = train_batch_size 2 x 2 ranks"), std::string::npos) << rank0;
  // Rank 1 shows no progress and writes nothing of its own.
  EXPECT_EQ(Log("ddp", 1).find("done at step"), std::string::npos) << Log("ddp", 1);
  const double diff = MaxDifference(Out("single") / "lora.safetensors", Out("ddp") / "lora.safetensors");
  EXPECT_LT(diff, kTolerance);
  std::cout << "max |LoRA(2 ranks x 2) - LoRA(1 x 4)| after " << kSteps << " steps: " << diff << "\n";
  // The half-way LoRA too (saved by rank 0 only, once).
  EXPECT_LT(MaxDifference(Out("single") / "lora-step00000003.safetensors",
                          Out("ddp") / "lora-step00000003.safetensors"),
            kTolerance);
}

TEST_F(DdpRuns, ResumeWithTwoRanksAndWithOneProcess) {
  ASSERT_EQ(ddp_codes_, std::vector<int>({0, 0}));
  const fs::path state = Out("ddp") / "lora-step00000003-state";
  ASSERT_TRUE(fs::exists(state)) << Log("ddp", 0);
  // Same world size: continues exactly where the 2-rank run was.
  auto two = RunRanks("resume2", 2, WriteConfig("resume2", 2, kSteps), {"--resume", state.string()});
  ASSERT_EQ(two, std::vector<int>({0, 0})) << Log("resume2", 0) << Log("resume2", 1);
  EXPECT_LT(MaxDifference(Out("ddp") / "lora.safetensors", Out("resume2") / "lora.safetensors"), kTolerance);
  // One process with the same global batch (4): warned, and the data order continues.
  auto one = RunRanks("resume1", 1, WriteConfig("resume1", 4, kSteps), {"--resume", state.string()});
  ASSERT_EQ(one, std::vector<int>({0})) << Log("resume1", 0);
  const std::string log = Log("resume1", 0);
  EXPECT_NE(log.find("the state was saved by 2 processes with a global batch of 4"), std::string::npos) << log;
  EXPECT_NE(log.find("continues exactly"), std::string::npos) << log;
  EXPECT_LT(MaxDifference(Out("ddp") / "lora.safetensors", Out("resume1") / "lora.safetensors"), kTolerance);
  // One process with batch 2 (another global batch): the rest of the epoch is skipped, said so.
  auto other = RunRanks("resume1b2", 1, WriteConfig("resume1b2", 2, kSteps), {"--resume", state.string()});
  ASSERT_EQ(other, std::vector<int>({0})) << Log("resume1b2", 0);
  EXPECT_NE(Log("resume1b2", 0).find("goes on from the start of epoch"), std::string::npos) << Log("resume1b2", 0);
}

// accelerate's keys without the torchrun environment: lorad-train starts the
// local ranks itself (rank 0 inherits the events flags, the log says so).
TEST_F(DdpRuns, NumProcessesKeyLaunchesTheRanks) {
  ASSERT_EQ(single_codes_, std::vector<int>({0}));
  const fs::path config = WriteConfig("launcher", 2, kSteps);
  std::ofstream(config, std::ios::app) << "num_processes = 2\nmain_process_port = " << FreePort() << "\n";
  ASSERT_EQ(RunRanks("launcher", 1, config), std::vector<int>({0})) << Log("launcher", 0);
  const std::string log = Log("launcher", 0);
  EXPECT_NE(log.find("launching 2 local ranks"), std::string::npos) << log;
  EXPECT_NE(log.find("placed by the config keys"), std::string::npos) << log;
  EXPECT_LT(MaxDifference(Out("single") / "lora.safetensors", Out("launcher") / "lora.safetensors"), kTolerance);
}

// SIGKILL on rank 1 mid-run: rank 0 fails with kExitPeerFailed (16) within the
// timeout, naming rank 1, in its log and in the Failed event.
TEST_F(DdpTest, KilledRankFailsTheJobNamingIt) {
  const fs::path config = WriteConfig("kill", 2, 100000, 0.5);  // a 30 s collective timeout
  const int port = FreePort();
  const fs::path events = root_ / "kill" / "events.bin";
  const int events_fd = ::open(events.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  ASSERT_GE(events_fd, 0);
  Proc r0 = Start({"--config_file", config.string(), "--events-fd", std::to_string(events_fd)},
                  RankEnv(2, 0, "127.0.0.1", port), root_ / "kill" / "rank0.log", {}, events_fd);
  Proc r1 = Start({"--config_file", config.string()}, RankEnv(2, 1, "127.0.0.1", port), root_ / "kill" / "rank1.log");
  ::close(events_fd);
  // Wait until they train (the loop has started and run for a moment).
  const auto start = Clock::now();
  while (Clock::now() - start < std::chrono::seconds(300) &&
         ReadFile(root_ / "kill" / "rank0.log").find("data-parallel: 2 ranks") == std::string::npos) {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  std::this_thread::sleep_for(std::chrono::seconds(3));
  ::kill(r1.pid, SIGKILL);
  const auto killed_at = Clock::now();
  EXPECT_EQ(Wait(r1, std::chrono::seconds(10)), 128 + SIGKILL);
  const int code = Wait(r0, std::chrono::seconds(30 + 30));
  const double seconds = std::chrono::duration<double>(Clock::now() - killed_at).count();
  const std::string log = ReadFile(root_ / "kill" / "rank0.log");
  EXPECT_EQ(code, 16) << log;  // kExitPeerFailed
  EXPECT_LT(seconds, 30.0) << log;
  EXPECT_NE(log.find("rank 1 died"), std::string::npos) << log;
  EXPECT_NE(ReadFile(events).find("rank 1 died"), std::string::npos) << "the Failed event names the rank";
  std::cout << "rank 0 failed " << seconds << " s after rank 1 was killed\n";
}

// Two "machines": rank 0 and rank 1 in their own network namespaces joined by
// a veth pair (10.77.0.1 / 10.77.0.2); the rendezvous and Gloo run over it.
TEST_F(DdpTest, TwoNetworkNamespacesOverVeth) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root for ip netns (CI runs as root)";
  if (std::system("ip netns list >/dev/null 2>&1") != 0) GTEST_SKIP() << "ip netns is unavailable (install iproute2)";
  const std::string a = absl::StrCat("lorad_ddp_a", ::getpid()), b = absl::StrCat("lorad_ddp_b", ::getpid());
  const std::string va = absl::StrCat("ldv", ::getpid() % 100000, "a"), vb = absl::StrCat("ldv", ::getpid() % 100000, "b");
  const std::string setup = absl::StrCat(
      "ip netns add ", a, " && ip netns add ", b, " && ip link add ", va, " type veth peer name ", vb,
      " && ip link set ", va, " netns ", a, " && ip link set ", vb, " netns ", b,
      " && ip -n ", a, " addr add 10.77.0.1/24 dev ", va, " && ip -n ", b, " addr add 10.77.0.2/24 dev ", vb,
      " && ip -n ", a, " link set ", va, " up && ip -n ", b, " link set ", vb, " up && ip -n ", a,
      " link set lo up && ip -n ", b, " link set lo up");
  const int made = std::system(setup.c_str());
  struct Cleanup {
    std::string a, b;
    ~Cleanup() { (void)std::system(absl::StrCat("ip netns del ", a, " 2>/dev/null; ip netns del ", b, " 2>/dev/null").c_str()); }
  } cleanup{a, b};
  if (made != 0) GTEST_SKIP() << "cannot create network namespaces here: " << setup;

  const fs::path config = WriteConfig("netns", 2, kSteps);
  const int port = FreePort();
  Proc r0 = Start({"--config_file", config.string()}, RankEnv(2, 0, "10.77.0.1", port),
                  root_ / "netns" / "rank0.log", {"ip", "netns", "exec", a});
  Proc r1 = Start({"--config_file", config.string()}, RankEnv(2, 1, "10.77.0.1", port),
                  root_ / "netns" / "rank1.log", {"ip", "netns", "exec", b});
  const int c0 = Wait(r0, std::chrono::seconds(600)), c1 = Wait(r1, std::chrono::seconds(60));
  const std::string log0 = ReadFile(root_ / "netns" / "rank0.log");
  ASSERT_EQ(c0, 0) << log0 << "\n--- rank 1:\n" << ReadFile(root_ / "netns" / "rank1.log");
  ASSERT_EQ(c1, 0) << ReadFile(root_ / "netns" / "rank1.log");
  EXPECT_NE(log0.find("10.77.0.1:"), std::string::npos) << log0;
  // The same run on one machine (the reference: 1 process x batch 4).
  const auto single = RunRanks("netns_single", 1, WriteConfig("netns_single", 4, kSteps));
  ASSERT_EQ(single, std::vector<int>({0})) << Log("netns_single", 0);
  EXPECT_LT(MaxDifference(Out("netns_single") / "lora.safetensors", Out("netns") / "lora.safetensors"), kTolerance);
}

}  // namespace
}  // namespace lorad::train
