#include "core/train/sample_prompts.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>

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

// Issue 16: prompt files have a size and prompt-count limit, checked before
// the file is read; sizes and CFG scales are bounded.
TEST(SamplePromptsTest, SizesAndCountsAreLimited) {
  std::string many;
  for (int i = 0; i < 1001; ++i) many += "a cat\n";
  auto too_many = ParseSamplePrompts(many);
  ASSERT_FALSE(too_many.ok());
  EXPECT_NE(too_many.status().message().find("1000"), std::string::npos) << too_many.status();
  EXPECT_TRUE(ParseSamplePrompts(many.substr(6)).ok());  // exactly 1000

  auto long_prompt = ParseSamplePrompts(std::string(20000, 'x') + "\n");
  ASSERT_FALSE(long_prompt.ok());
  EXPECT_NE(long_prompt.status().message().find("16384"), std::string::npos) << long_prompt.status();

  EXPECT_FALSE(ParseSamplePrompts(std::string(2 << 20, '#')).ok());
  auto huge_size = ParseSamplePrompts("a cat --w 1000000\n");
  ASSERT_FALSE(huge_size.ok());
  EXPECT_NE(huge_size.status().message().find("8192"), std::string::npos) << huge_size.status();
  EXPECT_FALSE(ParseSamplePrompts("a cat --l 1e308\n").ok());

  const auto path = std::filesystem::temp_directory_path() / ("lorad_prompts_" + std::to_string(::getpid()));
  {
    std::ofstream out(path, std::ios::binary);
    out << std::string((1 << 20) + 1, '#');
  }
  auto file = LoadSamplePrompts(path);
  std::filesystem::remove(path);
  ASSERT_FALSE(file.ok());
  EXPECT_NE(file.status().message().find("sample_prompts"), std::string::npos) << file.status();
}

}  // namespace
}  // namespace lorad::train
