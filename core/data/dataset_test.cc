// Dataset sources, decoding, batches, prefetch, caches and bad input, on
// images generated here.
#include "core/data/dataset.h"

#include <set>

#include <gtest/gtest.h>

#include "core/data/cache.h"
#include "core/data/image_io.h"
#include "core/data/test_images.h"

namespace lorad::data {
namespace {

namespace fs = std::filesystem;
using testing::TempDir;

// train/10_sks dog: a.png (RGBA), b.jpg (EXIF orientation 6), c.png (16-bit),
// d.jpg (grayscale), e.jpg (truncated); reg/1_dog: r1.png, r2.png, r3.png.
struct Planted {
  TempDir tmp;
  fs::path train, reg, sub;
  Planted() {
    train = tmp.path() / "train";
    reg = tmp.path() / "reg";
    sub = train / "10_sks dog";
    fs::create_directories(sub);
    fs::create_directories(reg / "1_dog");
    cv::Mat rgba(64, 80, CV_8UC4, cv::Scalar(0, 0, 255, 255));
    rgba(cv::Rect(0, 0, 40, 64)).setTo(cv::Scalar(0, 0, 0, 0));  // left half transparent
    testing::WriteImage(sub / "a.png", rgba);
    testing::WriteJpegWithOrientation(sub / "b.jpg", testing::Drawing(96, 64, 1), 6);
    cv::Mat sixteen(70, 70, CV_16UC3, cv::Scalar(65535, 32896, 0));
    testing::WriteImage(sub / "c.png", sixteen);
    cv::Mat gray(64, 64, CV_8UC1, cv::Scalar(128));
    testing::WriteImage(sub / "d.jpg", gray);
    testing::WriteTruncatedJpeg(sub / "e.jpg", testing::Drawing(128, 128, 2));
    testing::WriteText(sub / "a.txt", "sks dog, red, transparent");
    testing::WriteText(sub / "c.txt", "sks dog, orange");
    testing::WriteText(sub / "d.txt", "sks dog, gray");
    for (int i = 1; i <= 3; ++i) {
      testing::WriteImage(reg / "1_dog" / ("r" + std::to_string(i) + ".png"), testing::Drawing(64, 64, 10 + i));
    }
  }
  DatasetArgs Args() const {
    DatasetArgs a;
    a.train_data_dir = train;
    a.reg_data_dir = reg;
    a.resolution_width = a.resolution_height = 64;
    a.train_batch_size = 2;
    a.subset_defaults.caption_extension = ".txt";
    a.subset_defaults.shuffle_caption = true;
    a.subset_defaults.keep_tokens = 1;
    a.prior_loss_weight = 0.5;
    a.seed = 1234;
    return a;
  }
};

TEST(ImageDecode, AlphaOnWhiteSixteenBitGrayAndExifOrientation) {
  Planted p;
  auto a = LoadImageRgb(p.sub / "a.png");
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->type(), CV_8UC3);
  EXPECT_EQ(a->at<cv::Vec3b>(10, 5), cv::Vec3b(255, 255, 255));  // transparent -> white
  EXPECT_EQ(a->at<cv::Vec3b>(10, 70), cv::Vec3b(255, 0, 0));     // opaque red (RGB)
  auto c = LoadImageRgb(p.sub / "c.png");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->type(), CV_8UC3);
  EXPECT_EQ(c->at<cv::Vec3b>(5, 5), cv::Vec3b(0, 128, 255));
  auto d = LoadImageRgb(p.sub / "d.jpg");
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->channels(), 3);
  EXPECT_NEAR(d->at<cv::Vec3b>(5, 5)[0], 128, 2);
  // EXIF orientation 6: stored 96x64, seen 64x96; pixels equal OpenCV's own
  // orientation handling (IMREAD_COLOR).
  auto bytes = ReadFileBytes(p.sub / "b.jpg");
  ASSERT_TRUE(bytes.ok());
  auto header = ParseImageHeader(*bytes, "b.jpg");
  ASSERT_TRUE(header.ok()) << header.status();
  EXPECT_EQ(header->orientation, 6);
  EXPECT_EQ(header->width, 64);
  EXPECT_EQ(header->height, 96);
  auto b = LoadImageRgb(p.sub / "b.jpg");
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(b->cols, 64);
  EXPECT_EQ(b->rows, 96);
  cv::Mat opencv = cv::imread((p.sub / "b.jpg").string(), cv::IMREAD_COLOR), opencv_rgb;
  ASSERT_EQ(opencv.cols, 64);
  cv::cvtColor(opencv, opencv_rgb, cv::COLOR_BGR2RGB);
  EXPECT_EQ(cv::norm(*b, opencv_rgb, cv::NORM_INF), 0.0);
  // Alpha AND orientation together (IMREAD_UNCHANGED ignores EXIF; we apply it):
  // stored 40x20 with a transparent left half, orientation 6 (90 deg clockwise)
  // -> 20x40 with the white (ex-transparent) half on top, opaque blue below.
  cv::Mat rgba2(20, 40, CV_8UC4, cv::Scalar(255, 0, 0, 255));
  rgba2(cv::Rect(0, 0, 20, 20)).setTo(cv::Scalar(0, 0, 0, 0));
  testing::WritePngWithOrientation(p.tmp.path() / "rot.png", rgba2, 6);
  auto rot = LoadImageRgb(p.tmp.path() / "rot.png");
  ASSERT_TRUE(rot.ok()) << rot.status();
  ASSERT_EQ(rot->size(), cv::Size(20, 40));
  EXPECT_EQ(rot->at<cv::Vec3b>(5, 10), cv::Vec3b(255, 255, 255));
  EXPECT_EQ(rot->at<cv::Vec3b>(35, 10), cv::Vec3b(0, 0, 255));
  // WebP and BMP: header sizes and pixels.
  for (const char* ext : {".webp", ".bmp"}) {
    const fs::path f = p.tmp.path() / (std::string("x") + ext);
    ASSERT_TRUE(cv::imwrite(f.string(), testing::Drawing(50, 30, 3), {cv::IMWRITE_WEBP_QUALITY, 101}));
    auto fb = ReadFileBytes(f);
    ASSERT_TRUE(fb.ok());
    auto fh = ParseImageHeader(*fb, f.string());
    ASSERT_TRUE(fh.ok()) << fh.status();
    EXPECT_EQ(fh->width, 50) << ext;
    EXPECT_EQ(fh->height, 30) << ext;
    auto img = LoadImageRgb(f);
    ASSERT_TRUE(img.ok()) << img.status();
    EXPECT_EQ(img->size(), cv::Size(50, 30));
  }
  // The truncated JPEG is reported, naming the file.
  auto e = LoadImageRgb(p.sub / "e.jpg");
  ASSERT_FALSE(e.ok());
  EXPECT_NE(std::string(e.status().message()).find("e.jpg"), std::string::npos);
  EXPECT_NE(std::string(e.status().message()).find("truncated"), std::string::npos);
}

