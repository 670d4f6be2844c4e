// Buckets and captions against kohya's own outputs (train_reference.json).
#include <fstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "core/common/fixtures.h"
#include "core/data/buckets.h"
#include "core/data/caption.h"

namespace lorad::data {
namespace {

using Json = nlohmann::ordered_json;

Json LoadReference() {
  std::ifstream in(FixturePath("train_reference.json"));
  EXPECT_TRUE(in.good()) << "missing fixture " << FixturePath("train_reference.json");
  return Json::parse(in);
}

Reso R(const Json& j) { return {j[0].get<int>(), j[1].get<int>()}; }

TEST(KohyaBuckets, MakeBucketResolutionsMatchesEveryList) {
  const Json ref = LoadReference();
  const auto& lists = ref["buckets"]["make_bucket_resolutions"];
  ASSERT_FALSE(lists.empty());
  for (const auto& c : lists) {
    const auto got = MakeBucketResolutions(R(c["max_reso"]), c["min_size"], c["max_size"], c["divisible"]);
    ASSERT_EQ(got.size(), c["count"].get<size_t>());
    for (size_t i = 0; i < got.size(); ++i) {
      EXPECT_EQ(got[i], R(c["resos"][i])) << "list " << c["max_reso"] << " index " << i;
    }
  }
}

TEST(KohyaBuckets, SelectResizeCropMatchEveryCase) {
  const Json ref = LoadReference();
  int checked = 0, errors = 0;
  for (const auto& group : ref["buckets"]["select_bucket"]) {
    const auto& cfg = group["config"];
    auto selector = BucketSelector::Create(cfg["no_upscale"], R(cfg["max_reso"]), cfg["min_size"], cfg["max_size"],
                                           cfg["reso_steps"]);
    ASSERT_TRUE(selector.ok()) << selector.status();
    for (const auto& c : group["cases"]) {
      const Reso image = R(c["image_size"]);
      SCOPED_TRACE(testing::Message() << "config " << cfg.dump() << " image " << image.width << "x" << image.height);
      auto sel = selector->Select(image.width, image.height);
      const bool kohya_failed = c.contains("error") || c["trim_top"].is_null() || R(c["bucket_reso"]).width == 0 ||
                                R(c["bucket_reso"]).height == 0;
      if (kohya_failed) {
        // kohya raises (ZeroDivisionError) or builds an empty bucket: we refuse clearly.
        ASSERT_FALSE(sel.ok());
        EXPECT_NE(std::string(sel.status().message()).find(std::to_string(image.width) + "x"), std::string::npos);
        ++errors;
        continue;
      }
      ASSERT_TRUE(sel.ok()) << sel.status();
      EXPECT_EQ(sel->bucket, R(c["bucket_reso"]));
      EXPECT_EQ(sel->resized, R(c["resized_size"]));
      EXPECT_NEAR(sel->ar_error, c["ar_error"].get<double>(), 1e-12);
      const ResizeFilter filter = ChooseResizeFilter(image, sel->resized);
      if (c["resize"].is_null()) {
        EXPECT_EQ(filter, ResizeFilter::kNone);
      } else if (c["resize"]["interpolation"] == "cv2.INTER_AREA") {
        EXPECT_EQ(filter, ResizeFilter::kArea);
      } else {
        EXPECT_EQ(c["resize"]["interpolation"], "PIL.Image.Resampling.LANCZOS");
        EXPECT_EQ(filter, ResizeFilter::kLanczos);
      }
      const auto [left, top] = CenterTrim(sel->resized, sel->bucket);
      EXPECT_EQ(left, c["trim_left"].get<int>());
      EXPECT_EQ(top, c["trim_top"].get<int>());
      EXPECT_EQ(sel->bucket, R(c["out_size"]));
      const CropLtrb crop = GetCropLtrb(sel->bucket, image);
      EXPECT_NEAR(crop.left, c["crop_ltrb"][0].get<double>(), 1e-9);
      EXPECT_NEAR(crop.top, c["crop_ltrb"][1].get<double>(), 1e-9);
      EXPECT_NEAR(crop.right, c["crop_ltrb"][2].get<double>(), 1e-9);
      EXPECT_NEAR(crop.bottom, c["crop_ltrb"][3].get<double>(), 1e-9);
      const auto tl = SdxlCropTopLeft(sel->bucket, crop, false);
      const auto tl_flip = SdxlCropTopLeft(sel->bucket, crop, true);
      EXPECT_EQ(tl.first, c["sdxl_crop_top_left"][0].get<int>());
      EXPECT_EQ(tl.second, c["sdxl_crop_top_left"][1].get<int>());
      EXPECT_EQ(tl_flip.first, c["sdxl_crop_top_left_flipped"][0].get<int>());
      EXPECT_EQ(tl_flip.second, c["sdxl_crop_top_left_flipped"][1].get<int>());
      ++checked;
    }
  }
  EXPECT_GT(checked, 60);
  EXPECT_GE(errors, 2);
}

TEST(KohyaBuckets, RejectsBadSettings) {
  EXPECT_FALSE(BucketSelector::Create(false, {512, 512}, 256, 1024, 60).ok());
  EXPECT_FALSE(BucketSelector::Create(false, {1024, 1024}, 256, 512, 64).ok());
  EXPECT_FALSE(BucketSelector::Create(false, {512, 512}, 2048, 1024, 64).ok());
}

// Replays the python random calls kohya made, in order, and checks ours match.
class ScriptedRandom : public CaptionRandom {
 public:
  ScriptedRandom(const Json& calls, std::string permutation) : calls_(calls), permutation_(std::move(permutation)) {}
  double Uniform() override {
    const Json& c = NextCall("random.random");
    return c.contains("value") ? c["value"].get<double>() : 0.5;
  }
  size_t Choice(size_t n) override {
    const Json& c = NextCall("random.choice");
    EXPECT_EQ(c["len"].get<size_t>(), n);
    return 0;  // the recorded cases have one option
  }
  void Shuffle(std::vector<std::string>& tokens) override {
    const Json& c = NextCall("random.shuffle");
    EXPECT_EQ(c["len"].get<size_t>(), tokens.size());
    if (permutation_ == "reverse_permutation") std::reverse(tokens.begin(), tokens.end());
    else EXPECT_EQ(permutation_, "identity_permutation");
  }
  void ExpectAllUsed() const { EXPECT_EQ(next_, calls_.size()) << "fewer random calls than kohya made"; }

