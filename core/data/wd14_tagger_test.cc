// WD14 tagging against tests/fixtures/tagger (tests/fixtures/make_tagger_model.py):
// kohya's preprocessing pixel for pixel, the tiny tagger's probabilities vs
// onnx's reference evaluator, tag selection, captions, errors, and lorad-tag.
#include "core/data/wd14_tagger.h"

#include <cstdlib>
#include <fstream>
#include <sstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <opencv2/dnn.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "core/base/subprocess.h"
#include "core/base/testing/scoped_temp_dir.h"
#include "core/data/image_header.h"
#include "core/data/onnx_compat.h"

namespace lorad::data {
namespace {
namespace fs = std::filesystem;

const fs::path kFixtures = fs::path(LORAD_REPO_FIXTURES) / "tagger";
const char* const kImages[] = {"wide_rgb.png", "tall_rgba.png", "small_gray.png"};

nlohmann::json Expected() {
  std::ifstream in(kFixtures / "expected.json");
  return nlohmann::json::parse(in);
}

std::string ReadText(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

void WriteText(const fs::path& p, const std::string& text) { std::ofstream(p, std::ios::binary) << text; }

TEST(Wd14Preprocess, MatchesKohyaPixelForPixel) {
  for (const char* name : kImages) {
    SCOPED_TRACE(name);
    auto decoded = LoadImageForWd14(kFixtures / name);
    ASSERT_TRUE(decoded.ok()) << decoded.status();
    auto pre = PreprocessForWd14(*decoded);
    ASSERT_TRUE(pre.ok()) << pre.status();
    const cv::Mat ref = cv::imread((kFixtures / (std::string("preprocessed_") + name)).string(), cv::IMREAD_COLOR);
    ASSERT_EQ(ref.size(), cv::Size(448, 448));
    ASSERT_EQ(pre->type(), CV_8UC3);
    EXPECT_EQ(cv::norm(*pre, ref, cv::NORM_INF), 0.0);
  }
}

TEST(Wd14Preprocess, AlphaChannelCompositedOnWhiteLikePil) {
  // The 4-channel path of PreprocessForWd14 itself (BGRA as OpenCV decodes it).
  const cv::Mat bgra = cv::imread((kFixtures / "tall_rgba.png").string(), cv::IMREAD_UNCHANGED);
  ASSERT_EQ(bgra.channels(), 4);
  auto pre = PreprocessForWd14(bgra);
  ASSERT_TRUE(pre.ok()) << pre.status();
  const cv::Mat ref = cv::imread((kFixtures / "preprocessed_tall_rgba.png").string(), cv::IMREAD_COLOR);
  EXPECT_EQ(cv::norm(*pre, ref, cv::NORM_INF), 0.0);
  // The fully transparent left strip and the side padding are white.
  EXPECT_EQ((*pre).at<cv::Vec3b>(200, 0), cv::Vec3b(255, 255, 255));
}

TEST(Wd14Preprocess, PadsWithWhiteCentredOddPixelAfter) {
  cv::Mat big(300, 600, CV_8UC3, cv::Scalar(0, 0, 0));  // 600x300 -> 150 white rows above and below
  big.rowRange(0, 20).setTo(cv::Scalar(0, 0, 255));    // a red band on top (BGR)
  auto pre = PreprocessForWd14(big);
  ASSERT_TRUE(pre.ok());
  // Scale 448/600: padded rows 0..149 -> output rows 0..111, the band -> 112..126.
  EXPECT_EQ(pre->at<cv::Vec3b>(0, 224), cv::Vec3b(255, 255, 255));
  EXPECT_EQ(pre->at<cv::Vec3b>(111, 224), cv::Vec3b(255, 255, 255));
  EXPECT_EQ(pre->at<cv::Vec3b>(447, 224), cv::Vec3b(255, 255, 255));
  EXPECT_EQ(pre->at<cv::Vec3b>(224, 224), cv::Vec3b(0, 0, 0));
  EXPECT_EQ(pre->at<cv::Vec3b>(115, 224), cv::Vec3b(0, 0, 255));  // red stays red: BGR order kept
}

TEST(Wd14Tagger, ProbabilitiesMatchOnnxReference) {
  auto vocabulary = LoadTagCsv(kFixtures / "selected_tags.csv");
  ASSERT_TRUE(vocabulary.ok()) << vocabulary.status();
  ASSERT_EQ(vocabulary->tags.size(), 12u);
  auto tagger = Wd14Tagger::Load(kFixtures / "tiny_tagger.onnx", vocabulary->tags.size());
  ASSERT_TRUE(tagger.ok()) << tagger.status();
  EXPECT_EQ(tagger->broadcast_muls_rewritten(), 1);  // the layer-scale Mul
  const nlohmann::json expected = Expected()["probabilities"];
  double worst = 0;
  for (const char* name : kImages) {
    SCOPED_TRACE(name);
    const cv::Mat pre = cv::imread((kFixtures / (std::string("preprocessed_") + name)).string(), cv::IMREAD_COLOR);
    auto probs = tagger->Predict(pre);
    ASSERT_TRUE(probs.ok()) << probs.status();
    const std::vector<float> want = expected[name].get<std::vector<float>>();
    ASSERT_EQ(probs->size(), want.size());
    for (size_t i = 0; i < want.size(); ++i) {
      EXPECT_NEAR((*probs)[i], want[i], 1e-4) << "output " << i;
      worst = std::max(worst, std::abs(double((*probs)[i]) - want[i]));
    }
  }
  std::cout << "max |opencv - onnx reference| = " << worst << "\n";
}

TEST(Wd14Tagger, Opencv46NeedsTheRewrite) {
  // The finding the rewrite exists for: OpenCV 4.6 imports Mul by a channel
  // vector on the last axis into a Scale layer that fails.
  if (CV_VERSION_MAJOR != 4 || CV_VERSION_MINOR != 6) GTEST_SKIP() << "measured on OpenCV 4.6 only";
  RegisterOnnxCompatLayers();
  const std::string bytes = ReadText(kFixtures / "tiny_tagger.onnx");
  bool failed = false;
  try {
    cv::dnn::Net net = cv::dnn::readNetFromONNX(bytes.data(), bytes.size());
    const int shape[] = {1, 448, 448, 3};
    net.setInput(cv::Mat(4, shape, CV_32F, cv::Scalar(128)));
    net.forward();
  } catch (const cv::Exception&) {
    failed = true;
  }
  EXPECT_TRUE(failed);
}

TEST(Wd14Tagger, CompatLayersMatchOnnxReference) {
  // Gelu (exact and tanh), Einsum with a permuted output and a constant first
  // operand, Mul by a [1,1,1,C] constant: compat_ops.onnx vs onnx's evaluator.
  RegisterOnnxCompatLayers();
  auto rewritten = RewriteForOpenCv(ReadText(kFixtures / "compat_ops.onnx"), "compat_ops.onnx");
  ASSERT_TRUE(rewritten.ok()) << rewritten.status();
  EXPECT_EQ(rewritten->broadcast_muls, 1);
  const nlohmann::json ops = Expected()["compat_ops"];
  std::vector<float> x = ops["x"].get<std::vector<float>>();
  const std::vector<float> want = ops["y"].get<std::vector<float>>();
  cv::dnn::Net net = cv::dnn::readNetFromONNX(rewritten->model.data(), rewritten->model.size());
  const int shape[] = {1, 2, 3, 4};
  net.setInput(cv::Mat(4, shape, CV_32F, x.data()));
  const cv::Mat y = net.forward();
  ASSERT_EQ(y.total(), want.size());
  for (size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(y.ptr<float>()[i], want[i], 1e-5) << "element " << i;
}

TEST(Wd14Tags, SelectsPerCategoryThresholdsInKohyaOrder) {
  auto vocabulary = LoadTagCsv(kFixtures / "selected_tags.csv");
  ASSERT_TRUE(vocabulary.ok());
  // rows: 4 ratings, 1girl solo long_hair smile ^_^ looking_at_viewer, hatsune_miku kaname_madoka_(magical_girl)
  const std::vector<float> p = {0.1f, 0.7f, 0.2f, 0.05f, 0.9f, 0.34f, 0.35f, 0.8f, 0.6f, 0.5f, 0.84f, 0.86f};
  TagSelection s;  // 0.35 general, 0.85 character, underscores removed
  EXPECT_EQ(SelectTags(p, *vocabulary, s),
            (std::vector<std::string>{"1girl", "long hair", "smile", "^_^", "looking at viewer",
                                      "kaname madoka (magical girl)"}));
  s.general_threshold = 0.55f;
  s.character_threshold = 0.8f;
  s.character_tags_first = true;
  s.use_rating_tags = true;
  EXPECT_EQ(SelectTags(p, *vocabulary, s),
            (std::vector<std::string>{"sensitive", "hatsune miku", "kaname madoka (magical girl)", "1girl", "smile",
                                      "^_^"}));
  s = TagSelection();
  s.remove_underscore = false;
  s.undesired_tags = {"1girl"};
  s.always_first_tags = {"smile", "looking_at_viewer"};
  EXPECT_EQ(SelectTags(p, *vocabulary, s),
            (std::vector<std::string>{"looking_at_viewer", "smile", "long_hair", "^_^",
                                      "kaname_madoka_(magical_girl)"}));
}

TEST(Wd14Captions, TriggerFirstKeepTokensAndModes) {
  const std::vector<std::string> tags = {"1girl", "smile", "long hair"};
  CaptionPolicy policy;
  policy.trigger = "mychar";
  // No caption yet: trigger first.
  EXPECT_EQ(*ComposeCaption(std::nullopt, tags, policy).caption, "mychar, 1girl, smile, long hair");
  // Merge: existing tokens stay, the trigger moves first, new tags after, no duplicates.
  EXPECT_EQ(*ComposeCaption("smile, red eyes", tags, policy).caption, "mychar, smile, red eyes, 1girl, long hair");
  // keep_tokens: the existing first two tokens stay first and unchanged.
  policy.keep_tokens = 2;
  auto kept = ComposeCaption("mychar, solo, blue sky, smile", tags, policy);
  EXPECT_EQ(*kept.caption, "mychar, solo, blue sky, smile, 1girl, long hair");
  EXPECT_FALSE(kept.trigger_after_kept);
  auto lacking = ComposeCaption("photo of, solo, blue sky", tags, policy);
  EXPECT_EQ(*lacking.caption, "photo of, solo, mychar, blue sky, 1girl, smile, long hair");
  EXPECT_TRUE(lacking.trigger_after_kept);
  // Overwrite: only the kept prefix survives.
  policy.mode = CaptionMode::kOverwrite;
  EXPECT_EQ(*ComposeCaption("mychar, solo, blue sky", tags, policy).caption, "mychar, solo, 1girl, smile, long hair");
  policy.keep_tokens = 0;
  EXPECT_EQ(*ComposeCaption("old, tags", tags, policy).caption, "mychar, 1girl, smile, long hair");
  // Skip-existing leaves a captioned image alone, tags an uncaptioned one.
  policy.mode = CaptionMode::kSkipExisting;
  EXPECT_FALSE(ComposeCaption("old", tags, policy).caption.has_value());
  EXPECT_EQ(*ComposeCaption(std::nullopt, tags, policy).caption, "mychar, 1girl, smile, long hair");
  EXPECT_FALSE(ParseCaptionMode("append").ok());
}

TEST(Wd14Errors, NameTheFile) {
  testing::ScopedTempDir tmp("lorad_wd14");
  auto missing = Wd14Tagger::Load(tmp.path() / "nope.onnx", 12);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("nope.onnx"), std::string::npos);
  WriteText(tmp.path() / "corrupt.onnx", "this is not a protobuf \xff\xff\xff");
  auto corrupt = Wd14Tagger::Load(tmp.path() / "corrupt.onnx", 12);
  EXPECT_EQ(corrupt.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(corrupt.status().message().find("corrupt.onnx"), std::string::npos) << corrupt.status();
  auto width = Wd14Tagger::Load(kFixtures / "tiny_tagger.onnx", 7);  // the CSV of another model
  EXPECT_NE(width.status().message().find("12 outputs but the tag list has 7"), std::string::npos) << width.status();

  EXPECT_EQ(LoadTagCsv(tmp.path() / "none.csv").status().code(), absl::StatusCode::kNotFound);
  WriteText(tmp.path() / "bad.csv", "id,tag\n1,a\n");
  auto bad = LoadTagCsv(tmp.path() / "bad.csv");
  EXPECT_NE(bad.status().message().find("bad.csv"), std::string::npos);
  WriteText(tmp.path() / "short.csv", "tag_id,name,category,count\n1,a,zero,3\n");
  auto short_row = LoadTagCsv(tmp.path() / "short.csv");
  EXPECT_NE(short_row.status().message().find("short.csv line 2"), std::string::npos) << short_row.status();
  auto quoted = ParseTagCsv("tag_id,name,category,count\n1,\"a,b\",0,3\n", "q.csv");
  ASSERT_TRUE(quoted.ok());
  EXPECT_EQ(quoted->tags[0].name, "a,b");

  WriteText(tmp.path() / "broken.png", "\x89PNG\r\n\x1a\n garbage");
  auto image = LoadImageForWd14(tmp.path() / "broken.png");
  EXPECT_FALSE(image.ok());
  EXPECT_NE(image.status().message().find("broken.png"), std::string::npos) << image.status();
}

fs::path Tool() {
  const char* dir = std::getenv("LORAD_BUILD_DIR");
  return fs::path(dir ? dir : "build") / "core" / "data" / "lorad-tag";
}

TEST(LoradTag, TagsADatasetFolderAndMerges) {
  testing::ScopedTempDir tmp("lorad_tag_tool");
  const fs::path subset = tmp.path() / "10_mychar";
  fs::create_directories(subset);
  for (const char* name : kImages) fs::copy_file(kFixtures / name, subset / name);
  WriteText(subset / "tall_rgba.txt", "mychar, solo, handmade tag\n");
  SubprocessOptions run;
  run.argv = {Tool().string(), tmp.path().string(), "--model", (kFixtures / "tiny_tagger.onnx").string(), "--tags",
              (kFixtures / "selected_tags.csv").string(), "--trigger", "mychar", "--keep-tokens", "1", "--threshold",
              "0.5", "--json"};
  auto result = RunSubprocess(run);
  ASSERT_TRUE(result.ok()) << result.status();
  ASSERT_EQ(result->exit_code, 0) << result->stderr_tail;
  const auto report = nlohmann::json::parse(result->stdout_text);
  EXPECT_EQ(report["images"], 3);
  EXPECT_EQ(report["written"], 3);
  EXPECT_EQ(report["caption_extension"], ".txt");
  // wide_rgb: general tags >= 0.5 in CSV order, kaname_madoka (0.998) >= 0.85, hatsune_miku (0.70) not.
  EXPECT_EQ(ReadText(subset / "wide_rgb.txt"),
            "mychar, 1girl, solo, long hair, smile, ^_^, looking at viewer, kaname madoka (magical girl)\n");
  // Merged: the kept first token, the rest of the old caption, then the new tags.
  EXPECT_EQ(ReadText(subset / "tall_rgba.txt"),
            "mychar, solo, handmade tag, 1girl, smile, ^_^, looking at viewer, kaname madoka (magical girl)\n");
  EXPECT_EQ(ReadText(subset / "small_gray.txt").rfind("mychar, 1girl, solo, smile", 0), 0u)
      << ReadText(subset / "small_gray.txt");

  // skip-existing leaves them; a corrupt image fails naming it, exit 1.
  WriteText(subset / "zz_broken.png", "\x89PNG\r\n\x1a\n garbage");
  run.argv.insert(run.argv.end(), {"--mode", "skip-existing"});
  auto again = RunSubprocess(run);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->exit_code, 1);
  const auto second = nlohmann::json::parse(again->stdout_text);
  EXPECT_EQ(second["skipped"], 3);
  ASSERT_EQ(second["failed"].size(), 1u);
  EXPECT_EQ(second["failed"][0]["path"], "10_mychar/zz_broken.png");
  EXPECT_NE(again->stderr_tail.find("zz_broken.png"), std::string::npos);

  // A missing model: exit 2 naming it.
  SubprocessOptions bad = run;
  bad.argv[3] = (tmp.path() / "missing.onnx").string();
  auto missing = RunSubprocess(bad);
  ASSERT_TRUE(missing.ok());
  EXPECT_EQ(missing->exit_code, 2);
  EXPECT_NE(missing->stderr_tail.find("missing.onnx"), std::string::npos);
}

}  // namespace
}  // namespace lorad::data
