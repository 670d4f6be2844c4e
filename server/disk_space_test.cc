// Free space and the full-disk note of a failed job's reason.
#include "server/disk_space.h"

#include <filesystem>
#include <limits>

#include <gtest/gtest.h>

#include "absl/strings/match.h"

namespace lorad::server {
namespace {

TEST(DiskSpaceTest, FullDiskNoteOnlyBelowTheThreshold) {
  const std::filesystem::path dir = "/srv/lorad/jobs";
  EXPECT_EQ(FullDiskNote(dir, kFullDiskBytes), "");
  EXPECT_EQ(FullDiskNote(dir, int64_t{10} << 30), "");
  const std::string note = FullDiskNote(dir, 4096);
  EXPECT_TRUE(absl::StrContains(note, "/srv/lorad/jobs is full (4096 bytes free)")) << note;
  EXPECT_TRUE(absl::StrContains(note, "free space there, then resubmit")) << note;
}

TEST(DiskSpaceTest, AvailableBytesReadsTheDiskAndUnknownIsUnlimited) {
  EXPECT_GT(AvailableBytes(std::filesystem::temp_directory_path()), 0);
  EXPECT_EQ(AvailableBytes("/nonexistent/lorad/disk"), std::numeric_limits<int64_t>::max());
  EXPECT_EQ(FullDiskNote("/nonexistent/lorad/disk"), "");
}

}  // namespace
}  // namespace lorad::server