 private:
  const Json& NextCall(const std::string& kind) {
    static const Json kNone = Json::object({{"call", "none"}});
    if (next_ >= calls_.size()) {
      ADD_FAILURE() << "extra random call " << kind;
      return kNone;
    }
    const Json& c = calls_[next_++];
    EXPECT_EQ(c["call"].get<std::string>(), kind);
    return c;
  }
  const Json& calls_;
  std::string permutation_;
  size_t next_ = 0;
};

SubsetConfig SubsetFrom(const Json& j) {
  SubsetConfig s;
  for (const auto& [k, v] : j.items()) {
    if (k == "keep_tokens") s.keep_tokens = v;
    else if (k == "keep_tokens_separator") s.keep_tokens_separator = v;
    else if (k == "caption_prefix") s.caption_prefix = v;
    else if (k == "caption_suffix") s.caption_suffix = v;
    else if (k == "secondary_separator") s.secondary_separator = v;
    else if (k == "caption_separator") s.caption_separator = v;
    else if (k == "enable_wildcard") s.enable_wildcard = v;
    else if (k == "shuffle_caption") s.shuffle_caption = v;
    else if (k == "caption_dropout_rate") s.caption_dropout_rate = v;
    else if (k == "caption_dropout_every_n_epochs") s.caption_dropout_every_n_epochs = v;
    else if (k == "caption_tag_dropout_rate") s.caption_tag_dropout_rate = v;
    else if (k == "token_warmup_min") s.token_warmup_min = v;
    else if (k == "token_warmup_step") s.token_warmup_step = v;
    else ADD_FAILURE() << "fixture uses a subset key this test does not map: " << k;
  }
  return s;
}

void RunCaptionCase(const Json& c, const std::string& permutation) {
  SCOPED_TRACE(c["id"].get<std::string>() + " " + permutation);
  const SubsetConfig subset = SubsetFrom(c["subset"]);
  std::vector<std::pair<std::string, std::string>> replacements;
  CaptionContext ctx;
  if (c.contains("dataset")) {
    for (const auto& [k, v] : c["dataset"].items()) {
      if (k == "current_epoch") ctx.epoch = v;
      else if (k == "current_step") ctx.step = v;
      else if (k == "max_train_steps") ctx.max_train_steps = v;
      else if (k == "replacements") {
        for (const auto& [from, to] : v.items()) replacements.emplace_back(from, to.get<std::string>());
      } else ADD_FAILURE() << "unmapped dataset key " << k;
    }
  }
  ctx.replacements = &replacements;
  ScriptedRandom random(c["python_random_calls"], permutation);
  EXPECT_EQ(ProcessCaption(subset, c["input"], ctx, random), c["output"].get<std::string>());
  random.ExpectAllUsed();
}

TEST(KohyaCaptions, EveryDeterministicCase) {
  const Json ref = LoadReference();
  const auto& cases = ref["captions"]["deterministic"];
  ASSERT_GT(cases.size(), 10u);
  for (const auto& c : cases) RunCaptionCase(c, "identity_permutation");
}

TEST(KohyaCaptions, EveryShuffleCaseWithInjectedPermutation) {
  const Json ref = LoadReference();
  const auto& cases = ref["captions"]["shuffle_with_permutation_hook"];
  ASSERT_GT(cases.size(), 10u);
  for (const auto& c : cases) RunCaptionCase(c, c["permutation"]);
}

TEST(KohyaCaptions, SeededShuffleIsDeterministicAndKeepsFixedTokens) {
  SubsetConfig s;
  s.shuffle_caption = true;
  s.keep_tokens = 1;
  CaptionContext ctx;
  const std::string in = "sks, a, b, c, d, e, f, g";
  std::set<std::string> seen;
  for (uint64_t k = 0; k < 20; ++k) {
    SeededCaptionRandom r1(DeterministicRng::ForKeys({7, k})), r2(DeterministicRng::ForKeys({7, k}));
    const std::string a = ProcessCaption(s, in, ctx, r1);
    EXPECT_EQ(a, ProcessCaption(s, in, ctx, r2));
    EXPECT_EQ(a.rfind("sks, ", 0), 0u) << a;
    seen.insert(a);
  }
  EXPECT_GT(seen.size(), 10u);
}

}  // namespace
}  // namespace lorad::data
