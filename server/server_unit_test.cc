// Unit tests of the daemon's pieces that need no lorad-train: path confinement,
// job config preparation, the worker supervisor's pipes and signals (with
// /bin/sh children), and the event hub.
#include <signal.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <thread>

#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "server/advice.h"
#include "server/data_dir_lock.h"
#include "server/disk_cleanup.h"
#include "server/upload_budget.h"
#include "server/event_hub.h"
#include "server/job_config.h"
#include "server/paths.h"
#include "server/worker_process.h"
#include "core/base/testing/scoped_temp_dir.h"

namespace lorad::server {
namespace {
namespace fs = std::filesystem;

TEST(PathsTest, RelativePathValidation) {
  EXPECT_TRUE(ValidateRelativePath("10_cat/001.png").ok());
  for (const char* bad : {"", "/etc/passwd", "../x", "a/../../x", "a//b", "./a", "a\\b"}) {
    EXPECT_EQ(ValidateRelativePath(bad).code(), absl::StatusCode::kInvalidArgument) << bad;
  }
}

TEST(PathsTest, ConfinementResolvesDotDotAndSymlinks) {
  const lorad::testing::ScopedTempDir root_tmp("lorad_server_test_confine");
  fs::path root = fs::canonical(root_tmp.path());  // symlink-free, as confinement compares
  fs::create_directories(root / "models");
  fs::create_symlink("/etc", root / "models" / "escape");
  std::vector<fs::path> roots = {root / "models"};
  EXPECT_TRUE(ConfinePath("k", "a.safetensors", root / "models", roots).ok());
  EXPECT_EQ(ConfinePath("k", "../x", root / "models", roots).status().code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(ConfinePath("k", "escape/passwd", root / "models", roots).status().code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(ConfinePath("k", "/etc/passwd", root / "models", roots).status().code(),
            absl::StatusCode::kPermissionDenied);
  fs::remove_all(root);
}

// From the hardening report (issue 16): 100,000 overrides held an RPC thread
// past a 30 s deadline, and a config with no kohya key at all was queued.
TEST(JobConfigTest, OverrideCountIsBoundedAndAConfigWithoutAModelIsRefused) {
  std::map<std::string, std::string> many;
  for (size_t i = 0; i <= kMaxOverrides; ++i) many[absl::StrCat("key", i)] = "1";
  auto refused = ApplyOverrides("", many);
  ASSERT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(refused.status().message().find("1025 overrides; at most 1024"), std::string::npos) << refused.status();
  many.erase(many.begin());
  EXPECT_TRUE(ApplyOverrides("", many).ok());

  const lorad::testing::ScopedTempDir root_tmp("lorad_server_test_nomodel");
  const fs::path root = fs::canonical(root_tmp.path());
  JobRoots roots{root / "models", root / "datasets", {}};
  fs::create_directories(roots.datasets_root / "cats");
  JobConfigInput input{"x = 1\n", "", roots.datasets_root / "cats", root / "jobs" / "1"};
  auto prepared = PrepareJobConfig(input, roots);
  ASSERT_EQ(prepared.status().code(), absl::StatusCode::kInvalidArgument) << prepared.status();
  EXPECT_NE(prepared.status().message().find("pretrained_model_name_or_path"), std::string::npos)
      << prepared.status();
}

// The checkpoint's header is read at submit: v_parameterization = false on a
// v-prediction model (a `v_pred` tensor) and an EDM model are refused before a
// worker starts, as lorad-train would refuse them.
TEST(JobConfigTest, TheCheckpointsPredictionTypeIsJudgedAtSubmit) {
  const lorad::testing::ScopedTempDir root_tmp("lorad_server_test_vpred");
  const fs::path root = fs::canonical(root_tmp.path());
  JobRoots roots{root / "models", root / "datasets", {}};
  fs::create_directories(roots.datasets_root / "cats");
  fs::create_directories(roots.models_root);
  auto write_checkpoint = [&](const std::string& name, const std::string& marker) {
    const std::string header = absl::StrCat(
        R"({"model.diffusion_model.out.2.bias":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},")", marker,
        R"(":{"dtype":"F32","shape":[0],"data_offsets":[4,4]}})");
    std::ofstream out(roots.models_root / name, std::ios::binary);
    const uint64_t length = header.size();
    out.write(reinterpret_cast<const char*>(&length), 8);
    out << header;
    out.write("\0\0\0\0", 4);
  };
  write_checkpoint("vpred.safetensors", "v_pred");
  write_checkpoint("edm.safetensors", "edm_mean");
  auto prepare = [&](const std::string& config) {
    JobConfigInput input{config, "", roots.datasets_root / "cats", root / "jobs" / "1"};
    return PrepareJobConfig(input, roots).status();
  };
  EXPECT_TRUE(prepare("pretrained_model_name_or_path = \"vpred.safetensors\"\n").ok());
  const absl::Status refused =
      prepare("pretrained_model_name_or_path = \"vpred.safetensors\"\nv_parameterization = false\n");
  EXPECT_EQ(refused.code(), absl::StatusCode::kInvalidArgument) << refused;
  EXPECT_NE(refused.message().find("v_pred"), std::string::npos) << refused;
  const absl::Status edm = prepare("pretrained_model_name_or_path = \"edm.safetensors\"\n");
  EXPECT_EQ(edm.code(), absl::StatusCode::kFailedPrecondition) << edm;
  EXPECT_NE(edm.message().find("EDM"), std::string::npos) << edm;
}

TEST(JobConfigTest, RewritesPathsForcesOutputAndRefusesEscapes) {
  const lorad::testing::ScopedTempDir root_tmp("lorad_server_test_jobconfig");
  fs::path root = fs::canonical(root_tmp.path());  // symlink-free, as confinement compares
  JobRoots roots{root / "models", root / "datasets", {}};
  fs::create_directories(roots.models_root);
  fs::create_directories(roots.datasets_root / "cats");
  auto merged = ApplyOverrides("[model]\npretrained_model_name_or_path = \"tiny.safetensors\"\n"
                               "learning_rate = 1e-4\noutput_dir = \"/tmp/elsewhere\"\n",
                               {{"learning_rate", "2e-4"}, {"optimizer_type", "AdamW"}});
  ASSERT_TRUE(merged.ok()) << merged.status();
  JobConfigInput input{*merged, "", roots.datasets_root / "cats", root / "jobs" / "1"};
  auto prepared = PrepareJobConfig(input, roots);
  ASSERT_TRUE(prepared.ok()) << prepared.status();
  EXPECT_EQ(prepared->hyperparameters.at("learning_rate"), "2e-04");  // shortest round-trip text
  EXPECT_EQ(prepared->hyperparameters.at("optimizer_type"), "AdamW");
  EXPECT_EQ(prepared->hyperparameters.at("pretrained_model_name_or_path"),
            (roots.models_root / "tiny.safetensors").string());
  EXPECT_EQ(prepared->hyperparameters.at("train_data_dir"), (roots.datasets_root / "cats").string());
  EXPECT_EQ(prepared->hyperparameters.at("output_dir"), (root / "jobs" / "1" / "output").string());
  EXPECT_EQ(prepared->hyperparameters.at("save_state"), "true");

  input.config_toml = "pretrained_model_name_or_path = \"/etc/passwd\"\n";
  EXPECT_EQ(PrepareJobConfig(input, roots).status().code(), absl::StatusCode::kPermissionDenied);
  input.config_toml = "x = 1\n";
  input.dataset_config_toml = "[[datasets]]\n[[datasets.subsets]]\nimage_dir = \"../../../etc\"\n";
  EXPECT_EQ(PrepareJobConfig(input, roots).status().code(), absl::StatusCode::kPermissionDenied);
  input.config_toml = "x = [1,\n";
  input.dataset_config_toml = "";
  auto bad = PrepareJobConfig(input, roots);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("line"), std::string::npos) << bad.status();
  fs::remove_all(root);
}

// Every path key a job can set, in the config, in an uploaded dataset config
// and inside a dataset config the config names: "..", an absolute path outside
// the roots and a symlink inside a root that points out are each refused, the
// error naming the key and the roots.
TEST(JobConfigTest, ConfinesEveryPathKeyAgainstDotDotAbsoluteAndSymlinks) {
  const lorad::testing::ScopedTempDir root_tmp("lorad_server_test_confine_keys");
  fs::path root = fs::canonical(root_tmp.path());  // symlink-free, as confinement compares
  JobRoots roots{root / "models", root / "datasets", {}};
  fs::create_directories(roots.models_root);
  fs::create_directories(roots.datasets_root / "cats");
  fs::create_directories(root / "outside" / "x");
  fs::create_symlink(root / "outside", roots.models_root / "escape");
  fs::create_symlink(root / "outside", roots.datasets_root / "escape");
  const fs::path job_dir = root / "jobs" / "1";
  const std::string model = "pretrained_model_name_or_path = \"tiny.safetensors\"\n";
  const std::vector<std::string> escapes = {"../outside/x", (root / "outside" / "x").string(), "escape/x"};

  auto expect_refused = [&](const JobConfigInput& input, const std::string& key, const std::string& value) {
    auto prepared = PrepareJobConfig(input, roots);
    ASSERT_FALSE(prepared.ok()) << key << " = " << value;
    EXPECT_EQ(prepared.status().code(), absl::StatusCode::kPermissionDenied) << prepared.status();
    EXPECT_NE(prepared.status().message().find(key), std::string::npos) << prepared.status();
    EXPECT_NE(prepared.status().message().find(roots.models_root.string()), std::string::npos)
        << prepared.status();
  };
  for (const std::string key : {"pretrained_model_name_or_path", "vae", "network_weights", "tokenizer_path",
                                "sample_prompts", "train_data_dir", "reg_data_dir", "dataset_config",
                                "output_name"}) {
    for (const auto& value : escapes) {
      const std::string line = absl::StrCat(key, " = \"", value, "\"\n");
      const std::string base = key == "pretrained_model_name_or_path" ? "" : model;
      // Top level, and inside a section (kohya flattens one level).
      expect_refused({base + line, "", "", job_dir}, key, value);
      expect_refused({absl::StrCat(base, "[section]\n", line), "", "", job_dir}, key, value);
    }
  }
  expect_refused({model + "output_name = \"/abs\"\n", "", "", job_dir}, "output_name", "/abs");
  expect_refused({model + "output_name = \"..\"\n", "", "", job_dir}, "output_name", "..");
  for (const auto& value : escapes) {
    for (const std::string key : {"image_dir", "train_data_dir", "reg_data_dir"}) {
      const std::string dataset = absl::StrCat("[[datasets]]\n[[datasets.subsets]]\n", key, " = \"", value, "\"\n");
      // Uploaded with the job.
      expect_refused({model, dataset, "", job_dir}, key, value);
      // Named by the config: the file is inside the roots, its contents are not.
      std::ofstream(roots.datasets_root / "named.toml") << dataset;
      expect_refused({model + "dataset_config = \"named.toml\"\n", "", "", job_dir}, key, value);
    }
  }

  // A named dataset config inside the roots is adopted: its paths made
  // absolute (relative to its own folder), the worker given the confined copy.
  std::ofstream(roots.datasets_root / "named.toml") << "[[datasets]]\n[[datasets.subsets]]\nimage_dir = \"cats\"\n";
  auto prepared = PrepareJobConfig({model + "dataset_config = \"named.toml\"\noutput_name = \"mine\"\n", "", "", job_dir}, roots);
  ASSERT_TRUE(prepared.ok()) << prepared.status();
  EXPECT_NE(prepared->dataset_config_toml.find((roots.datasets_root / "cats").string()), std::string::npos)
      << prepared->dataset_config_toml;
  EXPECT_EQ(prepared->config_toml.find("named.toml"), std::string::npos) << prepared->config_toml;
  EXPECT_EQ(prepared->train.dataset_config, DatasetConfigPath(job_dir).string());
  EXPECT_EQ(prepared->train.output_name, "mine");
  // The daemon's own keys are replaced whatever was asked: nothing is written outside the job.
  prepared = PrepareJobConfig({absl::StrCat(model, "train_data_dir = \"cats\"\noutput_dir = \"../outside\"\n",
                                            "logging_dir = \"", (root / "outside").string(),
                                            "\"\nresume = \"escape/x\"\n[s]\noutput_dir = \"/tmp\"\n"),
                               "", "", job_dir},
                              roots);
  ASSERT_TRUE(prepared.ok()) << prepared.status();
  EXPECT_EQ(prepared->train.output_dir, (job_dir / "output").string());
  EXPECT_NE(prepared->config_toml.find((job_dir / "logs").string()), std::string::npos);
  EXPECT_EQ(prepared->config_toml.find("outside"), std::string::npos) << prepared->config_toml;
  EXPECT_TRUE(prepared->train.resume.empty());
  fs::remove_all(root);
}

TEST(DataDirLockTest, ASecondLockFailsNamingTheHolderAndReleaseFreesIt) {
  const lorad::testing::ScopedTempDir dir_tmp("lorad_server_test_lock");
  fs::path dir = fs::canonical(dir_tmp.path());  // symlink-free, as confinement compares
  {
    auto first = DataDirLock::Acquire(dir);
    ASSERT_TRUE(first.ok()) << first.status();
    std::ifstream pid_file(dir / "lorad.lock");
    int64_t pid = 0;
    pid_file >> pid;
    EXPECT_EQ(pid, getpid());
    auto second = DataDirLock::Acquire(dir);
    ASSERT_FALSE(second.ok());
    EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_NE(second.status().message().find(dir.string()), std::string::npos) << second.status();
    EXPECT_NE(second.status().message().find(absl::StrCat("pid ", getpid())), std::string::npos)
        << second.status();
  }
  auto again = DataDirLock::Acquire(dir);  // the first was released with its owner
  EXPECT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(DataDirLock::Acquire(dir / "missing" / "deeper").status().code(), absl::StatusCode::kInternal);
  fs::remove_all(dir);
}

TEST(UploadBudgetTest, CountsConcurrentUploadsTogetherAndKeepsTheFreeSpaceReserve) {
  int64_t free = 1000;
  UploadBudget budget(100, 500, "/data", [&free] { return free; });
  EXPECT_TRUE(budget.Reserve(60).ok());
  absl::Status over = budget.Reserve(50);  // a second upload: 110 together
  EXPECT_EQ(over.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(over.message().find("max_upload_bytes"), std::string::npos) << over;
  EXPECT_NE(over.message().find("100 bytes"), std::string::npos) << over;
  EXPECT_EQ(budget.in_flight(), 60);  // nothing taken by a refusal
  EXPECT_TRUE(budget.Reserve(40).ok());
  budget.Release(60);
  budget.Release(40);
  EXPECT_EQ(budget.in_flight(), 0);

  free = 540;  // 50 more would leave 490 < 500
  absl::Status low = budget.Reserve(50);
  EXPECT_EQ(low.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(low.message().find("min_free_bytes"), std::string::npos) << low;
  EXPECT_NE(low.message().find("/data"), std::string::npos) << low;
  EXPECT_EQ(budget.in_flight(), 0);
  EXPECT_TRUE(budget.Reserve(40).ok());

  // The real statvfs: no disk has an exabyte free.
  UploadBudget real(int64_t{1} << 40, int64_t{1} << 60, fs::temp_directory_path());
  EXPECT_EQ(real.Reserve(1).code(), absl::StatusCode::kResourceExhausted);

  // Many uploads at once: exactly the budget is handed out.
  UploadBudget shared(4000, 0, "/data", [] { return int64_t{1} << 40; });
  std::atomic<int> granted{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 1000; ++i) granted += shared.Reserve(1).ok() ? 1 : 0;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(granted.load(), 4000);
  EXPECT_EQ(shared.in_flight(), 4000);
}

TEST(DiskCleanupTest, RemovesInterruptedUploadsAndTempFilesOnly) {
  const lorad::testing::ScopedTempDir root_tmp("lorad_server_test_cleanup");
  fs::path root = fs::canonical(root_tmp.path());
  const fs::path datasets = root / "datasets";
  fs::create_directories(datasets / ".incoming-123" / "10_cat");
  std::ofstream(datasets / ".incoming-123" / "10_cat" / "a.png") << "x";
  fs::create_directories(datasets / "0123abcd");
  std::ofstream(datasets / "0123abcd" / "b.png") << "x";
  auto removed = RemoveIncompleteUploads(datasets);
  ASSERT_EQ(removed.size(), 1u);
  EXPECT_EQ(removed[0], datasets / ".incoming-123");
  EXPECT_FALSE(fs::exists(datasets / ".incoming-123"));
  EXPECT_TRUE(fs::exists(datasets / "0123abcd" / "b.png"));

  const fs::path output = root / "output";
  fs::create_directories(output / "mine-state");
  fs::create_directories(root / "shared_cache");
  fs::create_directory_symlink(root / "shared_cache", output / "latent_cache");
  for (const fs::path& f : {output / "mine.safetensors.tmp.4242", output / "mine-state" / "optimizer.bin.tmp.7",
                            output / "mine.safetensors", output / "notes.tmp.txt", output / ".tmp.1",
                            root / "shared_cache" / "entry.tmp.99"}) {
    std::ofstream(f) << "x";
  }
  auto temps = RemoveTempFiles(output);
  EXPECT_EQ(temps.size(), 2u);
  EXPECT_FALSE(fs::exists(output / "mine.safetensors.tmp.4242"));
  EXPECT_FALSE(fs::exists(output / "mine-state" / "optimizer.bin.tmp.7"));
  EXPECT_TRUE(fs::exists(output / "mine.safetensors"));
  EXPECT_TRUE(fs::exists(output / "notes.tmp.txt"));
  EXPECT_TRUE(fs::exists(output / ".tmp.1"));
  EXPECT_TRUE(fs::exists(root / "shared_cache" / "entry.tmp.99"));  // behind a symlink: not the job's
  EXPECT_TRUE(RemoveTempFiles(root / "missing").empty());
  fs::remove_all(root);
}

TEST(WorkerProcessTest, ReportsExitStatusStderrAndEventsFd) {
  auto worker = WorkerProcess::Start(
      {{"/bin/sh", "-c", "echo to-stderr >&2; printf 'abc' >&3; exit 7"}, {{"LORAD_X", "1"}}, ""});
  ASSERT_TRUE(worker.ok()) << worker.status();
  ExitInfo info = (*worker)->Wait();
  EXPECT_EQ(info.exit_code, 7);
  EXPECT_EQ(info.Describe(), "exit status 7");
  char buffer[64];
  EXPECT_EQ(read((*worker)->events_fd(), buffer, sizeof(buffer)), 3);
  ssize_t n = read((*worker)->stderr_fd(), buffer, sizeof(buffer));
  ASSERT_GT(n, 0);
  EXPECT_EQ(std::string(buffer, n), "to-stderr\n");
}

TEST(WorkerProcessTest, SigtermReachesTheWholeGroupAndSignalsAreNamed) {
  auto worker = WorkerProcess::Start({{"/bin/sh", "-c", "sleep 30 & wait"}, {}, ""});
  ASSERT_TRUE(worker.ok());
  usleep(100000);
  (*worker)->Signal(SIGTERM);
  ExitInfo info = (*worker)->Wait();
  EXPECT_EQ(info.term_signal, SIGTERM);
  EXPECT_EQ(info.Describe(), "killed by signal 15 (SIGTERM)");
  auto missing = WorkerProcess::Start({{"/nonexistent/lorad-train"}, {}, ""});
  ASSERT_TRUE(missing.ok());
  EXPECT_EQ((*missing)->Wait().exit_code, 127);
}

TEST(EventHubTest, ServesCachedAndStoredEventsAndWakesSubscribers) {
  const lorad::testing::ScopedTempDir dir_tmp("lorad_server_test_hub");
  fs::path dir = fs::canonical(dir_tmp.path());  // symlink-free, as confinement compares
  auto store = storage::JobStore::Open((dir / "db").string());
  ASSERT_TRUE(store.ok());
  storage::JobSpec spec;
  spec.name = "hub";
  spec.config_toml = "x = 1";
  auto job = (*store)->Submit(spec);
  ASSERT_TRUE(job.ok());
  EventHub hub(store->get());
  int wakes = 0;
  auto waker = hub.Subscribe(job->job.id, [&] { ++wakes; });
  for (int i = 0; i < 3; ++i) {
    storage::EventWrite write;
    write.event.mutable_progress()->set_step(i + 1);
    auto stored = (*store)->AppendEvent(job->job.id, write);
    ASSERT_TRUE(stored.ok());
    hub.Publish(*stored, false);
  }
  EXPECT_EQ(wakes, 3);
  auto all = hub.Fetch(job->job.id, 0, 100);  // seq 1 predates the cache: read from SQLite
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->events.size(), 4u);
  EXPECT_FALSE(all->done);
  auto cached = hub.Fetch(job->job.id, 2, 100);
  ASSERT_TRUE(cached.ok());
  ASSERT_EQ(cached->events.size(), 2u);
  EXPECT_EQ(cached->events[0].seq, 3);
  waker->Kill();
  hub.Unsubscribe(job->job.id, waker);
  hub.Shutdown();
  EXPECT_EQ(hub.Fetch(job->job.id, 0, 1).status().code(), absl::StatusCode::kUnavailable);
  fs::remove_all(dir);
}

TEST(AdviceTest, CountsImagesWithKohyaFolderRepeats) {
  const lorad::testing::ScopedTempDir dir_tmp("lorad_server_test_advice_counts");
  const fs::path dir = fs::canonical(dir_tmp.path());  // symlink-free, as confinement compares
  fs::create_directories(dir / "10_cat");
  fs::create_directories(dir / "misc");
  for (const char* name : {"10_cat/a.png", "10_cat/b.JPG", "10_cat/a.txt", "misc/c.webp", "notes.md"}) {
    std::ofstream(dir / name) << "x";
  }
  const planner::DatasetFacts facts = CountDatasetImages(dir);
  EXPECT_EQ(facts.image_count, 3);            // captions and notes are not images
  EXPECT_EQ(facts.images_with_repeats, 21);   // 2 x 10 + 1 x 1
  EXPECT_EQ(CountDatasetImages(fs::path()).image_count, 0);
  fs::remove_all(dir);
}

// A config as PrepareJobConfig hands it to the advisor: read by the trainer's parser.
train::TrainConfig Parsed(const std::string& toml) {
  auto config = train::ParseTrainOptions(toml, {});
  EXPECT_TRUE(config.ok()) << config.status();
  return config.ok() ? *config : train::TrainConfig();
}

SubmitAdviceInput AdviceFor(const std::string& toml, bool force = false) {
  SubmitAdviceInput input;
  input.config = Parsed(toml);
  input.force = force;
  return input;
}

TEST(AdviceTest, NeverRulesBlockUnlessForcedAndWarningsDoNot) {
  const std::string came_high = "optimizer_type = \"came_pytorch.CAME\"\nlearning_rate = 5e-4\n";
  const planner::AdviceReport refused = AdviseSubmit(AdviceFor(came_high));
  EXPECT_TRUE(refused.blocking());
  EXPECT_NE(DescribeNeverFindings(refused).find("never-came-high-lr"), std::string::npos);
  const planner::AdviceReport forced = AdviseSubmit(AdviceFor(came_high, /*force=*/true));
  EXPECT_FALSE(forced.blocking());
  EXPECT_FALSE(forced.never_findings().empty());  // still attached as warnings

  const planner::AdviceReport fine = AdviseSubmit(AdviceFor("optimizer_type = \"AdamW\"\nlearning_rate = 1e-4\n"));
  EXPECT_FALSE(fine.blocking());
  EXPECT_TRUE(fine.never_findings().empty());
}

bool Fired(const planner::AdviceReport& report, const std::string& rule_id) {
  for (const auto& finding : report.findings) {
    if (finding.rule_id == rule_id) return true;
  }
  return false;
}

// An uploaded dataset's curation report (lorad-curate --json, as SubmitJob keeps
// it) reaches the rules with the job's kind; a dataset_config resolved by
// PrepareJobConfig then decides keep_tokens and the repeats.
TEST(AdviceTest, TheCurationReportAndTheDatasetConfigReachTheAdvisor) {
  const lorad::testing::ScopedTempDir root_tmp("lorad_server_test_advice_report");
  const fs::path root = fs::canonical(root_tmp.path());
  JobRoots roots{root / "models", root / "datasets", {}};
  fs::create_directories(roots.models_root);
  const fs::path dataset = roots.datasets_root / "abc123";
  fs::create_directories(dataset / "img");
  for (int i = 0; i < 3; ++i) std::ofstream(dataset / "img" / absl::StrCat(i, ".png")) << "x";

  const std::string report = R"({
    "images": 240, "train_images_with_repeats": 240,
    "exact_duplicates": [["a.png", "b.png"]], "near_duplicates": [],
    "below_512": [{"path": "s.png", "width": 300, "height": 300}], "below_1024": [],
    "booru_captions": 240, "natural_captions": 0,
    "captions_from_files": 240, "caption_heads": [{"tag": "mvc style", "position": 1, "count": 240}]
  })";
  const fs::path cache = CurationCachePath(root / "data", "abc123");
  ASSERT_TRUE(WriteCurationCache(cache, report).ok());
  EXPECT_EQ(ReadCurationCache(cache), report);
  EXPECT_EQ(ReadCurationCache(root / "data" / "curation" / "none.json"), "");

