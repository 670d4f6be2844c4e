#include "core/planner/advisor.h"

#include <functional>
#include <string>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "absl/container/flat_hash_set.h"

namespace lorad::planner {
namespace {

// A character job that follows every rule: no finding at all.
AdvisorInput CleanCharacter() {
  AdvisorInput input;
  input.kind = TrainingKind::kCharacter;
  input.dataset.image_count = 40;
  input.dataset.images_with_repeats = 400;
  input.dataset.booru_captions = 40;
  input.dataset.leading_trigger_word = "ohwx";
  input.dataset.family = ModelFamily::kSdxl;
  input.config.optimizer_type = "came_pytorch.CAME";
  input.config.unet_lr = 6e-5;
  input.config.text_encoder_lr = 3e-5;
  input.config.network_dim = 8;
  input.config.network_alpha = 4;
  input.config.train_batch_size = 2;
  input.config.max_train_epochs = 10;
  input.config.keep_tokens = 1;
  return input;
}

// A 300-image style job that follows every rule.
AdvisorInput CleanLargeStyle() {
  AdvisorInput input;
  input.kind = TrainingKind::kStyle;
  input.dataset.image_count = 300;
  input.dataset.images_with_repeats = 300;
  input.dataset.natural_captions = 300;
  input.dataset.family = ModelFamily::kSdxl;
  input.config.optimizer_type = "AdamW8bit";
  input.config.learning_rate = 5e-4;
  input.config.network_train_unet_only = true;
  input.config.network_dim = 32;
  input.config.network_alpha = 16;
  input.config.train_batch_size = 4;
  input.config.max_train_epochs = 50;  // 75 steps/epoch x 50 = 3750
  return input;
}

// A 120-image style job with CAME + DoRA 16/8 at 1e-4, TE lr 0.
AdvisorInput CleanMidStyle() {
  AdvisorInput input = CleanLargeStyle();
  input.dataset.image_count = 120;
  input.dataset.images_with_repeats = 240;
  input.config.optimizer_type = "CAME";
  input.config.learning_rate = 1e-4;
  input.config.network_dim = 16;
  input.config.network_alpha = 8;
  input.config.network_args = {"algo=lora", "dora_wd=True"};
  return input;
}

std::vector<std::string> FiredIds(const AdviceReport& report) {
  std::vector<std::string> ids;
  for (const Finding& finding : report.findings) ids.push_back(finding.rule_id);
  return ids;
}

const Finding* FindRule(const AdviceReport& report, const std::string& id) {
  for (const Finding& finding : report.findings) {
    if (finding.rule_id == id) return &finding;
  }
  return nullptr;
}

TEST(AdvisorTest, CleanBaselinesHaveNoFindings) {
  for (const AdvisorInput& input : {CleanCharacter(), CleanLargeStyle(), CleanMidStyle()}) {
    const AdviceReport report = Advise(input);
    EXPECT_TRUE(report.findings.empty()) << RenderText(report);
    EXPECT_FALSE(report.blocking());
  }
}

struct RuleCase {
  std::string rule_id;
  std::function<AdvisorInput()> trigger;
  std::function<AdvisorInput()> near_miss;  // just on the silent side of the rule
  std::string message_contains;
};

std::vector<RuleCase> Cases() {
  return {
      {"never-came-high-lr",
       [] { auto in = CleanCharacter(); in.config.unet_lr = 5e-4; return in; },
       [] { auto in = CleanCharacter(); in.config.unet_lr = 4.9e-4; return in; }, "5e-4"},
      {"character-small-dataset",
       [] { auto in = CleanCharacter(); in.config.optimizer_type = "AdamW"; return in; },
       [] { auto in = CleanCharacter(); in.config.optimizer_type = "AdamW";
            in.dataset.image_count = 50; return in; }, "AdamW"},
      {"style-50-100-came-lr",
       [] { auto in = CleanMidStyle(); in.dataset.image_count = 80;
            in.config.learning_rate = 6e-5; return in; },
       [] { auto in = CleanMidStyle(); in.dataset.image_count = 80;
            in.config.optimizer_type = "AdamW"; in.config.learning_rate = 6e-5; return in; },
       "6e-5"},
      {"style-50-100-came-weak",
       [] { auto in = CleanMidStyle(); in.dataset.image_count = 80; return in; },
       [] { auto in = CleanMidStyle(); in.dataset.image_count = 80;
            in.config.learning_rate = 9e-5; return in; }, "80 here"},
      {"style-100-150-came-dora",
       [] { auto in = CleanMidStyle(); in.config.network_args.clear(); return in; },
       [] { auto in = CleanMidStyle(); in.config.network_args.clear();
            in.dataset.image_count = 151; return in; }, "DoRA 0"},
      {"style-large-adamw",
       [] { auto in = CleanLargeStyle(); in.config.optimizer_type = "CAME";
            in.config.learning_rate = 1e-4; return in; },
       [] { auto in = CleanLargeStyle(); in.config.optimizer_type = "CAME";
            in.config.learning_rate = 1e-4; in.dataset.image_count = 200; return in; },
       "CAME at lr 1e-4"},
      {"style-300-lr-too-low",
       [] { auto in = CleanLargeStyle(); in.config.learning_rate = 6e-5; return in; },
       [] { auto in = CleanLargeStyle(); in.config.learning_rate = 7e-5; return in; }, "300 images"},
      {"style-steps",
       [] { auto in = CleanLargeStyle(); in.config.max_train_epochs = 10; return in; },
       [] { auto in = CleanLargeStyle(); in.config.max_train_epochs = 48; return in; },
       "750 steps (300 images x repeats / batch 4 = 75 steps/epoch x 10 epochs)"},
      {"te-lr-not-below-unet",
       [] { auto in = CleanCharacter(); in.config.unet_lr.reset();
            in.config.text_encoder_lr.reset(); in.config.learning_rate = 6e-5; return in; },
       [] { auto in = CleanCharacter(); in.config.text_encoder_lr = 5.9e-5; return in; },
       "Text encoder lr 6e-5 is not below the U-Net lr 6e-5"},
      {"style-te-lr-zero",
       [] { auto in = CleanLargeStyle(); in.config.network_train_unet_only = false;
            in.config.text_encoder_lr = 1e-4; return in; },
       [] { auto in = CleanLargeStyle(); in.config.network_train_unet_only = false;
            in.config.text_encoder_lr = 0.0; return in; }, "1e-4"},
      {"batch-size-cost",
       [] { auto in = CleanCharacter(); in.config.train_batch_size = 8; return in; },
       [] { auto in = CleanCharacter(); in.config.train_batch_size = 4; return in; },
       "train_batch_size 8"},
      {"dataset-duplicates",
       [] { auto in = CleanCharacter(); in.dataset.exact_duplicates = 1;
            in.dataset.near_duplicates = 2; return in; },
       CleanCharacter, "1 exact and 2 near"},
      {"dataset-low-res",
       [] { auto in = CleanCharacter(); in.dataset.below_1024 = 3; return in; },
       [] { auto in = CleanCharacter(); in.dataset.below_1024 = 3;
            in.dataset.family = ModelFamily::kSd15; return in; }, "3 of 40 images"},
      {"dataset-mixed-captions",
       [] { auto in = CleanCharacter(); in.dataset.natural_captions = 2; return in; },
       [] { auto in = CleanCharacter(); in.dataset.booru_captions = 0;
            in.dataset.natural_captions = 40; return in; }, "40 booru-tag, 2 natural"},
      {"keep-tokens-trigger",
       [] { auto in = CleanCharacter(); in.config.keep_tokens = 0; return in; },
       [] { auto in = CleanCharacter(); in.config.keep_tokens = 0;
            in.dataset.keep_tokens = 1; return in; }, "'ohwx'"},
  };
}

TEST(AdvisorTest, EachRuleFiresOnItsTriggerAndNotOnTheNearMiss) {
  for (const RuleCase& rule_case : Cases()) {
    SCOPED_TRACE(rule_case.rule_id);
    const AdviceReport fired = Advise(rule_case.trigger());
    const Finding* finding = FindRule(fired, rule_case.rule_id);
    ASSERT_NE(finding, nullptr) << RenderText(fired);
    EXPECT_NE(finding->message.find(rule_case.message_contains), std::string::npos)
        << finding->message;
    EXPECT_FALSE(finding->citation.empty());
    const AdviceReport silent = Advise(rule_case.near_miss());
    EXPECT_EQ(FindRule(silent, rule_case.rule_id), nullptr) << RenderText(silent);
  }
}

TEST(AdvisorTest, EveryBuiltInRuleHasATestCase) {
  absl::flat_hash_set<std::string> tested;
  for (const RuleCase& rule_case : Cases()) tested.insert(rule_case.rule_id);
  for (const Rule& rule : DefaultRules().rules) EXPECT_TRUE(tested.contains(rule.id)) << rule.id;
}

TEST(AdvisorTest, NeverRuleBlocksUnlessForced) {
  AdvisorInput input = CleanCharacter();
  input.config.learning_rate = 5e-4;  // TE gets learning_rate: max_lr 5e-4
  input.config.text_encoder_lr.reset();
  const AdviceReport blocked = Advise(input);
  EXPECT_TRUE(blocked.blocking());
  ASSERT_EQ(blocked.never_findings().size(), 1u);
  EXPECT_EQ(blocked.never_findings()[0].rule_id, "never-came-high-lr");
  EXPECT_NE(RenderText(blocked).find("blocked"), std::string::npos);

  const AdviceReport forced = Advise(input, AdviseOptions{.force = true});
  EXPECT_FALSE(forced.blocking());
  EXPECT_EQ(forced.never_findings().size(), 1u);  // still reported
  EXPECT_NE(RenderText(forced).find("forced"), std::string::npos);

  // Warnings alone never block.
  AdvisorInput warned = CleanCharacter();
  warned.dataset.exact_duplicates = 3;
  EXPECT_FALSE(Advise(warned).blocking());
}

TEST(AdvisorTest, StepCountUsesRepeatsEpochsBatchAndAccumulation) {
  AdvisorInput input = CleanLargeStyle();
  input.dataset.images_with_repeats = 301;  // ceil(301 / 4) = 76
  input.config.max_train_epochs = 10;
  input.config.gradient_accumulation_steps = 2;
  AdviceReport report = Advise(input);
  EXPECT_EQ(report.computed_steps, 380);
  EXPECT_EQ(report.steps_formula,
            "301 images x repeats / batch 4 = 76 steps/epoch x 10 epochs / 2 accumulation");

  input.config.max_train_epochs.reset();
  input.config.max_train_steps = 5000;
  EXPECT_EQ(Advise(input).computed_steps, 5000);
  input.config = train::TrainConfig();
  report = Advise(input);
  EXPECT_EQ(report.computed_steps, 1600);  // kohya's default
  EXPECT_EQ(report.steps_formula, "max_train_steps = 1600");
}

TEST(AdvisorTest, JsonRenderingIsParseableAndComplete) {
  AdvisorInput input = CleanCharacter();
  input.config.unet_lr = 6e-4;
  const nlohmann::json json = nlohmann::json::parse(RenderJson(Advise(input)));
  EXPECT_TRUE(json["blocking"].get<bool>());
  EXPECT_EQ(json["computed_steps"].get<int64_t>(), 2000);  // 400 / 2 x 10
  ASSERT_FALSE(json["findings"].empty());
  EXPECT_EQ(json["findings"][0]["rule_id"], "never-came-high-lr");
  EXPECT_EQ(json["findings"][0]["severity"], "never");
  EXPECT_NE(json["findings"][0]["message"].get<std::string>().find("6e-4"), std::string::npos);
}

TEST(AdvisorTest, ReadsTheConfigThroughTheTrainersParserWithSections) {
  const auto config = train::ParseTrainOptions(R"(
    [model_arguments]
    pretrained_model_name_or_path = "sdxl.safetensors"
    [optimizer_arguments]
    optimizer_type = "came_pytorch.CAME"
    learning_rate = 1e-4
    unet_lr = 2e-4
    text_encoder_lr = 0
    [network_arguments]
    network_dim = 16
    network_alpha = 8
    network_args = ["algo=lora", "dora_wd=True"]
    network_train_unet_only = true
    [training_arguments]
    train_batch_size = 3
    max_train_epochs = 12
    keep_tokens = 2
  )", {});
  ASSERT_TRUE(config.ok()) << config.status();
  AdvisorInput input;
  input.config = *config;
  const FactMap map = ComputeFacts(input);
  EXPECT_EQ(std::get<std::string>(map.at("optimizer_type")), "came_pytorch.CAME");
  EXPECT_EQ(std::get<std::string>(map.at("optimizer_family")), "came");
  EXPECT_DOUBLE_EQ(std::get<double>(map.at("lr")), 2e-4);
  EXPECT_DOUBLE_EQ(std::get<double>(map.at("te_lr")), 0.0);
  EXPECT_DOUBLE_EQ(std::get<double>(map.at("dim")), 16.0);
  EXPECT_DOUBLE_EQ(std::get<double>(map.at("alpha")), 8.0);
  EXPECT_DOUBLE_EQ(std::get<double>(map.at("dora")), 1.0);
  EXPECT_DOUBLE_EQ(std::get<double>(map.at("batch")), 3.0);
  EXPECT_DOUBLE_EQ(std::get<double>(map.at("epochs")), 12.0);
  EXPECT_DOUBLE_EQ(std::get<double>(map.at("keep_tokens")), 2.0);
}

TEST(AdvisorTest, SeesTheTrainersDefaultsAndCommandLineOverrides) {
  // Nothing set: training uses kohya's AdamW at 2e-6, dim 4 / alpha 1, 1600 steps.
  auto config = train::ParseTrainOptions("", {});
  ASSERT_TRUE(config.ok()) << config.status();
  AdvisorInput input;
  input.config = *config;
  FactMap map = ComputeFacts(input);
  EXPECT_EQ(std::get<std::string>(map.at("optimizer_family")), "adamw");
  EXPECT_DOUBLE_EQ(std::get<double>(map.at("lr")), 2e-6);
  EXPECT_DOUBLE_EQ(std::get<double>(map.at("dim")), 4.0);
  EXPECT_DOUBLE_EQ(std::get<double>(map.at("alpha")), 1.0);
  EXPECT_DOUBLE_EQ(std::get<double>(map.at("steps")), 1600.0);
  // An override wins over the file, as on lorad-train's command line.
  config = train::ParseTrainOptions("learning_rate = 1e-4\n", {{"learning_rate", "3e-4"}});
  ASSERT_TRUE(config.ok()) << config.status();
  input.config = *config;
  map = ComputeFacts(input);
  EXPECT_DOUBLE_EQ(std::get<double>(map.at("lr")), 3e-4);
}

TEST(AdvisorTest, ConfigErrorsAreTheTrainersAndNameTheKey) {
  auto bad = train::ParseTrainOptions("learning_rate = \"fast\"\n", {});
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("learning_rate"), std::string::npos);
  bad = train::ParseTrainOptions("network_dim = 8.5\n", {});
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("network_dim"), std::string::npos);
  bad = train::ParseTrainOptions("network_args = [[\"conv_dim=4\"]]\n", {});
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("network_args"), std::string::npos) << bad.status();
  bad = train::ParseTrainOptions("learning_rate = = 1\n", {});
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("line 1"), std::string::npos) << bad.status();
  // Numeric strings are accepted, as argparse would; a single string is one
  // network_args item, as the trainer reads it.
  auto ok = train::ParseTrainOptions("learning_rate = \"1e-4\"\nnetwork_args = \"conv_dim=4\"\n", {});
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_DOUBLE_EQ(ok->learning_rate, 1e-4);
  EXPECT_EQ(ok->network_args, std::vector<std::string>{"conv_dim=4"});
}

