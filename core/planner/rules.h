// Advisor rules as data. A rule file is TOML (see core/planner/rules.toml, the
// built-in table, for the format and the list of facts):
//
//   [[rule]]
//   id = "never-came-high-lr"
//   severity = "never"                 # info | warn | never
//   when = ["optimizer_family == came", "max_lr >= 5e-4"]   # all must hold
//   unless = []                        # optional: silent when all of these hold
//   message = "CAME at {max_lr} ..."   # {fact} placeholders are filled in
//   citation = "..."
//
// A condition is "FACT OP VALUE" with OP in == != < <= > >=; VALUE is a number,
// a word/quoted string, or another fact's name. A condition on a fact that is
// unknown for this job (e.g. no learning rate set) is false.
#pragma once

#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace lorad::planner {

enum class Severity { kInfo, kWarn, kNever };
absl::string_view SeverityName(Severity severity);

enum class CompareOp { kEq, kNe, kLt, kLe, kGt, kGe };

// A fact's value: a number or a string; absent from the FactMap when unknown.
using FactValue = std::variant<double, std::string>;
using FactMap = absl::flat_hash_map<std::string, FactValue>;

struct Condition {
  std::string fact;
  CompareOp op = CompareOp::kEq;
  // The right-hand side: a literal, or (when set) another fact.
  FactValue literal;
  std::optional<std::string> other_fact;
  std::string text;  // as written, for error messages

  // False when either side is unknown or a string is ordered (<, >).
  bool Holds(const FactMap& facts) const;
};

struct Rule {
  std::string id;
  Severity severity = Severity::kInfo;
  std::vector<Condition> when;
  std::vector<Condition> unless;
  std::string message;  // template with {fact} placeholders
  std::string citation;

  // when all `when` hold and not (`unless` non-empty and all of it holds).
  bool Fires(const FactMap& facts) const;
  // The message with {fact} replaced by the fact's value ("?" when unknown).
  std::string RenderMessage(const FactMap& facts) const;
};

struct RuleSet {
  std::vector<Rule> rules;
};

// The facts a rule may name, each with a one-line description.
struct FactDoc {
  absl::string_view name;
  absl::string_view description;
};
const std::vector<FactDoc>& KnownFacts();

// Parses a rule file. InvalidArgument names the rule id (or index) and the
// problem: missing id/severity/message/citation, duplicate id, unknown fact,
// bad operator, unknown {placeholder}.
absl::StatusOr<RuleSet> LoadRules(absl::string_view toml_text);
// Reads and parses a rule file from disk.
absl::StatusOr<RuleSet> LoadRulesFile(const std::string& path);

// The built-in rules (core/planner/rules.toml compiled in), parsed once.
const RuleSet& DefaultRules();
// The built-in rule file's text.
absl::string_view DefaultRulesToml();

// Appends `extra` to `base`; an id present in both replaces the base rule.
RuleSet MergeRules(RuleSet base, const RuleSet& extra);

}  // namespace lorad::planner