TEST(DatasetSources, FolderRepeatsClassTokensRegRebalancingAndSkips) {
  Planted p;
  auto ds = Dataset::Open(p.Args());
  ASSERT_TRUE(ds.ok()) << ds.status();
  const Dataset& d = **ds;
  ASSERT_EQ(d.skipped().size(), 1u);
  EXPECT_NE(d.skipped()[0].find("e.jpg"), std::string::npos);
  EXPECT_EQ(d.num_train_images(), 40);  // 4 readable images x 10 repeats
  EXPECT_EQ(d.num_reg_images(), 40);    // 3 reg images rebalanced to match
  EXPECT_EQ(d.num_batches_per_epoch(), 40);  // one 64x64 bucket, 80 entries, batch 2
  std::map<std::string, std::string> captions;
  for (const auto& e : d.images()) captions[e.path.filename().string()] = e.caption;
  EXPECT_EQ(captions["a.png"], "sks dog, red, transparent");
  EXPECT_EQ(captions["b.jpg"], "sks dog");  // no caption file: class tokens
  // The tag frequency kohya records: once per image, lower-cased, class tokens included.
  const auto tags = d.TagFrequency();
  EXPECT_EQ(tags.at("10_sks dog").at("sks dog"), 4);
  EXPECT_EQ(tags.at("10_sks dog").at("red"), 1);
  EXPECT_EQ(tags.at("1_dog").at("dog"), 3);
  const auto buckets = d.bucket_stats();
  ASSERT_EQ(buckets.size(), 1u);
  EXPECT_EQ(buckets[0].width, 64);
  EXPECT_EQ(buckets[0].count, 80);
}

