// DatasetFactsOf: what a folder dataset tells the saved LoRA's metadata, and
// the ss_* keys BuildLoraMetadata makes of it.
#include <gtest/gtest.h>

#include <filesystem>

#include "core/data/dataset.h"
#include "core/data/test_images.h"
#include "core/networks/metadata.h"
#include "core/train/dataset_glue.h"

namespace lorad::train {
namespace {

namespace fs = std::filesystem;

// train/2_sks dog: a.png "sks dog, Red", b.png (no caption: class tokens),
// 64x64 and 96x64; reg/1_dog: r.png 64x64.
struct Planted {
  data::testing::TempDir tmp;
  data::DatasetArgs Args() {
    const fs::path sub = tmp.path() / "train" / "2_sks dog";
    const fs::path reg = tmp.path() / "reg" / "1_dog";
    fs::create_directories(sub);
    fs::create_directories(reg);
    data::testing::WriteImage(sub / "a.png", data::testing::Drawing(64, 64, 1));
    data::testing::WriteImage(sub / "b.png", data::testing::Drawing(96, 64, 2));
    data::testing::WriteText(sub / "a.txt", "sks dog, Red");
    data::testing::WriteImage(reg / "r.png", data::testing::Drawing(64, 64, 3));
    data::DatasetArgs a;
    a.train_data_dir = tmp.path() / "train";
    a.reg_data_dir = tmp.path() / "reg";
    a.resolution_width = a.resolution_height = 64;
    a.enable_bucket = true;
    a.min_bucket_reso = 32;
    a.max_bucket_reso = 128;
    a.train_batch_size = 2;
    a.subset_defaults.caption_extension = ".txt";
    a.seed = 7;
    return a;
  }
};

TEST(DatasetFactsOf, CountsFoldersBucketsAndTags) {
  Planted p;
  auto ds = data::Dataset::Open(p.Args());
  ASSERT_TRUE(ds.ok()) << ds.status();
  const networks::DatasetFacts facts = DatasetFactsOf(**ds);
  EXPECT_EQ(facts.num_reg_images, 4);
  ASSERT_EQ(facts.groups.size(), 1u);
  const auto& g = facts.groups[0];
  EXPECT_EQ(g.num_train_images, 4);
  EXPECT_EQ(g.num_reg_images, 4);
  ASSERT_EQ(g.subsets.size(), 2u);
  EXPECT_EQ(facts.tag_frequency.at("2_sks dog").at("red"), 1);
  EXPECT_EQ(facts.tag_frequency.at("2_sks dog").at("sks dog"), 2);

  TrainConfig config;
  networks::TrainingFacts run;
  run.dataset = facts;
  auto metadata = networks::BuildLoraMetadata(config, run);
  ASSERT_TRUE(metadata.ok()) << metadata.status();
  // The values kohya's train_network.py writes for this dataset.
  EXPECT_EQ(metadata->at("ss_num_reg_images"), "4");
  EXPECT_EQ(metadata->at("ss_tag_frequency"), R"({"1_dog":{"dog":1},"2_sks dog":{"red":1,"sks dog":2}})");
  EXPECT_EQ(metadata->at("ss_dataset_dirs"), R"({"2_sks dog":{"img_count":2,"n_repeats":2}})");
  EXPECT_EQ(metadata->at("ss_reg_dataset_dirs"), R"({"1_dog":{"img_count":1,"n_repeats":1}})");
  EXPECT_EQ(metadata->at("ss_bucket_info"),
            R"({"buckets":{"0":{"count":8,"resolution":[64,64]}},"mean_img_ar_error":0.16666666666666666})");
  EXPECT_EQ(
      metadata->at("ss_datasets"),
      R"([{"batch_size_per_device":2,"bucket_info":{"buckets":{"0":{"count":8,"resolution":[64,64]}},)"
      R"("mean_img_ar_error":0.16666666666666666},"enable_bucket":true,"is_dreambooth":true,"max_bucket_reso":128,)"
      R"("min_bucket_reso":32,"num_reg_images":4,"num_train_images":4,"resolution":[64,64],"subsets":[)"
      R"({"class_tokens":"sks dog","color_aug":false,"flip_aug":false,"image_dir":"2_sks dog","img_count":2,)"
      R"("is_reg":false,"keep_tokens":0,"keep_tokens_separator":"","num_repeats":2,"random_crop":false,)"
      R"("shuffle_caption":false},{"class_tokens":"dog","color_aug":false,"flip_aug":false,"image_dir":"1_dog",)"
      R"("img_count":1,"is_reg":true,"keep_tokens":0,"keep_tokens_separator":"","num_repeats":1,)"
      R"("random_crop":false,"shuffle_caption":false}],"tag_frequency":{"1_dog":{"dog":1},)"
      R"("2_sks dog":{"red":1,"sks dog":2}}}])");
}

// A folder name in another encoding (its class tokens become a tag) cannot go
// into the file's JSON header: the metadata names the key instead of writing a
// broken file.
TEST(DatasetFactsOf, FolderNameThatIsNotUtf8IsAnError) {
  data::testing::TempDir tmp;
  const fs::path sub = tmp.path() / "train" / "2_caf\xe9";
  fs::create_directories(sub);
  data::testing::WriteImage(sub / "a.png", data::testing::Drawing(64, 64, 1));
  data::DatasetArgs args;
  args.train_data_dir = tmp.path() / "train";
  args.resolution_width = args.resolution_height = 64;
  auto ds = data::Dataset::Open(args);
  ASSERT_TRUE(ds.ok()) << ds.status();
  networks::TrainingFacts run;
  run.dataset = DatasetFactsOf(**ds);
  auto metadata = networks::BuildLoraMetadata(TrainConfig(), run);
  ASSERT_FALSE(metadata.ok());
  EXPECT_EQ(metadata.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(metadata.status().message().find("ss_tag_frequency"), std::string::npos) << metadata.status();
}

}  // namespace
}  // namespace lorad::train
