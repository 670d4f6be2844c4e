// DeleteDataset's steps on a real SQLite store and real folders: what a name
// may mean, what is refused (traversal, symlinks, datasets jobs still read),
// and that nothing outside the datasets root is ever touched.
#include "server/dataset_delete.h"

#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/base/testing/scoped_temp_dir.h"
#include "server/disk_cleanup.h"

namespace lorad::server {
namespace {
namespace fs = std::filesystem;

std::string ReadFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

class DatasetDeleteTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::canonical(tmp_.path());  // symlink-free, as confinement compares
    roots_ = JobRoots{root_ / "models", root_ / "datasets", {}};
    fs::create_directories(roots_.models_root);
    fs::create_directories(roots_.datasets_root);
    fs::create_directories(root_ / "outside");
    std::ofstream(root_ / "outside" / "sentinel.txt") << "keep me";
    auto store = storage::JobStore::Open((root_ / "lorad.db").string());
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::move(*store);
  }
  void TearDown() override { store_.reset(); }

  // An uploaded dataset as UploadDataset stores it: <datasets>/<id>, with a record.
  storage::DatasetRecord Upload(const std::string& id, const std::string& name) {
    const fs::path folder = roots_.datasets_root / id;
    fs::create_directories(folder / "10_cat");
    std::ofstream(folder / "10_cat" / "a.png") << "12345";
    std::ofstream(folder / "10_cat" / "a.txt") << "cat";
    auto stored = store_->PutDataset({id, name, folder.string(), 8, 2, 1, 0});
    EXPECT_TRUE(stored.ok()) << stored.status();
    return *stored;
  }

  int64_t Queue(const std::string& dataset, const std::string& config_extra = "",
                const std::string& dataset_config = "") {
    storage::JobSpec spec;
    spec.name = "job";
    spec.dataset = dataset;
    spec.config_toml = absl::StrCat("pretrained_model_name_or_path = \"tiny.safetensors\"\n", config_extra);
    spec.dataset_config_toml = dataset_config;
    auto result = store_->Submit(spec);
    EXPECT_TRUE(result.ok()) << result.status();
    return result->job.id;
  }

  absl::StatusOr<DeletedDataset> Delete(const std::string& name) {
    return DeleteStoredDataset(store_.get(), roots_, root_ / "jobs", name);
  }

  void ExpectOutsideIntact() {
    EXPECT_EQ(ReadFile(root_ / "outside" / "sentinel.txt"), "keep me");
  }

  lorad::testing::ScopedTempDir tmp_{"lorad_server_test_delete"};
  fs::path root_;
  JobRoots roots_;
  std::unique_ptr<storage::JobStore> store_;
};

TEST_F(DatasetDeleteTest, DeletesRecordAndFolderByIdHidingItFirst) {
  const auto kept = Upload("bbbb2222", "dogs");
  Upload("aaaa1111", "cats");
  auto deleted = Delete("aaaa1111");
  ASSERT_TRUE(deleted.ok()) << deleted.status();
  EXPECT_EQ(deleted->dataset.id, "aaaa1111");
  EXPECT_EQ(deleted->dataset.name, "cats");
  // Out of the listing and out of its place at once; the files wait, hidden, in the root.
  EXPECT_EQ(store_->GetDataset("aaaa1111").status().code(), absl::StatusCode::kNotFound);
  ASSERT_EQ(store_->ListDatasets()->size(), 1u);
  EXPECT_EQ(store_->ListDatasets()->at(0).id, kept.id);
  EXPECT_FALSE(fs::exists(roots_.datasets_root / "aaaa1111"));
  ASSERT_FALSE(deleted->hidden.empty());
  EXPECT_EQ(deleted->hidden.parent_path(), roots_.datasets_root);
  EXPECT_TRUE(absl::StartsWith(deleted->hidden.filename().string(), kDeletingPrefix)) << deleted->hidden;
  EXPECT_EQ(ReadFile(deleted->hidden / "10_cat" / "a.png"), "12345");

  auto freed = RemoveHiddenDataset(deleted->hidden);
  ASSERT_TRUE(freed.ok()) << freed.status();
  EXPECT_EQ(*freed, 8);
  EXPECT_FALSE(fs::exists(deleted->hidden));
  EXPECT_TRUE(fs::exists(roots_.datasets_root / kept.id / "10_cat" / "a.png"));
}

