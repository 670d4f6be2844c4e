#include "core/planner/advisor.h"

#include <functional>
#include <string>

#include <gtest/gtest.h>

#include <optional>
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
  input.dataset.trigger_word = "ohwx";
  input.dataset.trigger_position = 1;
  input.dataset.family = ModelFamily::kSdxl;
  input.config.optimizer_type = "came_pytorch.CAME";
  input.config.unet_lr = 6e-5;
  input.config.text_encoder_lr = 3e-5;
  input.config.network_dim = 8;
  input.config.network_alpha = 4;
  input.config.train_batch_size = 2;
  input.config.max_train_epochs = 10;
  input.config.keep_tokens = 1;
  input.config.shuffle_caption = true;
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

// A copy: callers often pass a temporary report.
std::optional<Finding> FindRule(const AdviceReport& report, const std::string& id) {
  for (const Finding& finding : report.findings) {
    if (finding.rule_id == id) return finding;
  }
  return std::nullopt;
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
      {"style-came-lr-low",
       [] { auto in = CleanMidStyle(); in.config.learning_rate = 6e-5; return in; },
       [] { auto in = CleanMidStyle(); in.config.optimizer_type = "AdamW";
            in.config.learning_rate = 6e-5; return in; }, "lr 6e-5"},
      {"style-50-100-came-weak",
       [] { auto in = CleanMidStyle(); in.dataset.image_count = 80; return in; },
       [] { auto in = CleanMidStyle(); in.dataset.image_count = 80;
            in.config.learning_rate = 9e-5; return in; }, "80 here"},
      {"style-100-150-came-dora",
       [] { auto in = CleanMidStyle(); in.config.network_args.clear(); return in; },
       [] { auto in = CleanMidStyle(); in.config.network_args.clear();
            in.dataset.image_count = 151; return in; }, "without DoRA"},
      {"style-large-adamw",
       [] { auto in = CleanLargeStyle(); in.config.optimizer_type = "CAME";
            in.config.learning_rate = 1e-4; return in; },
       [] { auto in = CleanLargeStyle(); in.config.optimizer_type = "CAME";
            in.config.learning_rate = 1e-4; in.dataset.image_count = 200; return in; },
       "CAME at lr 1e-4"},
      {"style-large-adamw-lr",
       [] { auto in = CleanLargeStyle(); in.config.learning_rate = 4e-4; return in; },
       [] { auto in = CleanLargeStyle(); in.config.learning_rate = 4e-4;
            in.dataset.image_count = 200; return in; }, "lr 4e-4"},
      {"style-steps",
       [] { auto in = CleanLargeStyle(); in.config.max_train_epochs = 10; return in; },
       [] { auto in = CleanLargeStyle(); in.config.max_train_epochs = 48; return in; },
       "750 steps with AdamW8bit (300 images x repeats / batch 4 = 75 steps/epoch x 10 epochs)"},
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
      {"clip-skip-range",
       [] { auto in = CleanCharacter(); in.config.clip_skip = 3; return in; },
       [] { auto in = CleanCharacter(); in.config.clip_skip = 2; return in; }, "clip_skip 3"},
      {"batch-size-cost",
       [] { auto in = CleanCharacter(); in.config.train_batch_size = 1; return in; },
       // The guide: higher batch sizes when VRAM allows.
       [] { auto in = CleanCharacter(); in.config.train_batch_size = 8; return in; },
       "train_batch_size 1"},
      {"dataset-duplicates",
       [] { auto in = CleanCharacter(); in.dataset.exact_duplicates = 1;
            in.dataset.near_duplicates = 2; return in; },
       CleanCharacter, "1 exact and 2 near"},
      {"dataset-low-res",
       [] { auto in = CleanCharacter(); in.dataset.below_512 = 2; in.dataset.below_1024 = 3;
            return in; },
       [] { auto in = CleanCharacter(); in.dataset.below_1024 = 3; return in; }, "2 of 40 images"},
      {"dataset-sdxl-below-1024",
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
    std::optional<Finding> finding = FindRule(fired, rule_case.rule_id);
    ASSERT_TRUE(finding.has_value()) << RenderText(fired);
    EXPECT_NE(finding->message.find(rule_case.message_contains), std::string::npos)
        << finding->message;
    EXPECT_FALSE(finding->citation.empty());
    const AdviceReport silent = Advise(rule_case.near_miss());
    EXPECT_FALSE(FindRule(silent, rule_case.rule_id).has_value()) << RenderText(silent);
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

TEST(AdvisorTest, DetectsTheTriggerWordAndItsPosition) {
  // "ohwx" opens 9 of 10 captions (1 of them at tag 2); "1girl" is no trigger.
  TriggerWord trigger =
      DetectTriggerWord({{"1girl", 1, 10}, {"ohwx", 1, 8}, {"ohwx", 2, 1}, {"smile", 3, 4}}, 10);
  EXPECT_EQ(trigger.word, "ohwx");
  EXPECT_EQ(trigger.position, 2);
  EXPECT_EQ(DetectTriggerWord({{"sks woman", 1, 2}}, 2).word, "sks woman");
  // Sentences, subject counts and minority tags are no triggers.
  EXPECT_EQ(DetectTriggerWord({{"a photo of a dog", 1, 5}}, 5).word, "");
  EXPECT_EQ(DetectTriggerWord({{"2girls", 1, 5}, {"solo", 2, 5}, {"multiple boys", 1, 5}}, 5).word, "");
  EXPECT_EQ(DetectTriggerWord({{"ohwx", 1, 7}}, 10).word, "");
  EXPECT_EQ(DetectTriggerWord({{"ohwx", 1, 1}}, 1).word, "");
  // A tie goes to the earlier position.
  trigger = DetectTriggerWord({{"smile", 2, 10}, {"ohwx", 1, 10}}, 10);
  EXPECT_EQ(trigger.word, "ohwx");
  EXPECT_EQ(trigger.position, 1);
}

// The rule exists for keep_tokens = 0: it fires whenever the trigger is not
// protected from shuffling or tag dropout, and only then.
TEST(AdvisorTest, KeepTokensRuleFiresWhenTheTriggerIsNotProtected) {
  AdvisorInput input = CleanCharacter();
  input.config.keep_tokens = 0;
  std::optional<Finding> finding = FindRule(Advise(input), "keep-tokens-trigger");
  ASSERT_TRUE(finding.has_value());
  EXPECT_NE(finding->message.find("keep_tokens = 0"), std::string::npos) << finding->message;
  // keep_tokens 1 with the trigger at tag 2: still unprotected, asks for 2.
  input.config.keep_tokens = 1;
  input.dataset.trigger_position = 2;
  finding = FindRule(Advise(input), "keep-tokens-trigger");
  ASSERT_TRUE(finding.has_value());
  EXPECT_NE(finding->message.find("set keep_tokens = 2"), std::string::npos) << finding->message;
  input.config.keep_tokens = 2;
  EXPECT_FALSE(FindRule(Advise(input), "keep-tokens-trigger").has_value());
  // Nothing moves the tags: no shuffle, no tag dropout.
  input.config.keep_tokens = 0;
  input.config.shuffle_caption = false;
  EXPECT_FALSE(FindRule(Advise(input), "keep-tokens-trigger").has_value());
  input.config.caption_tag_dropout_rate = 0.1;  // dropout drops unprotected tags
  EXPECT_TRUE(FindRule(Advise(input), "keep-tokens-trigger").has_value());
  // The dataset_config's shuffle_caption = false wins over the config's.
  input.config.caption_tag_dropout_rate = 0;
  input.config.shuffle_caption = true;
  input.dataset.shuffle_caption = false;
  EXPECT_FALSE(FindRule(Advise(input), "keep-tokens-trigger").has_value());
  // No trigger word: nothing to protect.
  input = CleanCharacter();
  input.config.keep_tokens = 0;
  input.dataset.trigger_word.clear();
  input.dataset.trigger_position = 0;
  EXPECT_FALSE(FindRule(Advise(input), "keep-tokens-trigger").has_value());
}

// DoRA as the trainer's network_args parser reads it, in every spelling it accepts.
TEST(AdvisorTest, RecognisesDoraInTheTrainersSpellings) {
  const auto dora = [](const std::string& module, std::vector<std::string> args) {
    AdvisorInput input;
    input.config.network_module = module;
    input.config.network_args = std::move(args);
    const FactMap facts = ComputeFacts(input);
    const auto found = facts.find("dora");
    return found == facts.end() ? -1.0 : std::get<double>(found->second);
  };
  // The guide's own configuration.
  EXPECT_EQ(dora("lycoris.kohya", {"algo=lora", "use_dora=True", "conv_dim=16", "conv_alpha=8"}), 1.0);
  EXPECT_EQ(dora("networks.lora", {"dora_wd=True"}), 1.0);
  EXPECT_EQ(dora("networks.lora", {"dora_wd=true"}), 1.0);
  EXPECT_EQ(dora("networks.lora", {"dora_wd=1"}), 1.0);
  EXPECT_EQ(dora("lycoris.kohya", {"algo=locon", " use_dora = \"True\" "}), 1.0);
  EXPECT_EQ(dora("lycoris.kohya", {"algo=loha", "dora_wd=yes"}), 1.0);
  EXPECT_EQ(dora("networks.lora", {"dora_wd=False"}), 0.0);
  EXPECT_EQ(dora("networks.lora", {}), 0.0);
  // What the trainer refuses (no LyCORIS algo is called "dora") is unknown, not "no DoRA".
  EXPECT_EQ(dora("lycoris.kohya", {"algo=dora"}), -1.0);
  EXPECT_EQ(dora("networks.lora", {"use_dora=maybe"}), -1.0);
}

TEST(AdvisorTest, OptimizerFamiliesCoverEveryKohyaSpelling) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"", "adamw"}, {"AdamW", "adamw"}, {"AdamW8bit", "adamw"}, {"PagedAdamW8bit", "adamw"},
      {"bitsandbytes.optim.AdamW8bit", "adamw"}, {"AdamWScheduleFree", "adamw"},
      {"Lion", "lion"}, {"Lion8bit", "lion"}, {"PagedLion8bit", "lion"},
      {"Adafactor", "adafactor"}, {"transformers.optimization.Adafactor", "adafactor"},
      {"Prodigy", "prodigy"}, {"prodigyopt.Prodigy", "prodigy"},
      {"CAME", "came"}, {"came_pytorch.CAME", "came"}, {"LoraEasyCustomOptimizer.came.CAME", "came"},
      {"DAdaptation", "dadapt"}, {"DAdaptAdam", "dadapt"}, {"DAdaptLion", "dadapt"},
      {"dadaptation.DAdaptAdanIP", "dadapt"}, {"SGDNesterov", "sgd"}, {"SGDNesterov8bit", "sgd"},
      {"LoraEasyCustomOptimizer.compass.Compass", "compass"},
  };
  for (const auto& [name, family] : cases) EXPECT_EQ(OptimizerFamily(name), family) << name;
}