TEST(AdvisorTest, DetectsLeadingTriggerWord) {
  EXPECT_EQ(DetectLeadingTriggerWord({"ohwx, 1girl, smile", "OHWX, solo", "ohwx, outdoors",
                                      "ohwx,  night", "1girl, ohwx"}),
            "ohwx");
  EXPECT_EQ(DetectLeadingTriggerWord({"sks woman, smiling", "sks woman, park"}), "sks woman");
  // Natural-language sentences are not triggers, nor is a minority tag.
  EXPECT_EQ(DetectLeadingTriggerWord({"a photo of a dog on grass", "a photo of a cat on a mat"}),
            "");
  EXPECT_EQ(DetectLeadingTriggerWord({"ohwx, a", "ohwx, b", "1girl, c", "solo, d"}), "");
  EXPECT_EQ(DetectLeadingTriggerWord({"ohwx, only one"}), "");
}

TEST(AdvisorTest, ParsesKindAndFamily) {
  EXPECT_EQ(*ParseTrainingKind("Style"), TrainingKind::kStyle);
  EXPECT_EQ(*ParseTrainingKind("character"), TrainingKind::kCharacter);
  EXPECT_FALSE(ParseTrainingKind("concept").ok());
  EXPECT_EQ(*ParseModelFamily("SDXL"), ModelFamily::kSdxl);
  EXPECT_EQ(*ParseModelFamily("sd1.5"), ModelFamily::kSd15);
  EXPECT_FALSE(ParseModelFamily("flux").ok());
}

}  // namespace
}  // namespace lorad::planner