TEST_F(DatasetDeleteTest, UnknownNameIsNotFoundNamingIt) {
  Upload("aaaa1111", "cats");
  auto deleted = Delete("no-such-dataset");
  ASSERT_EQ(deleted.status().code(), absl::StatusCode::kNotFound) << deleted.status();
  EXPECT_TRUE(absl::StrContains(deleted.status().message(), "\"no-such-dataset\"")) << deleted.status();
  EXPECT_EQ(store_->ListDatasets()->size(), 1u);
}

TEST_F(DatasetDeleteTest, TraversalAndHiddenNamesAreRefusedAndNothingOutsideIsTouched) {
  Upload("aaaa1111", "cats");
  fs::create_directories(roots_.datasets_root / ".incoming-77");
  for (const std::string& name : std::vector<std::string>{
           "", ".", "..", "../outside", "a/../../outside", "aaaa1111/../../outside", (root_ / "outside").string(),
           "/", "aaaa1111/10_cat", ".incoming-77", ".deleting-x", "a\\b", std::string("a\0b", 3)}) {
    auto deleted = Delete(name);
    EXPECT_EQ(deleted.status().code(), absl::StatusCode::kInvalidArgument) << "'" << name << "': " << deleted.status();
  }
  ExpectOutsideIntact();
  EXPECT_TRUE(fs::exists(roots_.datasets_root / ".incoming-77"));
  EXPECT_TRUE(fs::exists(roots_.datasets_root / "aaaa1111" / "10_cat" / "a.png"));
  EXPECT_EQ(store_->ListDatasets()->size(), 1u);
}

TEST_F(DatasetDeleteTest, SymlinksInTheRootAreRefusedNeverFollowed) {
  // A link in the root pointing out, one pointing at another dataset, and a
  // record whose folder was replaced by a link.
  fs::create_directory_symlink(root_ / "outside", roots_.datasets_root / "escape");
  const auto cats = Upload("aaaa1111", "cats");
  fs::create_directory_symlink(roots_.datasets_root / "aaaa1111", roots_.datasets_root / "alias");
  const auto dogs = Upload("bbbb2222", "dogs");
  fs::remove_all(dogs.path);
  fs::create_directory_symlink(root_ / "outside", dogs.path);
  for (const std::string name : {"escape", "alias", "bbbb2222", "dogs"}) {
    auto deleted = Delete(name);
    ASSERT_EQ(deleted.status().code(), absl::StatusCode::kPermissionDenied) << name << ": " << deleted.status();
    EXPECT_TRUE(absl::StrContains(deleted.status().message(), "symbolic link")) << deleted.status();
  }
  EXPECT_TRUE(absl::StrContains(Delete("escape").status().message(), "outside the root"));
  ExpectOutsideIntact();
  EXPECT_TRUE(fs::is_symlink(roots_.datasets_root / "escape"));
  EXPECT_TRUE(fs::is_symlink(roots_.datasets_root / "alias"));
  EXPECT_TRUE(fs::exists(roots_.datasets_root / "aaaa1111" / "10_cat" / "a.png"));
  EXPECT_EQ(store_->ListDatasets()->size(), 2u);

  // A link inside a deleted dataset goes with it; what it points at stays.
  fs::create_directory_symlink(root_ / "outside", fs::path(cats.path) / "link_out");
  auto deleted = Delete("aaaa1111");
  ASSERT_TRUE(deleted.ok()) << deleted.status();
  auto freed = RemoveHiddenDataset(deleted->hidden);
  ASSERT_TRUE(freed.ok()) << freed.status();
  EXPECT_EQ(*freed, 8);  // the link's target is not counted
  EXPECT_FALSE(fs::exists(deleted->hidden));
  ExpectOutsideIntact();
}

