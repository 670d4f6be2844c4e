// Issue 16: hostile dataset configs and images are errors naming the key or
// file and the limit, or images skipped and named; never a crash or an
// allocation of gigabytes. The hostile inputs are generated here and are small.
#include <limits>

#include <gtest/gtest.h>
#include <zlib.h>

#include "core/base/limits.h"
#include "core/data/dataset.h"
#include "core/data/dataset_config.h"
#include "core/data/image_io.h"
#include "core/data/test_images.h"

namespace lorad::data {
namespace {

namespace fs = std::filesystem;
using testing::TempDir;

std::string Be32(uint32_t v) {
  return {char(v >> 24), char((v >> 16) & 0xFF), char((v >> 8) & 0xFF), char(v & 0xFF)};
}

std::string PngChunk(const std::string& type, const std::string& data) {
  const std::string body = type + data;
  const uLong crc = crc32(0L, reinterpret_cast<const Bytef*>(body.data()), static_cast<uInt>(body.size()));
  return Be32(static_cast<uint32_t>(data.size())) + body + Be32(static_cast<uint32_t>(crc));
}

// A structurally valid PNG whose IHDR claims `w`x`h` at `bit_depth` and
// `color_type`, with `idat` as its (possibly bogus) compressed pixels.
std::string HeaderOnlyPng(uint32_t w, uint32_t h, int bit_depth, int color_type, const std::string& idat) {
  std::string ihdr = Be32(w) + Be32(h);
  ihdr += {char(bit_depth), char(color_type), 0, 0, 0};
  return std::string("\x89PNG\r\n\x1a\n", 8) + PngChunk("IHDR", ihdr) + PngChunk("IDAT", idat) + PngChunk("IEND", "");
}

// A few bytes of zlib data: a valid stream start, far too short for the image.
std::string TinyIdat() {
  const std::string zeros(64, '\0');
  uLongf size = compressBound(zeros.size());
  std::string out(size, '\0');
  compress(reinterpret_cast<Bytef*>(out.data()), &size, reinterpret_cast<const Bytef*>(zeros.data()), zeros.size());
  out.resize(size);
  return out;
}

absl::StatusOr<ResolvedDatasets> ParseDatasetToml(const std::string& toml) {
  return ParseDatasetConfigToml(toml, "/data", DatasetArgs{});
}

std::string WithDataset(const std::string& dataset_keys, const std::string& subset_keys = "") {
  return "[[datasets]]\n" + dataset_keys + "\n[[datasets.subsets]]\nimage_dir = \"img\"\n" + subset_keys + "\n";
}

TEST(DatasetConfigHardening, SizesAndCountsHaveDocumentedLimits) {
  struct Case {
    std::string toml, key, limit;
  };
  const std::vector<Case> cases = {
      {WithDataset("resolution = 100000"), "resolution", "8192"},  // terminated inside cv::Exception before
      {WithDataset("resolution = [2147483647, 64]"), "resolution", "8192"},
      {WithDataset("resolution = [64, -1]"), "resolution", "8192"},
      {WithDataset("resolution = {w = 64}"), "resolution", "8192"},
      {WithDataset("batch_size = 46000000000000"), "batch_size", "1024"},
      {WithDataset("max_bucket_reso = 65536"), "max_bucket_reso", "8192"},
      {WithDataset("bucket_reso_steps = 9223372036854775807"), "bucket_reso_steps", "8192"},
      {WithDataset("", "num_repeats = 1073741824"), "num_repeats", "100000"},  // 2^30
      {WithDataset("", "keep_tokens = 4294967296"), "keep_tokens", "1000"},
      {WithDataset("", "token_warmup_step = 1e300"), "token_warmup_step", "1e+08"},
      {WithDataset("", "caption_dropout_rate = nan"), "caption_dropout_rate", "[0, 1]"},
      {WithDataset("", "caption_prefix = \"" + std::string(20000, 'p') + "\""), "caption_prefix", "16384 bytes"},
      {WithDataset("", "class_tokens = \"" + std::string(20000, 'c') + "\""), "class_tokens", "16384 bytes"},
      {"[[datasets]]\n[[datasets.subsets]]\nimage_dir = {a = 1}\n", "image_dir", "a string"},
      {"[general]\ncaption_suffix = [1, 2]\n" + WithDataset(""), "caption_suffix", "a string"},
  };
  for (const Case& c : cases) {
    auto r = ParseDatasetToml(c.toml);
    ASSERT_FALSE(r.ok()) << c.toml.substr(0, 200);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    const std::string message(r.status().message());
    EXPECT_NE(message.find("'" + c.key + "'"), std::string::npos) << message;
    EXPECT_NE(message.find(c.limit), std::string::npos) << message;
    EXPECT_LT(message.size(), 400u) << "the message must not echo a huge value";
  }
  // The limits themselves are accepted.
  auto largest = ParseDatasetToml(WithDataset("resolution = [8192, 64]\nbatch_size = 1024", "num_repeats = 100000"));
  ASSERT_TRUE(largest.ok()) << largest.status();
  EXPECT_EQ(largest->datasets[0].resolution_width, 8192);
}

TEST(DatasetConfigHardening, FlatResolutionAndFolderRepeatsAreBounded) {
  for (const std::string& text : {"64,1000000", "65536", "2147483647x64", "99999999999"}) {
    auto r = ParseResolution(text);
    EXPECT_FALSE(r.ok()) << text;
  }
  EXPECT_NE(std::string(ParseResolution("64,1000000").status().message()).find("8192"), std::string::npos);
  EXPECT_TRUE(ParseResolution("8192,64").ok());

  TempDir tmp;
  fs::create_directories(tmp.path() / "999999999_huge");
  std::vector<std::string> warnings;
  auto subsets = ScanRepeatFolders(tmp.path(), SubsetConfig{}, false, &warnings);
  ASSERT_FALSE(subsets.ok());
  EXPECT_NE(std::string(subsets.status().message()).find("999999999_huge"), std::string::npos) << subsets.status();
  EXPECT_NE(std::string(subsets.status().message()).find("100000"), std::string::npos) << subsets.status();
}

TEST(DatasetConfigHardening, SamplesPerEpochAreBounded) {
  // 101 images x 100,000 repeats = 10.1 million samples per epoch: refused at
  // open, before rebalancing or planning loops over them.
  TempDir tmp;
  const fs::path dir = tmp.path() / "img";
  fs::create_directories(dir);
  std::vector<uchar> png;
  cv::imencode(".png", cv::Mat(8, 8, CV_8UC3, cv::Scalar(1, 2, 3)), png);
  for (int i = 0; i < 101; ++i) {
    testing::WriteText(dir / ("i" + std::to_string(i) + ".png"), std::string(png.begin(), png.end()));
  }
  const fs::path toml = tmp.path() / "d.toml";
  testing::WriteText(toml, "[[datasets]]\nresolution = 64\n[[datasets.subsets]]\nimage_dir = \"img\"\nnum_repeats = 100000\n");
  DatasetArgs args;
  args.dataset_config = toml;
  auto ds = Dataset::Open(args);
  ASSERT_FALSE(ds.ok());
  EXPECT_EQ(ds.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(ds.status().message()).find("10100000 samples per epoch"), std::string::npos) << ds.status();
  EXPECT_NE(std::string(ds.status().message()).find("10000000"), std::string::npos) << ds.status();
}

TEST(ImageHardening, DecompressionBombIsRefusedFromTheHeader) {
  // 8192x8192, 16-bit RGBA: 512 MiB to decode, from a file of a few hundred bytes.
  const std::string bomb = HeaderOnlyPng(8192, 8192, 16, 6, TinyIdat());
  ASSERT_LT(bomb.size(), 1000u);
  auto header = ParseImageHeader(bomb, "bomb.png");
  ASSERT_TRUE(header.ok()) << header.status();
  EXPECT_EQ(header->channels, 4);
  EXPECT_EQ(header->bytes_per_channel, 2);
  EXPECT_EQ(DecodeBytes(*header), int64_t{8192} * 8192 * 8);
  auto decoded = DecodeImageRgb(bomb, "bomb.png");
  ASSERT_FALSE(decoded.ok());
  EXPECT_EQ(decoded.status().code(), absl::StatusCode::kResourceExhausted);
  const std::string message(decoded.status().message());
  EXPECT_NE(message.find("bomb.png"), std::string::npos) << message;
  EXPECT_NE(message.find(std::to_string(kMaxImageDecodeBytes)), std::string::npos) << message;
  // Other channel layouts count as they decode.
  EXPECT_EQ(DecodeBytes(*ParseImageHeader(HeaderOnlyPng(100, 10, 8, 0, TinyIdat()), "g.png")), 1000);
  EXPECT_EQ(DecodeBytes(*ParseImageHeader(HeaderOnlyPng(100, 10, 16, 2, TinyIdat()), "rgb16.png")), 6000);
  EXPECT_EQ(DecodeBytes(*ParseImageHeader(HeaderOnlyPng(100, 10, 8, 4, TinyIdat()), "ga.png")), 2000);
  EXPECT_FALSE(ParseImageHeader(HeaderOnlyPng(100, 10, 8, 7, TinyIdat()), "bad.png").ok());  // no color type 7
}

TEST(ImageHardening, DeclaredDecodeSizeSaturatesInsteadOfOverflowing) {
  // The image_header fuzzer's first finding: a BMP declaring two sides near
  // 2^31 made pixels x channels x bytes overflow int64 (undefined behaviour).
  ImageHeader huge;
  huge.stored_width = 2147483647;
  huge.stored_height = 2147483647;
  huge.channels = 4;
  huge.bytes_per_channel = 2;
  EXPECT_EQ(DecodeBytes(huge), std::numeric_limits<int64_t>::max());
  EXPECT_GT(DecodeBytes(huge), kMaxImageDecodeBytes);  // refused before decoding
}

TEST(ImageHardening, PixelsThatDoNotDecodeAreAStatusNotAnException) {
  // Header and chunk structure are valid; the compressed pixels are not.
  const std::string garbage = HeaderOnlyPng(64, 64, 8, 2, std::string(40, '\x55'));
  ASSERT_TRUE(ParseImageHeader(garbage, "garbage.png").ok());
  auto decoded = DecodeImageRgb(garbage, "garbage.png");
  ASSERT_FALSE(decoded.ok());
  EXPECT_NE(std::string(decoded.status().message()).find("garbage.png"), std::string::npos) << decoded.status();
  // Too short for the image: OpenCV may fill or fail; either way no exception.
  auto short_data = DecodeImageRgb(HeaderOnlyPng(64, 64, 8, 2, TinyIdat()), "short.png");
  (void)short_data;
}

TEST(ImageHardening, ImagesThatDoNotDecodeAreSkippedAndNamedNotFatal) {
  TempDir tmp;
  const fs::path dir = tmp.path() / "1_thing";
  fs::create_directories(dir);
  testing::WriteImage(dir / "a_good.png", testing::Drawing(64, 64, 1));
  testing::WriteText(dir / "b_bomb.png", HeaderOnlyPng(8192, 8192, 16, 6, TinyIdat()));
  testing::WriteText(dir / "c_garbage.png", HeaderOnlyPng(64, 64, 8, 2, std::string(40, '\x55')));
  DatasetArgs args;
  args.train_data_dir = tmp.path();
  args.resolution_width = args.resolution_height = 64;
  args.train_batch_size = 1;
  auto ds = Dataset::Open(args);
  ASSERT_TRUE(ds.ok()) << ds.status();
  ASSERT_EQ((*ds)->images().size(), 3u);  // the headers parse: found at open
  for (int threads : {0, 2}) {
    auto it = (*ds)->Iterate({1, 0}, 0, IterateOptions{.prefetch_threads = threads});
    ASSERT_TRUE(it.ok()) << it.status();
    int batches = 0;
    while (true) {
      auto batch = (*it)->Next();
      ASSERT_TRUE(batch.ok()) << batch.status();  // not a failure of the whole run at batch 0
      if (!batch->has_value()) break;
      ++batches;
      ASSERT_EQ((*batch)->size(), 1);
      EXPECT_EQ((*batch)->image_paths[0].filename(), "a_good.png");
    }
    EXPECT_EQ(batches, 1);
  }
  const auto failures = (*ds)->decode_failures();
  ASSERT_EQ(failures.size(), 2u);
  std::string all = failures[0] + "\n" + failures[1];
  EXPECT_NE(all.find("b_bomb.png"), std::string::npos) << all;
  EXPECT_NE(all.find("c_garbage.png"), std::string::npos) << all;

  // One batch of all three: the good image is kept, the bad one left out and named.
  args.train_batch_size = 3;
  auto ds3 = Dataset::Open(args);
  ASSERT_TRUE(ds3.ok());
  auto plan = (*ds3)->PlanEpoch(1);
  ASSERT_EQ(plan.size(), 1u);
  auto batch = (*ds3)->LoadBatch(plan[0], {1, 0}, 0);
  ASSERT_TRUE(batch.ok()) << batch.status();
  EXPECT_EQ(batch->size(), 1);
  EXPECT_EQ(batch->images.size(0), 1);
  EXPECT_EQ(batch->original_hw.size(0), 1);
  EXPECT_EQ(batch->skipped_images.size(), 2u);

  // When no training image decodes, the run stops with a clear error.
  fs::remove(dir / "a_good.png");
  auto bad_only = Dataset::Open(args);
  ASSERT_TRUE(bad_only.ok()) << bad_only.status();
  auto it = (*bad_only)->Iterate({1, 0}, 0, IterateOptions{.prefetch_threads = 0});
  ASSERT_TRUE(it.ok());
  auto next = (*it)->Next();
  ASSERT_FALSE(next.ok());
  EXPECT_EQ(next.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(std::string(next.status().message()).find("no training image decodes"), std::string::npos);
}

TEST(ImageHardening, OversizedCaptionFileIsNotRead) {
  TempDir tmp;
  const fs::path dir = tmp.path() / "1_thing";
  fs::create_directories(dir);
  testing::WriteImage(dir / "a.png", testing::Drawing(64, 64, 1));
  testing::WriteText(dir / "a.caption", std::string(kMaxCaptionFileBytes + 1, 'w'));
  DatasetArgs args;
  args.train_data_dir = tmp.path();
  args.resolution_width = args.resolution_height = 64;
  auto ds = Dataset::Open(args);
  ASSERT_TRUE(ds.ok()) << ds.status();
  EXPECT_EQ((*ds)->images()[0].caption, "thing");  // the class tokens instead
  EXPECT_NE((*ds)->images()[0].caption_problem.find("byte limit"), std::string::npos)
      << (*ds)->images()[0].caption_problem;
}

}  // namespace
}  // namespace lorad::data