  const std::string config =
      "pretrained_model_name_or_path = \"sdxl.safetensors\"\noptimizer_type = \"AdamW8bit\"\n"
      "learning_rate = 1e-4\nnetwork_train_unet_only = true\ntrain_batch_size = 4\nmax_train_epochs = 10\n"
      "shuffle_caption = true\n";
  JobConfigInput job{config, "", dataset, root / "jobs" / "1"};
  auto prepared = PrepareJobConfig(job, roots);
  ASSERT_TRUE(prepared.ok()) << prepared.status();
  SubmitAdviceInput input;
  input.config = prepared->train;
  input.dataset_dir = dataset;
  input.curation_json = ReadCurationCache(cache);
  input.kind = planner::TrainingKind::kStyle;
  planner::AdviceReport advice = AdviseSubmit(input);
  EXPECT_EQ(advice.computed_steps, 600);  // 240 images / batch 4 x 10 epochs: the report's count
  for (const char* rule : {"dataset-duplicates", "dataset-low-res", "keep-tokens-trigger", "style-large-adamw-lr",
                           "style-steps"}) {
    EXPECT_TRUE(Fired(advice, rule)) << rule << "\n" << planner::RenderText(advice);
  }
  // Without the report only the folder's 3 images are known: the style rules for
  // large sets and the curation rules stay silent.
  input.curation_json.clear();
  advice = AdviseSubmit(input);
  EXPECT_FALSE(Fired(advice, "dataset-duplicates"));
  EXPECT_FALSE(Fired(advice, "style-large-adamw-lr"));
  EXPECT_FALSE(Fired(advice, "keep-tokens-trigger"));
  // A report that is not one: the folder is counted instead.
  input.curation_json = "{not json";
  EXPECT_EQ(SubmitDatasetFacts(input).image_count, 3);

