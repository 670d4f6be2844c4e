// The curation report finds exactly the problems planted in a generated dataset.
#include "core/data/curation.h"

#include <sys/wait.h>

#include <cstdio>
#include <iostream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "core/data/test_images.h"

namespace lorad::data {
namespace {

namespace fs = std::filesystem;

// Smooth random blobs: unrelated seeds give unrelated perceptual hashes.
cv::Mat Blobs(int w, int h, uint64_t seed) {
  cv::Mat small(12, 12, CV_8UC3);
  cv::RNG rng(seed);
  rng.fill(small, cv::RNG::UNIFORM, 0, 256);
  cv::Mat big;
  cv::resize(small, big, cv::Size(w, h), 0, 0, cv::INTER_CUBIC);
  return big;
}

struct PlantedCuration {
  testing::TempDir tmp;
  fs::path sub;
  PlantedCuration() {
    sub = tmp.path() / "train" / "5_chara";
    fs::create_directories(sub);
    const cv::Mat base = Blobs(600, 600, 1);
    testing::WriteImage(sub / "img01.png", base);
    fs::copy_file(sub / "img01.png", sub / "img02.png");  // exact duplicate
    cv::Mat near;
    cv::resize(base, near, cv::Size(580, 580), 0, 0, cv::INTER_AREA);
    testing::WriteImage(sub / "img03.jpg", near);  // re-encoded + slightly resized
    testing::WriteImage(sub / "img04.png", Blobs(300, 400, 2));    // low resolution
    testing::WriteImage(sub / "img05.png", Blobs(1100, 1200, 3));  // no caption
    testing::WriteImage(sub / "img06.png", Blobs(640, 700, 4));    // empty caption
    testing::WriteTruncatedJpeg(sub / "img07.jpg", Blobs(640, 640, 5));
    testing::WriteText(sub / "img01.txt", "chara, 1girl, red hair, smile");
    testing::WriteText(sub / "img02.txt", "chara, 1girl, red hair, smile");
    testing::WriteText(sub / "img03.txt", "chara, 1girl, red hair, looking at viewer");
    testing::WriteText(sub / "img04.txt", "A photo of a girl with red hair standing in a park.");
    testing::WriteText(sub / "img06.txt", "\n");
    testing::WriteText(sub / "img07.txt", "chara, broken");
  }
  DatasetArgs Args() const {
    DatasetArgs a;
    a.train_data_dir = tmp.path() / "train";
    a.subset_defaults.caption_extension = ".txt";
    a.subset_defaults.keep_tokens = 1;
    a.resolution_width = a.resolution_height = 512;
    a.enable_bucket = true;
    a.train_batch_size = 2;
    return a;
  }
};

std::string Name(const std::string& path) { return fs::path(path).filename().string(); }

TEST(Curation, FindsExactlyThePlantedProblems) {
  PlantedCuration p;
  auto ds = Dataset::Open(p.Args());
  ASSERT_TRUE(ds.ok()) << ds.status();
  auto r = BuildCurationReport(**ds, CurationOptions{.near_threshold = 8, .top_tags = 3});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->images, 6);
  ASSERT_EQ(r->subsets.size(), 1u);
  EXPECT_EQ(r->subsets[0].images, 6);
  EXPECT_EQ(r->subsets[0].with_repeats, 30);
  EXPECT_EQ(r->train_with_repeats, 30);
  EXPECT_EQ(r->steps_per_epoch, (*ds)->num_batches_per_epoch());
  ASSERT_EQ(r->unreadable_files.size(), 1u);
  EXPECT_NE(r->unreadable_files[0].find("img07.jpg"), std::string::npos);
  ASSERT_EQ(r->exact_duplicates.size(), 1u);
  ASSERT_EQ(r->exact_duplicates[0].size(), 2u);
  EXPECT_EQ(Name(r->exact_duplicates[0][0]), "img01.png");
  EXPECT_EQ(Name(r->exact_duplicates[0][1]), "img02.png");
  ASSERT_EQ(r->near_duplicates.size(), 2u);  // img03 ~ img01 and img03 ~ img02
  for (const auto& pair : r->near_duplicates) {
    EXPECT_TRUE(Name(pair.a) == "img03.jpg" || Name(pair.b) == "img03.jpg") << pair.a << " ~ " << pair.b;
    EXPECT_LE(pair.distance, 8);
  }
  ASSERT_EQ(r->below_512.size(), 1u);
  EXPECT_EQ(Name(r->below_512[0].path), "img04.png");
  EXPECT_EQ(r->below_1024.size(), 5u);  // all but img05
  ASSERT_EQ(r->missing_captions.size(), 1u);
  EXPECT_EQ(Name(r->missing_captions[0]), "img05.png");
  ASSERT_EQ(r->empty_captions.size(), 1u);
  EXPECT_EQ(Name(r->empty_captions[0]), "img06.png");
  EXPECT_TRUE(r->unreadable_captions.empty());
  EXPECT_EQ(r->booru_captions, 3);
  EXPECT_EQ(r->natural_captions, 1);
  EXPECT_TRUE(r->mixed_caption_styles);
  ASSERT_EQ(r->top_tags.size(), 3u);
  EXPECT_EQ(r->top_tags[0].second, 3);
  // The leading tags of every caption file, for the advisor's trigger check:
  // "chara" opens 3 of the 4 read captions (img04's is a sentence, img06's empty,
  // img07 is skipped); ties are ordered by position.
  ASSERT_GE(r->caption_heads.size(), 3u);
  EXPECT_EQ(r->caption_heads[0].tag, "chara");
  EXPECT_EQ(r->caption_heads[0].position, 1);
  EXPECT_EQ(r->caption_heads[0].count, 3);
  EXPECT_EQ(r->caption_heads[1].tag, "1girl");
  EXPECT_EQ(r->caption_heads[1].position, 2);
  EXPECT_EQ(r->caption_heads[1].count, 3);
  EXPECT_EQ(r->caption_heads[2].tag, "red hair");
  EXPECT_EQ(r->captions_from_files, 4);
  ASSERT_FALSE(r->keep_tokens_preview.empty());
  EXPECT_EQ(r->keep_tokens_preview[0].kept, "chara");
  EXPECT_EQ(r->keep_tokens_preview[0].rest, "1girl, red hair, smile");
  int64_t bucketed = 0;
  for (const auto& b : r->buckets) bucketed += b.count;
  EXPECT_EQ(bucketed, 30);