TEST(DatasetSources, TomlConfigKeysWarningsAndErrors) {
  Planted p;
  const fs::path toml = p.tmp.path() / "dataset.toml";
  testing::WriteText(toml, R"(
[general]
shuffle_caption = true
caption_extension = ".txt"
keep_tokens = 1
frobnicate = 3

[[datasets]]
resolution = [64, 64]
batch_size = 3
enable_bucket = true
min_bucket_reso = 64
max_bucket_reso = 128
bucket_reso_steps = 64

  [[datasets.subsets]]
  image_dir = "train/10_sks dog"
  num_repeats = 3
  class_tokens = "sks dog"
  flip_aug = true
  caption_prefix = "photo of"
  foo_bar = 1

  [[datasets.subsets]]
  image_dir = "reg/1_dog"
  is_reg = true
  class_tokens = "dog"
)");
  DatasetArgs args;
  args.dataset_config = toml;
  auto ds = Dataset::Open(args);
  ASSERT_TRUE(ds.ok()) << ds.status();
  const auto& g = (*ds)->groups().at(0);
  EXPECT_EQ(g.batch_size, 3);
  EXPECT_TRUE(g.enable_bucket);
  EXPECT_EQ(g.subsets[0].num_repeats, 3);
  EXPECT_TRUE(g.subsets[0].shuffle_caption);
  EXPECT_TRUE(g.subsets[0].flip_aug);
  EXPECT_TRUE(g.subsets[1].is_reg);
  EXPECT_EQ((*ds)->num_train_images(), 12);
  EXPECT_EQ((*ds)->num_reg_images(), 12);
  std::string warnings;
  for (const auto& w : (*ds)->warnings()) warnings += w + "\n";
  EXPECT_NE(warnings.find("'frobnicate'"), std::string::npos) << warnings;
  EXPECT_NE(warnings.find("'foo_bar'"), std::string::npos) << warnings;
  // The prefix is applied and keep_tokens keeps it first.
  const std::string cap = (*ds)->CaptionFor(0, 1, 0, 0, 0);
  EXPECT_EQ(cap.rfind("photo of sks dog", 0), 0u) << cap;

  // Bad values name the key and what is allowed.
  testing::WriteText(toml, "[[datasets]]\nbatch_size = \"two\"\n[[datasets.subsets]]\nimage_dir = \"train\"\n");
  auto bad = Dataset::Open(args);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(std::string(bad.status().message()).find("'batch_size'"), std::string::npos) << bad.status();
  EXPECT_NE(std::string(bad.status().message()).find("integer"), std::string::npos) << bad.status();
  testing::WriteText(toml, "[[datasets]]\n[[datasets.subsets]]\nimage_dir = \"train\"\nflip_aug = 1\n");
  bad = Dataset::Open(args);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(std::string(bad.status().message()).find("flip_aug"), std::string::npos) << bad.status();
  EXPECT_NE(std::string(bad.status().message()).find("true or false"), std::string::npos) << bad.status();
  testing::WriteText(toml, "[[datasets]\n");
  bad = Dataset::Open(args);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(std::string(bad.status().message()).find("line 1"), std::string::npos) << bad.status();
}

TEST(DatasetBatches, ContentsConditioningAndLossWeights) {
  Planted p;
  auto ds = Dataset::Open(p.Args());
  ASSERT_TRUE(ds.ok()) << ds.status();
  auto it = (*ds)->Iterate({1, 0}, 0, {.prefetch_threads = 2, .queue_batches = 3});
  ASSERT_TRUE(it.ok()) << it.status();
  int batches = 0, reg_samples = 0;
  while (true) {
    auto b = (*it)->Next();
    ASSERT_TRUE(b.ok()) << b.status();
    if (!b->has_value()) break;
    const Batch& batch = **b;
    ++batches;
    ASSERT_EQ(batch.images.sizes(), (std::vector<int64_t>{2, 3, 64, 64}));
    EXPECT_LE(batch.images.max().item<float>(), 1.0f);
    EXPECT_GE(batch.images.min().item<float>(), -1.0f);
    for (int64_t s = 0; s < batch.size(); ++s) {
      EXPECT_FLOAT_EQ(batch.loss_weights[s].item<float>(), batch.is_reg[s] ? 0.5f : 1.0f);
      reg_samples += batch.is_reg[s];
      EXPECT_EQ(batch.target_hw[s][0].item<int64_t>(), 64);
      if (batch.image_paths[s].filename() == "b.jpg") {
        EXPECT_EQ(batch.original_hw[s][0].item<int64_t>(), 96);  // oriented height
        EXPECT_EQ(batch.original_hw[s][1].item<int64_t>(), 64);
        // kohya's get_crop_ltrb: fitted inside 64x64, 64x96 leaves (64 - 42.67) // 2 = 10 on the left.
        EXPECT_EQ(batch.crop_top_left[s][0].item<int64_t>(), 0);
        EXPECT_EQ(batch.crop_top_left[s][1].item<int64_t>(), 10);
      }
      if (!batch.is_reg[s]) EXPECT_EQ(batch.captions[s].rfind("sks dog", 0), 0u) << batch.captions[s];
    }
  }
  EXPECT_EQ(batches, 40);
  EXPECT_EQ(reg_samples, 40);
}

