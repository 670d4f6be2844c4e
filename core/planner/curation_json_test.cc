#include "core/planner/curation_json.h"

#include <gtest/gtest.h>

namespace lorad::planner {
namespace {

TEST(CurationJsonTest, ReadsTheFieldsTheRulesUse) {
  const char* report = R"({
    "images": 12, "train_images_with_repeats": 120,
    "subsets": [{"is_reg": false, "keep_tokens": 1}, {"is_reg": true, "keep_tokens": 0}],
    "exact_duplicates": [["a.png", "b.png", "c.png"], ["d.png", "e.png"]],
    "near_duplicates": [{"a": "x", "b": "y", "distance": 2}],
    "below_512": [{"path": "s.png", "width": 300, "height": 300}],
    "below_1024": [{"path": "s.png", "width": 300, "height": 300}, {"path": "m.png", "width": 800, "height": 900}],
    "booru_captions": 7, "natural_captions": 5,
    "captions_from_files": 12,
    "caption_heads": [{"tag": "1girl", "position": 2, "count": 12}, {"tag": "ohwx", "position": 1, "count": 12}]
  })";
  auto facts = FactsFromCurationJson(report, ModelFamily::kSdxl, /*from_dataset_config=*/true);
  ASSERT_TRUE(facts.ok()) << facts.status();
  EXPECT_EQ(facts->image_count, 12);
  EXPECT_EQ(facts->images_with_repeats, 120);
  EXPECT_EQ(facts->exact_duplicates, 3);  // groups of 3 and 2: 2 + 1 extra copies
  EXPECT_EQ(facts->near_duplicates, 1);
  EXPECT_EQ(facts->below_512, 1);
  EXPECT_EQ(facts->below_1024, 2);
  EXPECT_EQ(facts->booru_captions, 7);
  EXPECT_EQ(facts->natural_captions, 5);
  EXPECT_EQ(facts->trigger_word, "ohwx");
  EXPECT_EQ(facts->trigger_position, 1);
  ASSERT_TRUE(facts->keep_tokens.has_value());
  EXPECT_EQ(*facts->keep_tokens, 1);
  EXPECT_EQ(facts->family, ModelFamily::kSdxl);

  // The dataset facts reach the rules: duplicates and mixed captions fire.
  AdvisorInput input;
  input.dataset = *facts;
  const AdviceReport advice = Advise(input);
  bool duplicates = false, mixed = false;
  for (const auto& f : advice.findings) {
    duplicates |= f.rule_id == "dataset-duplicates";
    mixed |= f.rule_id == "dataset-mixed-captions";
  }
  EXPECT_TRUE(duplicates);
  EXPECT_TRUE(mixed);
}

TEST(CurationJsonTest, RejectsWhatIsNotAReport) {
  EXPECT_EQ(FactsFromCurationJson("not json", ModelFamily::kUnknown).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(FactsFromCurationJson("{\"x\": 1}", ModelFamily::kUnknown).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(FactsFromCurationJson("{\"images\": \"many\"}", ModelFamily::kUnknown).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(FactsFromCurationJson("{\"images\": 1, \"caption_heads\": [{\"tag\": 3}]}", ModelFamily::kUnknown)
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace lorad::planner