  // The dataset_config protects the trigger (keep_tokens = 1) and sets the repeats.
  job.dataset_config_toml = "[[datasets]]\n[[datasets.subsets]]\nimage_dir = \"img\"\nnum_repeats = 20\nkeep_tokens = 1\n";
  prepared = PrepareJobConfig(job, roots);
  ASSERT_TRUE(prepared.ok()) << prepared.status();
  ASSERT_TRUE(prepared->datasets.has_value());
  input.config = prepared->train;
  input.dataset_config = prepared->datasets;
  input.curation_json = report;
  const planner::DatasetFacts facts = SubmitDatasetFacts(input);
  EXPECT_EQ(facts.keep_tokens, 1);
  EXPECT_EQ(facts.shuffle_caption, true);  // the config's, inherited by the subset
  EXPECT_EQ(facts.images_with_repeats, 60);  // 3 images x 20
  advice = AdviseSubmit(input);
  EXPECT_FALSE(Fired(advice, "keep-tokens-trigger")) << planner::RenderText(advice);
  EXPECT_TRUE(Fired(advice, "dataset-duplicates"));
}

// SubmitJob (and each sweep job) prepares the config with PrepareJobConfig: a
// bad value is refused there, with the message lorad-train would print for the
// same file (LoadTrainConfig adds only the file name in front).
TEST(JobConfigTest, BadValuesAreRefusedWithTheTrainersMessage) {
  const lorad::testing::ScopedTempDir root_tmp("lorad_server_test_jobconfig_values");
  fs::path root = fs::canonical(root_tmp.path());  // symlink-free, as confinement compares
  JobRoots roots{root / "models", root / "datasets", {}};
  fs::create_directories(roots.models_root);
  fs::create_directories(roots.datasets_root / "cats");
  const std::string base = "pretrained_model_name_or_path = \"tiny.safetensors\"\n";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"network_dim = \"abc\"\n", "config key 'network_dim': bad value \"abc\"; expected an integer"},
      {"learning_rate = -1\n", "config key 'learning_rate': bad value \"-1\"; expected a value from 0 to 1000"},
      {"mixed_precision = \"fp8\"\n",
       "config key 'mixed_precision': bad value \"fp8\"; expected one of no, fp16, bf16"},
      {"full_bf16 = true\n", "config key 'full_bf16' needs mixed_precision = \"bf16\""},
  };
  for (const auto& [bad, message] : cases) {
    auto merged = ApplyOverrides(base + bad, {});
    ASSERT_TRUE(merged.ok()) << merged.status();
    JobConfigInput input{*merged, "", roots.datasets_root / "cats", root / "jobs" / "1"};
    auto prepared = PrepareJobConfig(input, roots);
    ASSERT_EQ(prepared.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_EQ(prepared.status().message(), message);

    // lorad-train's reading of the file the worker would get.
    const fs::path file = root / "config.toml";
    std::ofstream(file) << *merged << "train_data_dir = \"" << (roots.datasets_root / "cats").string() << "\"\n";
    auto trainer = train::LoadTrainConfig(file, {});
    ASSERT_FALSE(trainer.ok());
    EXPECT_EQ(trainer.status().message(), absl::StrCat(file.string(), ": ", message));
  }
  // An override is checked the same way.
  auto merged = ApplyOverrides(base, {{"network_dim", "\"abc\""}});
  ASSERT_TRUE(merged.ok()) << merged.status();
  JobConfigInput input{*merged, "", roots.datasets_root / "cats", root / "jobs" / "1"};
  EXPECT_EQ(PrepareJobConfig(input, roots).status().message(),
            "config key 'network_dim': bad value \"abc\"; expected an integer");
  // No dataset at all: refused now, not when the worker starts.
  input = JobConfigInput{base, "", fs::path(), root / "jobs" / "1"};
  EXPECT_EQ(PrepareJobConfig(input, roots).status().code(), absl::StatusCode::kInvalidArgument);
  // A dataset config counts as the dataset (the worker gets --dataset_config),
  // and the daemon's path for it is not a hyperparameter.
  input.dataset_config_toml = "[[datasets]]\n[[datasets.subsets]]\nimage_dir = \"cats\"\n";
  auto with_dataset_config = PrepareJobConfig(input, roots);
  ASSERT_TRUE(with_dataset_config.ok()) << with_dataset_config.status();
  EXPECT_EQ(with_dataset_config->train.dataset_config, DatasetConfigPath(root / "jobs" / "1").string());
  EXPECT_FALSE(with_dataset_config->hyperparameters.contains("dataset_config"));
  fs::remove_all(root);
}

