// cache_text_encoder_outputs_to_disk: the loop persists the frozen encoders'
// outputs through core/data's TextEncoderCache (one file per caption) and
// trains exactly as with the in-memory cache, also when reading them back.
#include <gtest/gtest.h>

#include <filesystem>
#include <map>
#include <set>

#include "absl/strings/str_cat.h"
#include "core/io/safetensors.h"
#include "core/train/dataset_glue.h"
#include "core/train/test_support.h"
#include "core/train/training_test_helpers.h"
#include "core/train/trainer.h"
#include "core/base/testing/scoped_temp_dir.h"

namespace lorad::train {
namespace {

using testing::ExpectBitIdentical;
using testing::FreshDir;
using testing::ReadLora;

int64_t CountFiles(const std::filesystem::path& dir) {
  int64_t n = 0;
  if (!std::filesystem::exists(dir)) return 0;
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir)) {
    n += e.is_regular_file() && e.path().extension() == ".safetensors";
  }
  return n;
}

TEST(TextEncoderDiskCacheTest, PersistsOneFilePerCaptionAndTrainsLikeTheMemoryCache) {
  testing::CaptionedImages data = testing::MakeShapesDataset(4, 64);
  const std::set<std::string> distinct(data.captions.begin(), data.captions.end());
  testing::MemoryBatchSource source(data, 4, 3);

  TrainConfig config = testing::TinySdxlConfig(FreshDir("memory"));
  config.max_train_steps = 3;
  config.cache_text_encoder_outputs = true;
  auto in_memory = Train(config, {&source, {}, {}});
  ASSERT_TRUE(in_memory.ok()) << in_memory.status();
  const auto reference = ReadLora(in_memory->final_lora);

  const auto cache_dir = FreshDir("disk") / "text_encoder_cache";
  config.cache_text_encoder_outputs = false;  // implied by the disk key, as in kohya
  config.cache_text_encoder_outputs_to_disk = true;
  TrainInputs inputs{&source, {}, {}};
  inputs.cache_text_encoder_outputs = DiskTextEncoderCacheHook(cache_dir);
  for (int run = 0; run < 2; ++run) {
    SCOPED_TRACE(run == 0 ? "filling the cache" : "reading the cache back");
    config.output_dir = FreshDir(absl::StrCat("disk_run", run)).string();
    auto on_disk = Train(config, inputs);
    ASSERT_TRUE(on_disk.ok()) << on_disk.status();
    EXPECT_EQ(CountFiles(cache_dir), static_cast<int64_t>(distinct.size()));
    ExpectBitIdentical(reference, ReadLora(on_disk->final_lora));
  }
}

}  // namespace
}  // namespace lorad::train
