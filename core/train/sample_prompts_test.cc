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

// lorad's own option: the LoRA strength of one preview (kohya has none).
TEST(SamplePromptsTest, LoraStrength) {
  auto prompts = ParseSamplePrompts(
      "a cat --lora_strength 0.6 --ss dpm_2_a\n"
      "a dog --lora_strength 0\n"
      "a fox --lora_strength -1.5 --s 12\n"
      "a cow\n");
  ASSERT_TRUE(prompts.ok()) << prompts.status();
  ASSERT_EQ(prompts->size(), 4u);
  EXPECT_DOUBLE_EQ((*prompts)[0].lora_strength.value(), 0.6);
  EXPECT_EQ((*prompts)[0].sampler, "dpm_2_a");
  EXPECT_DOUBLE_EQ((*prompts)[1].lora_strength.value(), 0.0);
  EXPECT_DOUBLE_EQ((*prompts)[2].lora_strength.value(), -1.5);
  EXPECT_EQ((*prompts)[2].steps, 12);
  EXPECT_FALSE((*prompts)[3].lora_strength.has_value());  // the config's sample_lora_strength

  for (const std::string bad : {"strong", "", "10.5", "-11", "nan", "inf", "0.5x"}) {
    auto refused = ParseSamplePrompts("ok\na cat --lora_strength " + bad + "\n");
    ASSERT_FALSE(refused.ok()) << bad;
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(refused.status().message().find("line 2"), std::string::npos) << refused.status();
    EXPECT_NE(refused.status().message().find("--lora_strength"), std::string::npos) << refused.status();
    EXPECT_NE(refused.status().message().find("-10 to 10"), std::string::npos) << refused.status();
  }
}

}  // namespace
}  // namespace lorad::train
