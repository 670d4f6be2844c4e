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
  report.keep_tokens_preview = {{"1.txt", 0, "", "ohwx, smile"}, {"2.txt", 0, "", "ohwx, park"},
                                {"3.txt", 1, "ohwx", "night, city"}};
  report.subsets = {{"img", false, 12, 10, 120, 1, ".txt"}, {"reg", true, 5, 1, 5, 0, ".txt"}};

  const DatasetFacts facts = FactsFromCurationReport(report, ModelFamily::kSdxl, true);
  EXPECT_EQ(facts.image_count, 12);
  EXPECT_EQ(facts.images_with_repeats, 120);
  EXPECT_EQ(facts.below_512, 1);
  EXPECT_EQ(facts.below_1024, 2);
  EXPECT_EQ(facts.exact_duplicates, 3);  // 2 extra copies + 1 extra copy
  EXPECT_EQ(facts.near_duplicates, 1);
  EXPECT_EQ(facts.booru_captions, 10);
  EXPECT_EQ(facts.natural_captions, 2);
  EXPECT_EQ(facts.leading_trigger_word, "ohwx");
  ASSERT_TRUE(facts.keep_tokens.has_value());
  EXPECT_EQ(*facts.keep_tokens, 1);  // the reg subset's 0 is ignored
  EXPECT_EQ(facts.family, ModelFamily::kSdxl);

  // A plain folder dataset: keep_tokens comes from the training config.
  EXPECT_FALSE(FactsFromCurationReport(report, ModelFamily::kSdxl, false).keep_tokens.has_value());
}

}  // namespace
}  // namespace lorad::planner