// The guide's 3600+ steps for style consistency comes from its general setup:
// every family but CAME (whose style results sit at 630 steps) is held to it.
TEST(AdvisorTest, StepAdviceCoversEveryOptimizerFamily) {
  for (const std::string optimizer :
       {"AdamW8bit", "Lion", "Adafactor", "Prodigy", "DAdaptAdam", "SGDNesterov",
        "LoraEasyCustomOptimizer.compass.Compass"}) {
    AdvisorInput input = CleanLargeStyle();
    input.config.optimizer_type = optimizer;
    input.config.max_train_epochs = 10;  // 750 steps
    std::optional<Finding> finding = FindRule(Advise(input), "style-steps");
    ASSERT_TRUE(finding.has_value()) << optimizer;
    EXPECT_NE(finding->message.find("750 steps with " + optimizer), std::string::npos) << finding->message;
    input.config.max_train_epochs = 49;  // 3675 steps
    EXPECT_FALSE(FindRule(Advise(input), "style-steps").has_value()) << optimizer;
  }
  AdvisorInput came = CleanMidStyle();
  came.config.optimizer_type = "LoraEasyCustomOptimizer.came.CAME";
  came.config.max_train_epochs = 10;  // 600 steps
  EXPECT_FALSE(FindRule(Advise(came), "style-steps").has_value());
  // Characters get no step floor from the guide.
  AdvisorInput character = CleanCharacter();
  character.config.optimizer_type = "AdamW";
  EXPECT_FALSE(FindRule(Advise(character), "style-steps").has_value());
}

TEST(AdvisorTest, ParsesKindAndFamily) {
  EXPECT_EQ(*ParseTrainingKind("Style"), TrainingKind::kStyle);
  EXPECT_EQ(*ParseTrainingKind("character"), TrainingKind::kCharacter);
  EXPECT_EQ(*ParseTrainingKind("Concept"), TrainingKind::kConcept);
  auto bad = ParseTrainingKind("landscape");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("character, style, concept"), std::string::npos);
  EXPECT_EQ(*ParseModelFamily("SDXL"), ModelFamily::kSdxl);
  EXPECT_EQ(*ParseModelFamily("sd1.5"), ModelFamily::kSd15);
  EXPECT_FALSE(ParseModelFamily("flux").ok());
}

}  // namespace
}  // namespace lorad::planner