// Issue 12: the whole job is read by the trainer's parsers at submit, so a bad
// value anywhere (config, network_args, dataset config) is INVALID_ARGUMENT
// naming the key, not a worker failing later.
TEST(JobConfigTest, EveryPartOfTheJobIsParsedAtSubmit) {
  const lorad::testing::ScopedTempDir root_tmp("lorad_server_test_jobconfig_whole");
  const fs::path root = fs::canonical(root_tmp.path());
  JobRoots roots{root / "models", root / "datasets", {}};
  fs::create_directories(roots.models_root);
  fs::create_directories(roots.datasets_root / "cats" / "img");
  const std::string base = "pretrained_model_name_or_path = \"tiny.safetensors\"\n";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"learning_rate = \"abc\"\n", "learning_rate"},
      {"lr_scheduler = \"bogus\"\n", "lr_scheduler"},
      {"network_dim = -3\n", "network_dim"},
      {"network_args = [\"dora_wd=maybe\"]\n", "dora_wd"},
      {"network_args = [\"algo=dora\"]\n", "algo"},
      {"network_args = [\"colour=red\"]\n", "colour"},
  };
  for (const auto& [bad, key] : cases) {
    JobConfigInput input{base + bad, "", roots.datasets_root / "cats", root / "jobs" / "1"};
    auto prepared = PrepareJobConfig(input, roots);
    ASSERT_EQ(prepared.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(prepared.status().message().find(key), std::string::npos) << prepared.status();
  }
  // The guide's DoRA spelling is accepted.
  JobConfigInput input{base + "network_module = \"lycoris.kohya\"\nnetwork_args = [\"algo=lora\", \"use_dora=True\"]\n",
                       "", roots.datasets_root / "cats", root / "jobs" / "1"};
  ASSERT_TRUE(PrepareJobConfig(input, roots).ok());
  // The dataset config goes through core/data's parser.
  input.config_toml = base;
  input.dataset_config_toml = "[[datasets]]\n[[datasets.subsets]]\nimage_dir = \"img\"\nnum_repeats = \"many\"\n";
  auto prepared = PrepareJobConfig(input, roots);
  ASSERT_EQ(prepared.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(prepared.status().message().find("num_repeats"), std::string::npos) << prepared.status();
  input.dataset_config_toml = "[[datasets]]\nbatch_size = 2\n";
  prepared = PrepareJobConfig(input, roots);
  ASSERT_EQ(prepared.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(prepared.status().message().find("subsets"), std::string::npos) << prepared.status();
}

}  // namespace
}  // namespace lorad::server
