#include "core/train/sample_prompts.h"

#include <gtest/gtest.h>

namespace lorad::train {
namespace {

TEST(SamplePromptsTest, KohyaSyntax) {
  auto prompts = ParseSamplePrompts(
      "# previews\n"
      "\n"
      "a photo of sks dog, best quality --n lowres, bad anatomy --w 515 --h 768 --d 42 --l 5.5 --s 20\n"
      "  masterpiece, 1girl  \n"
      "a cat --ss euler --cn ignored\n");
  ASSERT_TRUE(prompts.ok()) << prompts.status();
  ASSERT_EQ(prompts->size(), 3u);
  const SamplePrompt& p = (*prompts)[0];
  EXPECT_EQ(p.prompt, "a photo of sks dog, best quality");
  EXPECT_EQ(p.negative_prompt, "lowres, bad anatomy");
  EXPECT_EQ(p.width, 512);  // rounded down to a multiple of 8
  EXPECT_EQ(p.height, 768);
  EXPECT_EQ(p.seed, 42);
  EXPECT_DOUBLE_EQ(p.cfg_scale, 5.5);
  EXPECT_EQ(p.steps, 20);
  EXPECT_EQ(p.line, 3);
  const SamplePrompt& q = (*prompts)[1];
  EXPECT_EQ(q.prompt, "masterpiece, 1girl");
  EXPECT_FALSE(q.width.has_value());
  EXPECT_FALSE(q.seed.has_value());
  EXPECT_EQ(q.steps, 30);
  EXPECT_DOUBLE_EQ(q.cfg_scale, 7.5);
  EXPECT_EQ((*prompts)[2].sampler, "euler");
}

TEST(SamplePromptsTest, BadValuesNameTheLine) {
  auto bad = ParseSamplePrompts("ok\na dog --w wide\n");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("line 2"), std::string::npos) << bad.status();
  EXPECT_NE(bad.status().message().find("--w"), std::string::npos) << bad.status();
  EXPECT_FALSE(ParseSamplePrompts("a dog --s 0").ok());
  EXPECT_FALSE(ParseSamplePrompts("a dog --l -1").ok());
  EXPECT_FALSE(ParseSamplePrompts("a dog --d x").ok());
  EXPECT_EQ(LoadSamplePrompts("/nonexistent/prompts.txt").status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace lorad::train