TEST_F(DatasetDeleteTest, DatasetsThatActiveJobsReadAreRefusedNamingTheJobs) {
  Upload("aaaa1111", "cats");
  Upload("bbbb2222", "dogs");
  Upload("cccc3333", "birds");
  Upload("dddd4444", "fish");
  const int64_t by_id = Queue("aaaa1111");
  // A config path and a dataset config's image_dir (relative to the datasets root) read datasets too.
  const int64_t by_config = Queue("", "train_data_dir = \"bbbb2222/10_cat\"\n");
  const int64_t by_dataset_config =
      Queue("", "", "[[datasets]]\n[[datasets.subsets]]\nimage_dir = \"cccc3333/10_cat\"\n");
  // A finished job and a job on another dataset do not hold it.
  const int64_t other = Queue("dddd4444");
  ASSERT_TRUE(store_->RequestCancel(other, "done").ok());

  auto claimed = store_->ClaimNext(0);  // by_id is RUNNING now; the others stay QUEUED
  ASSERT_TRUE(claimed.ok() && claimed->has_value());
  ASSERT_EQ((*claimed)->id, by_id);
  for (const auto& [name, job] : std::vector<std::pair<std::string, int64_t>>{
           {"aaaa1111", by_id}, {"cats", by_id}, {"bbbb2222", by_config}, {"cccc3333", by_dataset_config}}) {
    auto deleted = Delete(name);
    ASSERT_EQ(deleted.status().code(), absl::StatusCode::kFailedPrecondition) << name << ": " << deleted.status();
    const std::string message(deleted.status().message());
    EXPECT_TRUE(absl::StrContains(message, absl::StrCat("job ", job, " 'job' ("))) << message;
    EXPECT_TRUE(absl::StrContains(message, "cancel")) << message;
    EXPECT_TRUE(absl::StrContains(message, "wait")) << message;
  }
  EXPECT_TRUE(absl::StrContains(Delete("cats").status().message(), "(RUNNING)")) << Delete("cats").status();
  EXPECT_EQ(store_->ListDatasets()->size(), 4u);
  EXPECT_TRUE(fs::exists(roots_.datasets_root / "bbbb2222" / "10_cat" / "a.png"));
  EXPECT_TRUE(Delete("dddd4444").ok());

  // Once the jobs end, the datasets go.
  for (int64_t job : {by_config, by_dataset_config}) ASSERT_TRUE(store_->RequestCancel(job, "test").ok());
  EXPECT_TRUE(Delete("bbbb2222").ok());
  EXPECT_TRUE(Delete("cccc3333").ok());
}

// What the reference check reads: every data path of a prepared job, confined and absolute.
TEST_F(DatasetDeleteTest, DataPathsListsWhatAPreparedJobReads) {
  Upload("aaaa1111", "cats");
  Upload("bbbb2222", "dogs");
  JobConfigInput input{"pretrained_model_name_or_path = \"tiny.safetensors\"\n"
                       "[section]\nreg_data_dir = \"../bbbb2222\"\n",  // relative to the job's dataset
                       "[[datasets]]\n[[datasets.subsets]]\nimage_dir = \"10_cat\"\n",
                       roots_.datasets_root / "aaaa1111", root_ / "jobs" / "1"};
  auto prepared = PrepareJobConfig(input, roots_);
  ASSERT_TRUE(prepared.ok()) << prepared.status();
  const std::vector<fs::path> paths = DataPaths(*prepared);
  EXPECT_EQ(paths, (std::vector<fs::path>{roots_.datasets_root / "bbbb2222",
                                          roots_.datasets_root / "aaaa1111" / "10_cat"}));
  // So a job on one dataset that also reads another holds both.
  const int64_t job = Queue("aaaa1111", "reg_data_dir = \"../bbbb2222\"\n");
  auto deleted = Delete("bbbb2222");
  ASSERT_EQ(deleted.status().code(), absl::StatusCode::kFailedPrecondition) << deleted.status();
  EXPECT_TRUE(absl::StrContains(deleted.status().message(), absl::StrCat("job ", job, " "))) << deleted.status();
}

TEST_F(DatasetDeleteTest, JobsOnTheWholeRootOrWithUnreadableConfigsHoldTheDataset) {
  Upload("aaaa1111", "cats");
  // kohya reads every folder under train_data_dir: the root holds them all.
  const int64_t whole_root = Queue("", absl::StrCat("train_data_dir = \"", roots_.datasets_root.string(), "\"\n"));
  auto deleted = Delete("aaaa1111");
  ASSERT_EQ(deleted.status().code(), absl::StatusCode::kFailedPrecondition) << deleted.status();
  EXPECT_TRUE(absl::StrContains(deleted.status().message(), absl::StrCat("job ", whole_root, " ")));
  ASSERT_TRUE(store_->RequestCancel(whole_root, "test").ok());
  // A config that no longer prepares still holds the folder it names.
  const int64_t broken = Queue("", "train_data_dir = \"aaaa1111\"\nlearning_rate = [1,\n");
  deleted = Delete("aaaa1111");
  ASSERT_EQ(deleted.status().code(), absl::StatusCode::kFailedPrecondition) << deleted.status();
  EXPECT_TRUE(absl::StrContains(deleted.status().message(), absl::StrCat("job ", broken, " ")));
}

