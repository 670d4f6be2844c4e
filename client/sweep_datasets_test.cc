// The sweep file's local dataset folders, found and rewritten (issue 13).
#include "client/sweep_datasets.h"

#include <fstream>

#include <gtest/gtest.h>

#include "core/base/testing/scoped_temp_dir.h"
#include "core/planner/sweep.h"

namespace lorad::client {
namespace {

namespace fs = std::filesystem;

TEST(SweepDatasetsTest, FindsLocalFoldersAndRewritesOnlyThem) {
  lorad::testing::ScopedTempDir dir("lorad_sweep_datasets_test");
  fs::create_directories(dir.path() / "data" / "cats");
  fs::create_directories(dir.path() / "dögs");
  std::ofstream(dir.path() / "data" / "cats" / "1.txt") << "a cat";
  const std::string dogs = (dir.path() / "dögs").string();
  const std::string sweep =
      "# night sweep\n"
      "learning_rate = 1e-4\n"
      "dataset = 'data/cats'\n"
      "[sweep]\n"
      "learning_rate = [1e-4, 2e-4]\n"
      "dataset = [ \"data/cats\",\"0123456789abcdef0123456789abcdef\", \"" + dogs + "\" ]  # ids stay\n";
  auto entries = FindLocalDatasetEntries(sweep, dir.path());
  ASSERT_TRUE(entries.ok()) << entries.status();
  ASSERT_EQ(entries->size(), 3u);
  EXPECT_EQ((*entries)[0].value, "data/cats");
  EXPECT_EQ((*entries)[0].folder, fs::canonical(dir.path() / "data" / "cats"));
  EXPECT_EQ((*entries)[2].value, dogs);

  auto rewritten = RewriteDatasetEntries(sweep, *entries, {"id-cats", "id-cats", "id-dogs"});
  ASSERT_TRUE(rewritten.ok()) << rewritten.status();
  EXPECT_EQ(*rewritten,
            "# night sweep\n"
            "learning_rate = 1e-4\n"
            "dataset = \"id-cats\"\n"
            "[sweep]\n"
            "learning_rate = [1e-4, 2e-4]\n"
            "dataset = [ \"id-cats\",\"0123456789abcdef0123456789abcdef\", \"id-dogs\" ]  # ids stay\n");
  // The sweep still expands in the same order, with readable job names.
  auto plan = planner::ParseSweep(*rewritten, {{"id-cats", "cats"}, {"id-dogs", "dögs"}});
  ASSERT_TRUE(plan.ok()) << plan.status();
  ASSERT_EQ(plan->jobs.size(), 6u);
  EXPECT_EQ(plan->varied_keys[0], "learning_rate");
  EXPECT_EQ(plan->jobs[0].dataset, "id-cats");
  EXPECT_EQ(plan->jobs[0].name, "lr-1e-4_ds-cats");
  EXPECT_EQ(plan->jobs[1].name, "lr-1e-4_ds-0123456789abcdef01234567");
}

TEST(SweepDatasetsTest, RefusesWhatItCannotRewriteSafely) {
  lorad::testing::ScopedTempDir dir("lorad_sweep_datasets_test");
  fs::create_directories(dir.path() / "cats");
  const std::string sweep = "[sweep]\ndataset = [\"\"\"cats\"\"\"]\nlearning_rate = [1e-4]\n";
  auto entries = FindLocalDatasetEntries(sweep, dir.path());
  ASSERT_TRUE(entries.ok());
  ASSERT_EQ(entries->size(), 1u);
  auto rewritten = RewriteDatasetEntries(sweep, *entries, {"id"});
  ASSERT_FALSE(rewritten.ok());
  EXPECT_NE(rewritten.status().message().find("loractl datasets upload"), std::string::npos);
  EXPECT_FALSE(FindLocalDatasetEntries("[sweep\n", dir.path()).ok());
}

}  // namespace
}  // namespace lorad::client