  const std::string text = r->ToText();
  EXPECT_NE(text.find("MIXED"), std::string::npos);
  EXPECT_NE(text.find("img07.jpg"), std::string::npos);
  const auto json = nlohmann::json::parse(r->ToJson());
  EXPECT_EQ(json["near_duplicates"].size(), 2u);
  EXPECT_EQ(json["mixed_caption_styles"], true);

  // A stricter threshold drops the near pairs; a batch size override changes steps.
  auto strict = BuildCurationReport(**ds, CurationOptions{.batch_size = 1, .near_threshold = 0});
  ASSERT_TRUE(strict.ok());
  EXPECT_LE(strict->near_duplicates.size(), 2u);
  EXPECT_EQ(strict->steps_per_epoch, 30);
}

// lorad-curate sits next to this test binary.
std::string RunCurate(const std::string& args, int* exit_code) {
  const fs::path tool = fs::read_symlink("/proc/self/exe").parent_path() / "lorad-curate";
  std::string out;
  FILE* f = ::popen(("'" + tool.string() + "' " + args + " 2>&1").c_str(), "r");
  if (f == nullptr) return out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), f)) > 0) out.append(buf, n);
  const int status = ::pclose(f);
  *exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return out;
}

TEST(Curation, ToolPrintsTextAndJson) {
  PlantedCuration p;
  const std::string dir = "'" + (p.tmp.path() / "train").string() + "'";
  int code = -1;
  const std::string text = RunCurate(dir + " --caption-extension .txt --batch-size 2 --top-tags 5 --keep-tokens 1", &code);
  EXPECT_EQ(code, 0) << text;
  EXPECT_NE(text.find("Exact duplicates: 1"), std::string::npos) << text;
  EXPECT_NE(text.find("Near duplicates (pHash distance <= 8): 2"), std::string::npos) << text;
  EXPECT_NE(text.find("img07.jpg"), std::string::npos) << text;
  EXPECT_NE(text.find("[chara] | 1girl, red hair, smile"), std::string::npos) << text;
  std::cout << text;  // the planted dataset's report, for the record
  const std::string json = RunCurate(dir + " --json --caption-extension .txt --near-threshold 0", &code);
  EXPECT_EQ(code, 0) << json;
  const auto j = nlohmann::json::parse(json.substr(json.find('{')));
  EXPECT_EQ(j["exact_duplicates"].size(), 1u);
  const std::string missing = RunCurate("'" + (p.tmp.path() / "nowhere").string() + "'", &code);
  EXPECT_EQ(code, 1);
  EXPECT_NE(missing.find("nowhere"), std::string::npos) << missing;
  RunCurate(dir + " --batch-size zero", &code);
  EXPECT_EQ(code, 2);
}

TEST(Curation, CaptionStyleClassifier) {
  EXPECT_EQ(ClassifyCaptionStyle("1girl, solo, long hair, smile"), "booru");
  EXPECT_EQ(ClassifyCaptionStyle("long_hair blue_eyes"), "short");
  EXPECT_EQ(ClassifyCaptionStyle("A woman with long hair smiling at the camera."), "natural");
  EXPECT_EQ(ClassifyCaptionStyle("sks"), "short");
}

TEST(Curation, MissingDatasetIsAClearError) {
  testing::TempDir tmp;
  DatasetArgs a;
  a.train_data_dir = tmp.path() / "absent";
  auto r = BuildCurationReport(a, {});
  ASSERT_FALSE(r.ok());
  EXPECT_NE(std::string(r.status().message()).find("absent"), std::string::npos);
}

}  // namespace
}  // namespace lorad::data