TEST_F(DatasetDeleteTest, NamesFoldersAndRecordsOutsideTheRoot) {
  // A name (label) one dataset has deletes it; a shared one is ambiguous.
  Upload("aaaa1111", "cats");
  Upload("bbbb2222", "pets");
  Upload("cccc3333", "pets");
  auto by_label = Delete("cats");
  ASSERT_TRUE(by_label.ok()) << by_label.status();
  EXPECT_EQ(by_label->dataset.id, "aaaa1111");
  auto ambiguous = Delete("pets");
  ASSERT_EQ(ambiguous.status().code(), absl::StatusCode::kInvalidArgument) << ambiguous.status();
  EXPECT_TRUE(absl::StrContains(ambiguous.status().message(), "bbbb2222")) << ambiguous.status();
  EXPECT_TRUE(absl::StrContains(ambiguous.status().message(), "cccc3333")) << ambiguous.status();

  // A folder copied into the root by hand (no record), as SubmitJob may name it.
  fs::create_directories(roots_.datasets_root / "by_hand" / "1_x");
  std::ofstream(roots_.datasets_root / "by_hand" / "1_x" / "a.png") << "x";
  auto by_hand = Delete("by_hand");
  ASSERT_TRUE(by_hand.ok()) << by_hand.status();
  EXPECT_TRUE(by_hand->dataset.id.empty());
  EXPECT_EQ(by_hand->dataset.path, (roots_.datasets_root / "by_hand").string());
  EXPECT_FALSE(fs::exists(roots_.datasets_root / "by_hand"));
  std::ofstream(roots_.datasets_root / "notes.txt") << "x";
  EXPECT_EQ(Delete("notes.txt").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(fs::exists(roots_.datasets_root / "notes.txt"));

  // A record stored under another datasets root: the record goes, the folder stays.
  fs::create_directories(root_ / "outside" / "eeee5555");
  ASSERT_TRUE(store_->PutDataset({"eeee5555", "old", (root_ / "outside" / "eeee5555").string(), 1, 1, 1, 0}).ok());
  auto outside = Delete("eeee5555");
  ASSERT_TRUE(outside.ok()) << outside.status();
  EXPECT_TRUE(outside->hidden.empty());
  EXPECT_TRUE(fs::exists(root_ / "outside" / "eeee5555"));
  EXPECT_EQ(store_->GetDataset("eeee5555").status().code(), absl::StatusCode::kNotFound);
  // A record whose folder is already gone: only the record.
  auto gone = Upload("ffff6666", "gone");
  fs::remove_all(gone.path);
  auto missing = Delete("ffff6666");
  ASSERT_TRUE(missing.ok()) << missing.status();
  EXPECT_TRUE(missing->hidden.empty());
  ExpectOutsideIntact();
}

TEST(DiskCleanupTest, RemovesInterruptedDeletionsOnly) {
  const lorad::testing::ScopedTempDir root_tmp("lorad_server_test_cleanup_deleting");
  const fs::path datasets = fs::canonical(root_tmp.path()) / "datasets";
  fs::create_directories(datasets / ".deleting-00ff-cats" / "10_cat");
  std::ofstream(datasets / ".deleting-00ff-cats" / "10_cat" / "a.png") << "x";
  fs::create_directories(datasets / ".incoming-1");
  fs::create_directories(datasets / "0123abcd");
  fs::create_directories(root_tmp.path() / "outside");
  std::ofstream(root_tmp.path() / "outside" / "sentinel") << "x";
  fs::create_directory_symlink(root_tmp.path() / "outside", datasets / ".deleting-link");
  auto removed = RemoveInterruptedDeletions(datasets);
  EXPECT_EQ(removed.size(), 2u);
  EXPECT_FALSE(fs::exists(datasets / ".deleting-00ff-cats"));
  EXPECT_FALSE(fs::exists(fs::symlink_status(datasets / ".deleting-link")));
  EXPECT_TRUE(fs::exists(root_tmp.path() / "outside" / "sentinel"));  // the link went, not its target
  EXPECT_TRUE(fs::exists(datasets / ".incoming-1"));  // a live upload's, for all this function knows
  EXPECT_TRUE(fs::exists(datasets / "0123abcd"));
}

}  // namespace
}  // namespace lorad::server