std::vector<std::string> EpochFingerprint(Dataset& d, DataPosition start, IterateOptions opt) {
  std::vector<std::string> out;
  auto it = d.Iterate(start, 0, opt);
  EXPECT_TRUE(it.ok());
  while (true) {
    auto b = (*it)->Next();
    EXPECT_TRUE(b.ok());
    if (!b.ok() || !b->has_value()) break;
    std::string f;
    for (int64_t s = 0; s < (*b)->size(); ++s) {
      f += (*b)->image_paths[s].filename().string() + "|" + (*b)->captions[s] + "|";
    }
    f += std::to_string((*b)->images.sum().item<double>());
    out.push_back(f);
  }
  return out;
}

TEST(DatasetBatches, PrefetchDeterministicAcrossThreadsAndResumable) {
  Planted p;
  auto ds = Dataset::Open(p.Args());
  ASSERT_TRUE(ds.ok()) << ds.status();
  const auto serial = EpochFingerprint(**ds, {1, 0}, {.prefetch_threads = 0});
  const auto threaded = EpochFingerprint(**ds, {1, 0}, {.prefetch_threads = 4, .queue_batches = 2});
  EXPECT_EQ(serial, threaded);
  const auto resumed = EpochFingerprint(**ds, {1, 17}, {.prefetch_threads = 3});
  ASSERT_EQ(resumed.size(), serial.size() - 17);
  EXPECT_TRUE(std::equal(resumed.begin(), resumed.end(), serial.begin() + 17));
  const auto epoch2 = EpochFingerprint(**ds, {2, 0}, {.prefetch_threads = 2});
  EXPECT_NE(epoch2, serial);  // a new shuffle each epoch
  // Dropping an iterator mid-epoch stops its workers cleanly.
  auto it = (*ds)->Iterate({1, 0}, 0, {.prefetch_threads = 4, .queue_batches = 8});
  ASSERT_TRUE(it.ok());
  ASSERT_TRUE((*it)->Next().ok());
  it->reset();
}

struct CountingEncoder {
  std::shared_ptr<int64_t> calls = std::make_shared<int64_t>(0);
  LatentEncoder fn() {
    auto c = calls;
    return [c](const torch::Tensor& x) -> absl::StatusOr<torch::Tensor> {
      *c += x.size(0);
      auto pooled = torch::avg_pool2d(x, 8);
      return torch::cat({pooled, pooled.mean(1, true)}, 1);
    };
  }
};

