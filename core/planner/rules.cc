#include "core/planner/rules.h"

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <utility>

#include <toml++/toml.h>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/planner/number_format.h"
#include "core/planner/rules_data.h"
#include "core/base/toml.h"

namespace lorad::planner {
namespace {

const std::vector<std::pair<absl::string_view, CompareOp>>& Operators() {
  // Two-character operators first so "<=" is not read as "<".
  static const auto* ops = new std::vector<std::pair<absl::string_view, CompareOp>>{
      {"==", CompareOp::kEq}, {"!=", CompareOp::kNe}, {"<=", CompareOp::kLe},
      {">=", CompareOp::kGe}, {"<", CompareOp::kLt},  {">", CompareOp::kGt}};
  return *ops;
}

bool IsKnownFact(absl::string_view name) {
  for (const FactDoc& doc : KnownFacts()) {
    if (doc.name == name) return true;
  }
  return false;
}

bool IsIdentifier(absl::string_view text) {
  if (text.empty()) return false;
  for (char c : text) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '_') return false;
  }
  return true;
}

absl::StatusOr<Condition> ParseCondition(absl::string_view text) {
  Condition condition;
  condition.text = std::string(text);
  const absl::string_view trimmed = absl::StripAsciiWhitespace(text);
  size_t op_pos = absl::string_view::npos;
  size_t op_len = 0;
  for (const auto& [symbol, op] : Operators()) {
    const size_t pos = trimmed.find(symbol);
    if (pos != absl::string_view::npos && (op_pos == absl::string_view::npos || pos < op_pos ||
                                           (pos == op_pos && symbol.size() > op_len))) {
      op_pos = pos;
      op_len = symbol.size();
      condition.op = op;
    }
  }
  if (op_pos == absl::string_view::npos) {
    return absl::InvalidArgumentError(absl::StrCat(
        "condition '", std::string(text), "' has no operator (use == != < <= > >=)"));
  }
  const absl::string_view fact = absl::StripAsciiWhitespace(trimmed.substr(0, op_pos));
  absl::string_view value = absl::StripAsciiWhitespace(trimmed.substr(op_pos + op_len));
  if (!IsKnownFact(fact)) {
    return absl::InvalidArgumentError(
        absl::StrCat("condition '", std::string(text), "' names unknown fact '", std::string(fact),
                     "' (known facts are listed in core/planner/rules.toml)"));
  }
  condition.fact = std::string(fact);
  if (value.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("condition '", std::string(text), "' has no value after the operator"));
  }
  double number = 0;
  if (absl::SimpleAtod(value, &number)) {
    condition.literal = number;
  } else if (value.size() >= 2 && (value.front() == '"' || value.front() == '\'') &&
             value.back() == value.front()) {
    condition.literal = std::string(value.substr(1, value.size() - 2));
  } else if (IsKnownFact(value)) {
    condition.other_fact = std::string(value);
  } else if (IsIdentifier(value)) {
    condition.literal = std::string(value);
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "condition '", std::string(text), "': value '", std::string(value),
        "' is neither a number, a word, a quoted string nor a fact"));
  }
  return condition;
}

// Checks every {placeholder} in `message` names a known fact.
absl::Status ValidateMessage(absl::string_view message) {
  size_t pos = 0;
  while ((pos = message.find('{', pos)) != absl::string_view::npos) {
    const size_t end = message.find('}', pos);
    if (end == absl::string_view::npos) {
      return absl::InvalidArgumentError("message has an unclosed '{'");
    }
    const absl::string_view name = message.substr(pos + 1, end - pos - 1);
    if (!IsKnownFact(name)) {
      return absl::InvalidArgumentError(
          absl::StrCat("message placeholder {", std::string(name), "} is not a known fact"));
    }
    pos = end + 1;
  }
  return absl::OkStatus();
}

absl::StatusOr<Severity> ParseSeverity(absl::string_view text) {
  if (text == "info") return Severity::kInfo;
  if (text == "warn") return Severity::kWarn;
  if (text == "never") return Severity::kNever;
  return absl::InvalidArgumentError(
      absl::StrCat("severity '", std::string(text), "' is not one of info, warn, never"));
}

absl::StatusOr<std::vector<Condition>> ParseConditions(const toml::table& table,
                                                       const char* key) {
  std::vector<Condition> conditions;
  const toml::node* node = table.get(key);
  if (node == nullptr) return conditions;
  const toml::array* array = node->as_array();
  if (array == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("'", key, "' must be a list of strings"));
  }
  for (const toml::node& element : *array) {
    const auto text = element.value<std::string>();
    if (!text) {
      return absl::InvalidArgumentError(absl::StrCat("'", key, "' must be a list of strings"));
    }
    auto condition = ParseCondition(*text);
    if (!condition.ok()) return condition.status();
    conditions.push_back(*std::move(condition));
  }
  return conditions;
}

