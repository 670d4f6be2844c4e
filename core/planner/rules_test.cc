#include "core/planner/rules.h"

#include <string>

#include <gtest/gtest.h>

#include "core/planner/advisor.h"

namespace lorad::planner {
namespace {

TEST(RulesTest, BuiltInTableLoadsWithUniqueIdsAndCitations) {
  auto rules = LoadRules(DefaultRulesToml());
  ASSERT_TRUE(rules.ok()) << rules.status();
  EXPECT_GE(rules->rules.size(), 15u);
  bool has_never = false;
  for (const Rule& rule : rules->rules) {
    EXPECT_FALSE(rule.citation.empty()) << rule.id;
    has_never |= rule.severity == Severity::kNever;
  }
  EXPECT_TRUE(has_never);
}

TEST(RulesTest, EveryKnownFactIsComputedForAFullInput) {
  AdvisorInput input;
  input.kind = TrainingKind::kStyle;
  input.dataset.image_count = 10;
  input.dataset.leading_trigger_word = "ohwx";
  input.config.learning_rate = 1e-4;
  input.config.max_train_epochs = 2;
  const FactMap facts = ComputeFacts(input);
  for (const FactDoc& doc : KnownFacts()) {
    EXPECT_TRUE(facts.contains(std::string(doc.name))) << doc.name;
  }
  EXPECT_EQ(facts.size(), KnownFacts().size());
}

TEST(RulesTest, ConditionsCompareNumbersStringsAndFacts) {
  FactMap facts = {{"lr", 1e-4}, {"te_lr", 2e-4}, {"optimizer_family", std::string("came")}};
  auto rules = LoadRules(R"(
    [[rule]]
    id = "a"
    severity = "warn"
    when = ["te_lr > lr", "optimizer_family == CAME", "lr <= 1e-4"]
    message = "te {te_lr} lr {lr} {dim}"
    citation = "test"
  )");
  ASSERT_TRUE(rules.ok()) << rules.status();
  const Rule& rule = rules->rules[0];
  EXPECT_TRUE(rule.Fires(facts));  // strings compare case-insensitively
  EXPECT_EQ(rule.RenderMessage(facts), "te 2e-4 lr 1e-4 ?");
  facts.erase("lr");  // unknown fact: condition false, rule silent
  EXPECT_FALSE(rule.Fires(facts));
  facts["lr"] = 3e-4;
  EXPECT_FALSE(rule.Fires(facts));
}

TEST(RulesTest, UnlessSilencesWhenAllHold) {
  auto rules = LoadRules(R"(
    [[rule]]
    id = "batch"
    severity = "info"
    unless = ["batch >= 2", "batch <= 4"]
    message = "batch {batch}"
    citation = "test"
  )");
  ASSERT_TRUE(rules.ok()) << rules.status();
  EXPECT_TRUE(rules->rules[0].Fires({{"batch", 1.0}}));
  EXPECT_FALSE(rules->rules[0].Fires({{"batch", 3.0}}));
  EXPECT_TRUE(rules->rules[0].Fires({{"batch", 5.0}}));
}

void ExpectError(const std::string& toml, const std::string& expected) {
  auto rules = LoadRules(toml);
  ASSERT_FALSE(rules.ok()) << toml;
  EXPECT_NE(rules.status().message().find(expected), std::string::npos)
      << rules.status().message();
}

TEST(RulesTest, BadRuleFilesNameTheRuleAndTheProblem) {
  const std::string head = "[[rule]]\nid = \"r1\"\nseverity = \"warn\"\ncitation = \"c\"\n";
  ExpectError(head + "message = \"m\"\nwhen = [\"speed > 3\"]\n", "rule 'r1'");
  ExpectError(head + "message = \"m\"\nwhen = [\"speed > 3\"]\n", "unknown fact 'speed'");
  ExpectError(head + "message = \"m\"\nwhen = [\"lr ~ 3\"]\n", "no operator");
  ExpectError(head + "message = \"m {speed}\"\n", "{speed}");
  ExpectError(head + "message = \"m\"\nwhen = \"lr > 1\"\n", "'when' must be a list");
  ExpectError(head + "message = \"m\"\ncolour = \"red\"\n", "unknown field 'colour'");
  ExpectError("[[rule]]\nid = \"r2\"\nseverity = \"fatal\"\nmessage = \"m\"\ncitation = \"c\"\n",
              "severity 'fatal'");
  ExpectError("[[rule]]\nid = \"r3\"\nseverity = \"info\"\nmessage = \"m\"\n", "'citation'");
  ExpectError(head + "message = \"m\"\n" + head + "message = \"m\"\n", "duplicate rule id 'r1'");
  ExpectError("title = 1\n", "no [[rule]]");
  ExpectError("[[rule]\n", "line 1");
}

TEST(RulesTest, ExtraRuleFileExtendsAndOverridesTheBuiltIns) {
  auto extra = LoadRules(R"(
    [[rule]]
    id = "batch-size-cost"
    severity = "warn"
    unless = ["batch >= 1", "batch <= 8"]
    message = "batch {batch} outside 1-8"
    citation = "our farm"

    [[rule]]
    id = "sdxl-dim-cap"
    severity = "warn"
    when = ["family == sdxl", "dim > 64"]
    message = "dim {dim} is large for SDXL"
    citation = "our farm"
  )");
  ASSERT_TRUE(extra.ok()) << extra.status();
  const RuleSet merged = MergeRules(DefaultRules(), *extra);
  EXPECT_EQ(merged.rules.size(), DefaultRules().rules.size() + 1);

  AdvisorInput input;
  input.dataset.family = ModelFamily::kSdxl;
  input.dataset.image_count = 30;
  input.config.network_dim = 128;
  input.config.train_batch_size = 6;
  const AdviceReport report = Advise(input, merged);
  bool saw_dim = false;
  for (const Finding& finding : report.findings) {
    EXPECT_NE(finding.rule_id, "batch-size-cost");  // 6 is fine under the override
    if (finding.rule_id == "sdxl-dim-cap") {
      saw_dim = true;
      EXPECT_EQ(finding.message, "dim 128 is large for SDXL");
    }
  }
  EXPECT_TRUE(saw_dim);
}

}  // namespace
}  // namespace lorad::planner
