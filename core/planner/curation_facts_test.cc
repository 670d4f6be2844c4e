#include "core/planner/curation_facts.h"

#include <gtest/gtest.h>

namespace lorad::planner {
namespace {

TEST(CurationFactsTest, MapsEveryFieldTheRulesUse) {
  data::CurationReport report;
  report.images = 12;
  report.train_with_repeats = 120;
  report.below_512 = {{"a.png", 300, 400}};
  report.below_1024 = {{"a.png", 300, 400}, {"b.png", 800, 900}};
  report.exact_duplicates = {{"c.png", "c2.png", "c3.png"}, {"d.png", "d2.png"}};
  report.near_duplicates = {{"e.png", "f.png", 3}};
  report.booru_captions = 10;
  report.natural_captions = 2;
  // keep_tokens 0 (no preview at all): the trigger still comes from the heads.
  report.captions_from_files = 12;
  report.caption_heads = {{"ohwx", 1, 9}, {"1girl", 1, 12}, {"ohwx", 2, 2}, {"smile", 2, 4}};
  report.subsets = {{"img", false, 12, 10, 120, 1, ".txt"}, {"reg", true, 5, 1, 5, 0, ".txt"}};

  auto parsed = FactsFromCurationReport(report, ModelFamily::kSdxl, true);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  const DatasetFacts& facts = *parsed;
  EXPECT_EQ(facts.image_count, 12);
  EXPECT_EQ(facts.images_with_repeats, 120);
  EXPECT_EQ(facts.below_512, 1);
  EXPECT_EQ(facts.below_1024, 2);
  EXPECT_EQ(facts.exact_duplicates, 3);  // 2 extra copies + 1 extra copy
  EXPECT_EQ(facts.near_duplicates, 1);
  EXPECT_EQ(facts.booru_captions, 10);
  EXPECT_EQ(facts.natural_captions, 2);
  EXPECT_EQ(facts.trigger_word, "ohwx");  // 11 of 12 captions; "1girl" is no trigger
  EXPECT_EQ(facts.trigger_position, 2);
  ASSERT_TRUE(facts.keep_tokens.has_value());
  EXPECT_EQ(*facts.keep_tokens, 1);  // the reg subset's 0 is ignored
  EXPECT_EQ(facts.family, ModelFamily::kSdxl);

  // A plain folder dataset: keep_tokens comes from the training config.
  EXPECT_FALSE(FactsFromCurationReport(report, ModelFamily::kSdxl, false)->keep_tokens.has_value());
}

}  // namespace
}  // namespace lorad::planner