absl::StatusOr<Rule> ParseRule(const toml::table& table) {
  Rule rule;
  const auto required = [&](const char* key) -> absl::StatusOr<std::string> {
    const auto value = table[key].value<std::string>();
    if (!value || value->empty()) {
      return absl::InvalidArgumentError(absl::StrCat("missing string '", key, "'"));
    }
    return *value;
  };
  auto id = required("id");
  if (!id.ok()) return id.status();
  rule.id = *id;
  const auto with_id = [&](const absl::Status& status) {
    return absl::InvalidArgumentError(absl::StrCat("rule '", rule.id, "': ", status.message()));
  };
  auto severity = required("severity");
  if (!severity.ok()) return with_id(severity.status());
  auto parsed_severity = ParseSeverity(*severity);
  if (!parsed_severity.ok()) return with_id(parsed_severity.status());
  rule.severity = *parsed_severity;
  auto message = required("message");
  if (!message.ok()) return with_id(message.status());
  if (absl::Status status = ValidateMessage(*message); !status.ok()) return with_id(status);
  rule.message = *message;
  auto citation = required("citation");
  if (!citation.ok()) return with_id(citation.status());
  rule.citation = *citation;
  auto when = ParseConditions(table, "when");
  if (!when.ok()) return with_id(when.status());
  rule.when = *std::move(when);
  auto unless = ParseConditions(table, "unless");
  if (!unless.ok()) return with_id(unless.status());
  rule.unless = *std::move(unless);
  for (const auto& [key, value] : table) {
    const std::string name(key.str());
    if (name != "id" && name != "severity" && name != "message" && name != "citation" &&
        name != "when" && name != "unless") {
      return with_id(absl::InvalidArgumentError(absl::StrCat("unknown field '", name, "'")));
    }
  }
  return rule;
}

std::string FactText(const FactValue& value) {
  if (const double* number = std::get_if<double>(&value)) return FormatNumber(*number);
  return std::get<std::string>(value);
}

template <typename T>
bool Compare(const T& a, CompareOp op, const T& b) {
  switch (op) {
    case CompareOp::kEq: return a == b;
    case CompareOp::kNe: return a != b;
    case CompareOp::kLt: return a < b;
    case CompareOp::kLe: return a <= b;
    case CompareOp::kGt: return a > b;
    case CompareOp::kGe: return a >= b;
  }
  return false;
}

bool AllHold(const std::vector<Condition>& conditions, const FactMap& facts) {
  for (const Condition& condition : conditions) {
    if (!condition.Holds(facts)) return false;
  }
  return true;
}

}  // namespace

absl::string_view SeverityName(Severity severity) {
  switch (severity) {
    case Severity::kInfo: return "info";
    case Severity::kWarn: return "warn";
    case Severity::kNever: return "never";
  }
  return "info";
}

bool Condition::Holds(const FactMap& facts) const {
  const auto left = facts.find(fact);
  if (left == facts.end()) return false;
  const FactValue* right = &literal;
  if (other_fact.has_value()) {
    const auto found = facts.find(*other_fact);
    if (found == facts.end()) return false;
    right = &found->second;
  }
  const double* a = std::get_if<double>(&left->second);
  const double* b = std::get_if<double>(right);
  if (a != nullptr && b != nullptr) return Compare(*a, op, *b);
  if (a != nullptr || b != nullptr) return op == CompareOp::kNe;  // number vs string
  if (op != CompareOp::kEq && op != CompareOp::kNe) return false;
  return Compare(absl::AsciiStrToLower(std::get<std::string>(left->second)), op,
                 absl::AsciiStrToLower(std::get<std::string>(*right)));
}

bool Rule::Fires(const FactMap& facts) const {
  if (!AllHold(when, facts)) return false;
  return unless.empty() || !AllHold(unless, facts);
}

std::string Rule::RenderMessage(const FactMap& facts) const {
  std::string out;
  size_t pos = 0;
  while (pos < message.size()) {
    const size_t open = message.find('{', pos);
    const size_t close = open == std::string::npos ? open : message.find('}', open);
    if (close == std::string::npos) {
      out.append(message, pos, std::string::npos);
      break;
    }
    out.append(message, pos, open - pos);
    const auto found = facts.find(message.substr(open + 1, close - open - 1));
    out += found == facts.end() ? "?" : FactText(found->second);
    pos = close + 1;
  }
  return out;
}

