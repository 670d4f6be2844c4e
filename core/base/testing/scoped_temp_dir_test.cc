#include "core/base/testing/scoped_temp_dir.h"

#include <filesystem>
#include <fstream>

#include <gtest/gtest-spi.h>
#include <gtest/gtest.h>

namespace lorad::testing {
namespace {

namespace fs = std::filesystem;

TEST(ScopedTempDirTest, CreatesAUniqueDirectoryUnderTheTempDir) {
  ScopedTempDir a("lorad_scoped_test");
  ScopedTempDir b("lorad_scoped_test");
  EXPECT_TRUE(fs::is_directory(a.path()));
  EXPECT_TRUE(fs::is_directory(b.path()));
  EXPECT_NE(a.path(), b.path());
  EXPECT_EQ(a.path().parent_path(), fs::temp_directory_path());
  EXPECT_EQ(a.path().filename().string().rfind("lorad_scoped_test_", 0), 0u);
  EXPECT_EQ(a / "x", a.path() / "x");
}

TEST(ScopedTempDirTest, RemovesEverythingInItOnDestruction) {
  fs::path kept;
  {
    ScopedTempDir dir("lorad_scoped_test");
    kept = dir.path();
    fs::create_directories(dir / "sub" / "deeper");
    std::ofstream(dir / "sub" / "deeper" / "file.txt") << "data";
    ASSERT_TRUE(fs::exists(dir / "sub" / "deeper" / "file.txt"));
  }
  EXPECT_FALSE(fs::exists(kept));
}

// The reason it exists: a failed ASSERT returns from the function early, and
// the directory must still go. (EXPECT_FATAL_FAILURE's statement cannot see
// locals, hence the global.)
fs::path g_seen;

void FailsAnAssert() {
  ScopedTempDir dir("lorad_scoped_test");
  g_seen = dir.path();
  std::ofstream(dir / "left.txt") << "x";
  ASSERT_TRUE(false) << "deliberate failure";
}

TEST(ScopedTempDirTest, AFailedAssertLeavesNothingBehind) {
  EXPECT_FATAL_FAILURE(FailsAnAssert(), "deliberate failure");
  ASSERT_FALSE(g_seen.empty());
  EXPECT_FALSE(fs::exists(g_seen));
}

TEST(ScopedTempDirTest, MovingTransfersOwnership) {
  ScopedTempDir first("lorad_scoped_test");
  const fs::path path = first.path();
  ScopedTempDir second(std::move(first));
  EXPECT_TRUE(first.path().empty());
  EXPECT_EQ(second.path(), path);
  ScopedTempDir third("lorad_scoped_test");
  const fs::path replaced = third.path();
  third = std::move(second);
  EXPECT_FALSE(fs::exists(replaced));  // the directory third held before is removed
  EXPECT_EQ(third.path(), path);
  EXPECT_TRUE(fs::is_directory(path));
}

}  // namespace
}  // namespace lorad::testing