TEST(LatentCacheTest, HitsInvalidationCorruptionAndRestart) {
  Planted p;
  DatasetArgs args = p.Args();
  args.reg_data_dir.reset();
  args.subset_defaults.flip_aug = true;
  const fs::path cache_dir = p.tmp.path() / "cache";
  LatentCacheOptions opt{.vae_identity = "vae-A", .cache_dir = cache_dir, .encode_batch_size = 3};
  CountingEncoder enc;
  {
    auto ds = Dataset::Open(args);
    ASSERT_TRUE(ds.ok()) << ds.status();
    ASSERT_TRUE((*ds)->CacheLatents(enc.fn(), opt).ok());
    EXPECT_EQ((*ds)->latent_cache_counters().computed, 8);  // 4 images x {plain, flipped}
    auto it = (*ds)->Iterate({1, 0}, 0, {.prefetch_threads = 2});
    ASSERT_TRUE(it.ok());
    auto b = (*it)->Next();
    ASSERT_TRUE(b.ok() && b->has_value());
    EXPECT_FALSE((**b).images.defined());
    ASSERT_EQ((**b).latents.sizes(), (std::vector<int64_t>{2, 4, 8, 8}));
    // Served latents are the encoder's output for the served sample.
    EXPECT_TRUE(torch::isfinite((**b).latents).all().item<bool>());
  }
  {  // A cache file corrupted during a run is recomputed when a batch needs it.
    auto ds = Dataset::Open(args);
    ASSERT_TRUE(ds.ok());
    ASSERT_TRUE((*ds)->CacheLatents(enc.fn(), opt).ok());
    for (const auto& f : fs::directory_iterator(cache_dir)) testing::WriteText(f.path(), "garbage");
    const int64_t before = *enc.calls;
    auto it = (*ds)->Iterate({1, 0}, 0, {.prefetch_threads = 0});  // no read-ahead: exact counts
    ASSERT_TRUE(it.ok());
    auto b = (*it)->Next();
    ASSERT_TRUE(b.ok() && b->has_value()) << b.status();
    EXPECT_EQ(*enc.calls, before + 2);
    EXPECT_EQ((*ds)->latent_cache_counters().corrupt_recomputed, 2);
    it->reset();
    // Put the cache back for the next checks.
    ASSERT_TRUE((*ds)->CacheLatents(enc.fn(), opt).ok());
  }
  {  // a restart reuses every latent from disk
    auto ds = Dataset::Open(args);
    ASSERT_TRUE(ds.ok());
    ASSERT_TRUE((*ds)->CacheLatents(enc.fn(), opt).ok());
    EXPECT_EQ((*ds)->latent_cache_counters().computed, 0);
    EXPECT_EQ((*ds)->latent_cache_counters().reused_disk, 8);
  }
  // Editing an image invalidates its two latents only.
  testing::WriteImage(p.sub / "d.jpg", testing::Drawing(64, 64, 7));
  // Truncating a cache file makes it recomputed, never trusted.
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(cache_dir)) files.push_back(e.path());
  ASSERT_EQ(files.size(), 8u);
  {
    auto ds = Dataset::Open(args);
    ASSERT_TRUE(ds.ok());
    const std::string victim = testing::ReadAll(files[0]);
    testing::WriteText(files[0], victim.substr(0, victim.size() / 2));
    ASSERT_TRUE((*ds)->CacheLatents(enc.fn(), opt).ok());
    const auto c = (*ds)->latent_cache_counters();
    EXPECT_EQ(c.corrupt_recomputed, 1);
    // d.jpg's two latents plus the corrupt one (unless the corrupt one was d's).
    EXPECT_GE(c.computed, 2);
    EXPECT_LE(c.computed, 3);
    EXPECT_EQ(c.computed + c.reused_disk, 8);
  }
  {  // another VAE never reuses these latents
    auto ds = Dataset::Open(args);
    ASSERT_TRUE(ds.ok());
    LatentCacheOptions other = opt;
    other.vae_identity = "vae-B";
    ASSERT_TRUE((*ds)->CacheLatents(enc.fn(), other).ok());
    EXPECT_EQ((*ds)->latent_cache_counters().computed, 8);
  }
  {  // random_crop makes cached latents stale: refused
    DatasetArgs rc = args;
    rc.subset_defaults.random_crop = true;
    auto ds = Dataset::Open(rc);
    ASSERT_TRUE(ds.ok());
    EXPECT_FALSE((*ds)->CacheLatents(enc.fn(), opt).ok());
  }
}

TEST(TextEncoderCacheTest, EncodesOnlyNewCaptionsAndSurvivesRestart) {
  TempDir tmp;
  int64_t encoded = 0;
  TextEncoderFn fn = [&](const std::vector<std::string>& caps) -> absl::StatusOr<std::map<std::string, torch::Tensor>> {
    encoded += static_cast<int64_t>(caps.size());
    auto t = torch::empty({static_cast<int64_t>(caps.size()), 3});
    for (size_t i = 0; i < caps.size(); ++i) t[i].fill_(static_cast<double>(caps[i].size()));
    return std::map<std::string, torch::Tensor>{{"hidden", t}, {"pooled", t.sum(1)}};
  };
  {
    auto cache = TextEncoderCache::Create("clip-L|skip2", tmp.path());
    ASSERT_TRUE(cache.ok());
    auto out = (*cache)->Get({"a dog", "a cat", "a dog"}, fn);
    ASSERT_TRUE(out.ok()) << out.status();
    EXPECT_EQ(encoded, 2);
    EXPECT_EQ(out->at("hidden").sizes(), (std::vector<int64_t>{3, 3}));
    EXPECT_FLOAT_EQ(out->at("pooled")[2].item<float>(), 15.0f);
  }
  auto cache = TextEncoderCache::Create("clip-L|skip2", tmp.path());
  ASSERT_TRUE(cache.ok());
  auto out = (*cache)->Get({"a cat", "a bird"}, fn);
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(encoded, 3);  // only "a bird" is new
  EXPECT_EQ((*cache)->counters().reused_disk, 1);
}

