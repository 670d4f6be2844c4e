#include "core/planner/rules.h"

#include <cstdlib>
#include <fstream>
#include <set>
#include <string>
#include <vector>

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

// The section headings of shared/seed/lora_training_guide_2025.md that the
// built-in rules cite, as written there (without the leading emoji).
const std::set<std::string>& CitedGuideHeadings() {
  static const auto* headings = new std::set<std::string>{
      "What NOT to Do (Expensive Lessons Learned)",
      "CAME + DoRA Fighting Game Style Experiments",
      "CAME Dataset Size Threshold Discovery",
      "Key Threshold Insights:",
      "Style vs Character Training with CAME:",
      "Training Schedule Insights",
      "Quality Over Speed",
      "Learning Rates (The Critical Setting)",
      "Optimizer Experiments",
      "Quality Over Quantity",
      "Dataset Quality Focus",
  };
  return *headings;
}

// The "quoted" parts of a citation.
std::vector<std::string> QuotedParts(const std::string& text) {
  std::vector<std::string> parts;
  size_t open = text.find('"');
  while (open != std::string::npos) {
    const size_t close = text.find('"', open + 1);
    if (close == std::string::npos) break;
    parts.push_back(text.substr(open + 1, close - open - 1));
    open = text.find('"', close + 1);
  }
  return parts;
}

// Every citation names at least one heading of the guide, in double quotes.
TEST(RulesTest, EveryCitationNamesASectionHeadingOfTheGuide) {
  for (const Rule& rule : DefaultRules().rules) {
    EXPECT_EQ(rule.citation.rfind("DuskFall guide, ", 0), 0u) << rule.id << ": " << rule.citation;
    const std::vector<std::string> cited = QuotedParts(rule.citation);
    EXPECT_FALSE(cited.empty()) << rule.id << " cites no heading: " << rule.citation;
    for (const std::string& heading : cited) {
      EXPECT_TRUE(CitedGuideHeadings().contains(heading)) << rule.id << " cites '" << heading << "'";
    }
  }
}

// With LORAD_GUIDE naming the guide's file (shared/seed/lora_training_guide_2025.md),
// the embedded list is checked against the headings the file really has.
TEST(RulesTest, CitedHeadingsExistInTheGuideFile) {
  const char* path = std::getenv("LORAD_GUIDE");
  if (path == nullptr || *path == '\0') GTEST_SKIP() << "LORAD_GUIDE is not set";
  std::ifstream in(path);
  ASSERT_TRUE(in) << "cannot read LORAD_GUIDE=" << path;
  std::set<std::string> headings;
  bool in_code = false;
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("```", 0) == 0) in_code = !in_code;
    if (in_code || line.empty() || line[0] != '#') continue;
    size_t start = line.find_first_not_of('#');
    // Skip the spaces and the emoji (any non-ASCII bytes) before the title.
    while (start < line.size() && (line[start] == ' ' || static_cast<unsigned char>(line[start]) >= 0x80)) ++start;
    if (start < line.size()) headings.insert(line.substr(start));
  }
  ASSERT_GT(headings.size(), 20u);
  for (const std::string& heading : CitedGuideHeadings()) {
    EXPECT_TRUE(headings.contains(heading)) << "the guide has no heading '" << heading << "'";
  }
}

TEST(RulesTest, EveryKnownFactIsComputedForAFullInput) {
  AdvisorInput input;
  input.kind = TrainingKind::kStyle;
  input.dataset.image_count = 10;
  input.dataset.trigger_word = "ohwx";
  input.dataset.trigger_position = 1;
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