const std::vector<FactDoc>& KnownFacts() {
  static const auto* facts = new std::vector<FactDoc>{
      {"kind", "character | style | concept | unspecified"},
      {"family", "sdxl | sd15 | unknown"},
      {"images", "distinct images in the dataset"},
      {"images_with_repeats", "images x num_repeats, summed over subsets"},
      {"below_512", "images whose short side is under 512 px"},
      {"below_1024", "images whose short side is under 1024 px"},
      {"low_res", "images under the family's ideal short side"},
      {"min_side", "the family's ideal short side: 1024 for SDXL, else 512"},
      {"duplicates", "exact duplicate images"},
      {"near_duplicates", "near-duplicate image pairs"},
      {"all_duplicates", "duplicates + near_duplicates"},
      {"booru_captions", "captions in booru-tag style"},
      {"natural_captions", "captions in natural language"},
      {"trigger_word", "a tag most captions open with (unknown when none)"},
      {"has_trigger_word", "1 when captions open with a common trigger word, else 0"},
      {"trigger_position", "the furthest 1-based tag position the trigger word sits at"},
      {"keep_tokens", "keep_tokens in effect (dataset_config's, else the config's)"},
      {"shuffle_caption", "1 when shuffle_caption is on (dataset_config's, else the config's)"},
      {"tags_unfixed", "1 when tags past keep_tokens are shuffled or dropped (caption_tag_dropout_rate)"},
      {"optimizer_type", "optimizer_type as written (AdamW when unset)"},
      {"optimizer", "lowercase last dotted part of optimizer_type"},
      {"optimizer_family",
       "adamw | lion | adafactor | prodigy | came | dadapt | sgd | other names as is"},
      {"lr", "U-Net learning rate: unet_lr, else learning_rate"},
      {"te_lr", "text encoder lr: 0 when U-Net only, else text_encoder_lr, else learning_rate"},
      {"max_lr", "the larger of lr and te_lr"},
      {"dim", "network_dim (kohya default 4)"},
      {"alpha", "network_alpha (kohya default 1)"},
      {"dora", "1 when network_args enable DoRA, else 0 (unknown when they do not parse)"},
      {"clip_skip", "clip_skip (1 when unset)"},
      {"batch", "train_batch_size"},
      {"grad_accum", "gradient_accumulation_steps"},
      {"epochs", "max_train_epochs (unknown when unset)"},
      {"steps_per_epoch", "ceil(images_with_repeats / batch)"},
      {"steps", "optimizer steps for the whole run"},
      {"steps_formula", "how steps was computed, as text"},
  };
  return *facts;
}

absl::StatusOr<RuleSet> LoadRules(absl::string_view toml_text) {
  auto parsed = ParseToml(std::string_view(toml_text.data(), toml_text.size()), "rule file");
  if (!parsed.ok()) return parsed.status();
  toml::table document = std::move(*parsed);
  RuleSet rules;
  const toml::array* array = document["rule"].as_array();
  if (array == nullptr) {
    return absl::InvalidArgumentError("rule file has no [[rule]] entries");
  }
  absl::flat_hash_set<std::string> ids;
  for (size_t i = 0; i < array->size(); ++i) {
    const toml::table* table = (*array)[i].as_table();
    if (table == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("rule #", i + 1, " is not a table"));
    }
    auto rule = ParseRule(*table);
    if (!rule.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("rule #", i + 1, ": ", rule.status().message()));
    }
    if (!ids.insert(rule->id).second) {
      return absl::InvalidArgumentError(absl::StrCat("duplicate rule id '", rule->id, "'"));
    }
    rules.rules.push_back(*std::move(rule));
  }
  return rules;
}

absl::StatusOr<RuleSet> LoadRulesFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read rule file '", path, "'"));
  std::ostringstream text;
  text << in.rdbuf();
  auto rules = LoadRules(text.str());
  if (!rules.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", rules.status().message()));
  }
  return rules;
}

absl::string_view DefaultRulesToml() { return kBuiltinRulesToml; }

const RuleSet& DefaultRules() {
  static const RuleSet* rules = [] {
    auto parsed = LoadRules(DefaultRulesToml());
    // The built-in table is validated by core_planner_tests; an invalid one is a
    // build defect, reported loudly rather than silently advising nothing.
    if (!parsed.ok()) {
      std::fprintf(stderr, "lorad advisor: built-in rules.toml is invalid: %s\n",
                   std::string(parsed.status().message()).c_str());
      std::abort();
    }
    return new RuleSet(*std::move(parsed));
  }();
  return *rules;
}

RuleSet MergeRules(RuleSet base, const RuleSet& extra) {
  for (const Rule& rule : extra.rules) {
    bool replaced = false;
    for (Rule& existing : base.rules) {
      if (existing.id == rule.id) {
        existing = rule;
        replaced = true;
        break;
      }
    }
    if (!replaced) base.rules.push_back(rule);
  }
  return base;
}

}  // namespace lorad::planner