TEST(DatasetBadInput, ClearErrorsNamingThePath) {
  TempDir tmp;
  DatasetArgs a;
  a.train_data_dir = tmp.path() / "nope";
  auto r = Dataset::Open(a);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(std::string(r.status().message()).find("nope"), std::string::npos);

  fs::create_directories(tmp.path() / "flat");
  a.train_data_dir = tmp.path() / "flat";
  r = Dataset::Open(a);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(std::string(r.status().message()).find("N_name"), std::string::npos) << r.status();

  fs::create_directories(tmp.path() / "flat" / "5_empty");
  testing::WriteText(tmp.path() / "flat" / "5_empty" / "notes.txt", "no images here");
  r = Dataset::Open(a);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(std::string(r.status().message()).find("5_empty"), std::string::npos) << r.status();
  EXPECT_NE(std::string(r.status().message()).find("no usable training images"), std::string::npos);

  DatasetArgs none;
  EXPECT_FALSE(Dataset::Open(none).ok());
  DatasetArgs missing_toml;
  missing_toml.dataset_config = tmp.path() / "missing.toml";
  r = Dataset::Open(missing_toml);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(std::string(r.status().message()).find("missing.toml"), std::string::npos);
}

TEST(DatasetBadInput, EnormousImageIsRefusedOrReducedWithoutDecodingFully) {
  // A PNG header claiming 30000x30000: refused from the header alone.
  TempDir tmp;
  cv::Mat small(8, 8, CV_8UC3, cv::Scalar(1, 2, 3));
  std::vector<uchar> png;
  cv::imencode(".png", small, png);
  std::string bytes(png.begin(), png.end());
  auto put32 = [&](size_t o, uint32_t v) {
    for (int i = 0; i < 4; ++i) bytes[o + i] = char((v >> (24 - 8 * i)) & 0xFF);
  };
  put32(16, 30000);
  put32(20, 30000);
  auto r = DecodeImageRgb(bytes, "huge.png");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(std::string(r.status().message()).find("downscale"), std::string::npos) << r.status();

  // A real JPEG just above the pixel limit is decoded at half scale instead.
  cv::Mat big(8200, 8400, CV_8UC3, cv::Scalar(30, 60, 90));
  std::vector<uchar> jpg;
  ASSERT_TRUE(cv::imencode(".jpg", big, jpg));
  big.release();
  auto reduced = DecodeImageRgb(std::string(jpg.begin(), jpg.end()), "big.jpg");
  ASSERT_TRUE(reduced.ok()) << reduced.status();
  EXPECT_EQ(reduced->size(), cv::Size(4200, 4100));
  EXPECT_NEAR(reduced->at<cv::Vec3b>(100, 100)[0], 90, 3);  // RGB order
}

TEST(DatasetBatches, RandomCropIsSeededAndInsideTheImage) {
  Planted p;
  DatasetArgs a = p.Args();
  a.reg_data_dir.reset();
  a.subset_defaults.random_crop = true;
  auto ds = Dataset::Open(a);
  ASSERT_TRUE(ds.ok()) << ds.status();
  std::set<std::pair<int, int>> offsets;
  for (int64_t i = 0; i < static_cast<int64_t>((*ds)->images().size()); ++i) {
    const auto& e = (*ds)->images()[i];
    for (int b = 0; b < 8; ++b) {
      const auto crop = (*ds)->CropOffsets(i, 1, b, 0);
      EXPECT_EQ(crop, (*ds)->CropOffsets(i, 1, b, 0));
      EXPECT_GE(crop.first, 0);
      EXPECT_LE(crop.first, e.resized_width - e.bucket_width);
      EXPECT_LE(crop.second, e.resized_height - e.bucket_height);
      offsets.insert(crop);
    }
  }
  EXPECT_GT(offsets.size(), 2u);  // b.jpg (64x96 -> 64x96 in a 64x64 bucket) varies its top offset
}

}  // namespace
}  // namespace lorad::data
