#include "core/advisor/advisor.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>

#include <nlohmann/json.hpp>
#include <toml++/toml.h>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "core/advisor/number_format.h"

namespace lorad::advisor {
namespace {

// The value of a kohya key as a double (integers, floats and numeric strings).
absl::StatusOr<std::optional<double>> GetNumber(const toml::node* node, absl::string_view key) {
  if (node == nullptr) return std::optional<double>();
  if (auto value = node->value<double>()) return std::optional<double>(*value);
  if (auto text = node->value<std::string>()) {
    double number = 0;
    if (absl::SimpleAtod(*text, &number)) return std::optional<double>(number);
  }
  return absl::InvalidArgumentError(
      absl::StrCat("config key '", std::string(key), "' must be a number"));
}

absl::StatusOr<std::optional<int64_t>> GetInteger(const toml::node* node, absl::string_view key) {
  auto number = GetNumber(node, key);
  if (!number.ok()) return number.status();
  if (!number->has_value()) return std::optional<int64_t>();
  const double value = **number;
  if (value != std::floor(value) || std::fabs(value) > 1e15) {
    return absl::InvalidArgumentError(
        absl::StrCat("config key '", std::string(key), "' must be an integer, got ", FormatNumber(value)));
  }
  return std::optional<int64_t>(static_cast<int64_t>(value));
}

// kohya flattens sections one level deep: [optimizer_arguments] learning_rate = ...
absl::flat_hash_map<std::string, const toml::node*> FlattenKohya(const toml::table& table) {
  absl::flat_hash_map<std::string, const toml::node*> flat;
  for (const auto& [key, node] : table) {
    if (const toml::table* section = node.as_table()) {
      for (const auto& [inner_key, inner_node] : *section) {
        flat[std::string(inner_key.str())] = &inner_node;
      }
    } else {
      flat[std::string(key.str())] = &node;
    }
  }
  return flat;
}

std::string NormalizeOptimizer(absl::string_view optimizer_type) {
  std::string name = absl::AsciiStrToLower(
      optimizer_type.empty() ? absl::string_view("AdamW") : optimizer_type);
  if (const size_t dot = name.rfind('.'); dot != std::string::npos) name = name.substr(dot + 1);
  return name;
}

std::string OptimizerFamily(const std::string& optimizer) {
  if (absl::StrContains(optimizer, "came")) return "came";
  if (absl::StrContains(optimizer, "adamw")) return "adamw";
  if (absl::StartsWith(optimizer, "lion") || absl::StartsWith(optimizer, "pagedlion")) return "lion";
  if (absl::StartsWith(optimizer, "prodigy")) return "prodigy";
  if (absl::StartsWith(optimizer, "adafactor")) return "adafactor";
  if (absl::StartsWith(optimizer, "dadapt")) return "dadaptation";
  return optimizer;
}

bool UsesDora(const std::vector<std::string>& network_args) {
  for (const std::string& arg : network_args) {
    std::string compact;
    for (char c : arg) {
      if (!absl::ascii_isspace(static_cast<unsigned char>(c))) compact += absl::ascii_tolower(c);
    }
    if (compact == "dora_wd=true" || compact == "algo=dora") return true;
  }
  return false;
}

struct StepCount {
  int64_t steps_per_epoch = 0;
  int64_t steps = 0;
  std::string formula;
};

StepCount ComputeSteps(const DatasetFacts& dataset, const TrainingFacts& config) {
  StepCount count;
  const int64_t images =
      dataset.images_with_repeats > 0 ? dataset.images_with_repeats : dataset.image_count;
  const int64_t batch = std::max<int64_t>(1, config.train_batch_size);
  const int64_t accumulation = std::max<int64_t>(1, config.gradient_accumulation_steps);
  count.steps_per_epoch = (images + batch - 1) / batch;
  if (config.max_train_epochs.has_value()) {
    const int64_t epochs = std::max<int64_t>(0, *config.max_train_epochs);
    count.steps = (count.steps_per_epoch * epochs + accumulation - 1) / accumulation;
    count.formula = absl::StrCat(images, " images x repeats / batch ", batch, " = ",
                                 count.steps_per_epoch, " steps/epoch x ", epochs, " epochs");
    if (accumulation > 1) absl::StrAppend(&count.formula, " / ", accumulation, " accumulation");
  } else if (config.max_train_steps.has_value()) {
    count.steps = *config.max_train_steps;
    count.formula = absl::StrCat("max_train_steps = ", count.steps);
  } else {
    count.steps = 1600;
    count.formula = "kohya default max_train_steps = 1600";
  }
  return count;
}

}  // namespace

absl::StatusOr<TrainingKind> ParseTrainingKind(absl::string_view text) {
  const std::string lower = absl::AsciiStrToLower(text);
  if (lower == "character") return TrainingKind::kCharacter;
  if (lower == "style") return TrainingKind::kStyle;
  return absl::InvalidArgumentError(
      absl::StrCat("--kind '", std::string(text), "' is not one of: character, style"));
}

absl::StatusOr<ModelFamily> ParseModelFamily(absl::string_view text) {
  const std::string lower = absl::AsciiStrToLower(text);
  if (lower == "sdxl") return ModelFamily::kSdxl;
  if (lower == "sd15" || lower == "sd1.5" || lower == "sd1") return ModelFamily::kSd15;
  return absl::InvalidArgumentError(
      absl::StrCat("model family '", std::string(text), "' is not one of: sdxl, sd15"));
}

absl::string_view TrainingKindName(TrainingKind kind) {
  switch (kind) {
    case TrainingKind::kCharacter: return "character";
    case TrainingKind::kStyle: return "style";
    case TrainingKind::kUnspecified: return "unspecified";
  }
  return "unspecified";
}

absl::string_view ModelFamilyName(ModelFamily family) {
  switch (family) {
    case ModelFamily::kSdxl: return "sdxl";
    case ModelFamily::kSd15: return "sd15";
    case ModelFamily::kUnknown: return "unknown";
  }
  return "unknown";
}

absl::StatusOr<TrainingFacts> TrainingFactsFromToml(absl::string_view toml_text) {
  toml::table document;
  try {
    document = toml::parse(std::string_view(toml_text.data(), toml_text.size()));
  } catch (const toml::parse_error& error) {
    return absl::InvalidArgumentError(absl::StrCat(
        "config TOML error at line ", error.source().begin.line, ", column ",
        error.source().begin.column, ": ", std::string(error.description())));
  }
  const auto flat = FlattenKohya(document);
  const auto get = [&](const char* key) -> const toml::node* {
    const auto found = flat.find(key);
    return found == flat.end() ? nullptr : found->second;
  };
  TrainingFacts facts;
  if (const toml::node* node = get("optimizer_type")) {
    const auto value = node->value<std::string>();
    if (!value) return absl::InvalidArgumentError("config key 'optimizer_type' must be a string");
    facts.optimizer_type = *value;
  }
#define LORAD_READ(field, getter, key)                                  \
  {                                                                     \
    auto value = getter(get(key), key);                                 \
    if (!value.ok()) return value.status();                             \
    field = *value;                                                     \
  }
  LORAD_READ(facts.learning_rate, GetNumber, "learning_rate");
  LORAD_READ(facts.unet_lr, GetNumber, "unet_lr");
  LORAD_READ(facts.text_encoder_lr, GetNumber, "text_encoder_lr");
  LORAD_READ(facts.network_dim, GetInteger, "network_dim");
  LORAD_READ(facts.network_alpha, GetNumber, "network_alpha");
  LORAD_READ(facts.max_train_epochs, GetInteger, "max_train_epochs");
  LORAD_READ(facts.max_train_steps, GetInteger, "max_train_steps");
#undef LORAD_READ
  const auto read_int = [&](const char* key, int64_t& field) -> absl::Status {
    auto value = GetInteger(get(key), key);
    if (!value.ok()) return value.status();
    if (value->has_value()) field = **value;
    return absl::OkStatus();
  };
  if (absl::Status s = read_int("train_batch_size", facts.train_batch_size); !s.ok()) return s;
  if (absl::Status s = read_int("gradient_accumulation_steps", facts.gradient_accumulation_steps);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = read_int("keep_tokens", facts.keep_tokens); !s.ok()) return s;
  if (const toml::node* node = get("network_train_unet_only")) {
    const auto value = node->value<bool>();
    if (!value) {
      return absl::InvalidArgumentError("config key 'network_train_unet_only' must be true or false");
    }
    facts.network_train_unet_only = *value;
  }
  if (const toml::node* node = get("network_args")) {
    const toml::array* array = node->as_array();
    if (array == nullptr) {
      return absl::InvalidArgumentError(
          "config key 'network_args' must be a list of strings, e.g. [\"conv_dim=4\"]");
    }
    for (const toml::node& element : *array) {
      const auto value = element.value<std::string>();
      if (!value) {
        return absl::InvalidArgumentError("config key 'network_args' must be a list of strings");
      }
      facts.network_args.push_back(*value);
    }
  }
  return facts;
}

std::string DetectLeadingTriggerWord(const std::vector<std::string>& captions,
                                     double min_fraction) {
  absl::flat_hash_map<std::string, int64_t> counts;
  int64_t non_empty = 0;
  for (const std::string& caption : captions) {
    const absl::string_view trimmed = absl::StripAsciiWhitespace(caption);
    if (trimmed.empty()) continue;
    ++non_empty;
    const absl::string_view first = absl::StripAsciiWhitespace(
        trimmed.substr(0, std::min(trimmed.find(','), trimmed.size())));
    // A trigger is a short tag; a long first segment is a sentence.
    const std::vector<absl::string_view> words =
        absl::StrSplit(first, absl::ByAnyChar(" \t"), absl::SkipEmpty());
    if (words.empty() || words.size() > 3) continue;
    ++counts[absl::AsciiStrToLower(first)];
  }
  if (non_empty < 2) return "";
  std::string best;
  int64_t best_count = 0;
  for (const auto& [token, count] : counts) {
    if (count > best_count || (count == best_count && token < best)) {
      best = token;
      best_count = count;
    }
  }
  return static_cast<double>(best_count) >= min_fraction * static_cast<double>(non_empty) ? best
                                                                                          : "";
}

FactMap ComputeFacts(const AdvisorInput& input) {
  const DatasetFacts& data = input.dataset;
  const TrainingFacts& config = input.config;
  FactMap facts;
  const auto number = [&](const char* name, double value) { facts[name] = value; };
  facts["kind"] = std::string(TrainingKindName(input.kind));
  facts["family"] = std::string(ModelFamilyName(data.family));
  number("images", static_cast<double>(data.image_count));
  number("images_with_repeats", static_cast<double>(
      data.images_with_repeats > 0 ? data.images_with_repeats : data.image_count));
  number("below_512", static_cast<double>(data.below_512));
  number("below_1024", static_cast<double>(data.below_1024));
  const bool sdxl = data.family == ModelFamily::kSdxl;
  number("low_res", static_cast<double>(sdxl ? std::max(data.below_1024, data.below_512)
                                             : data.below_512));
  number("min_side", sdxl ? 1024 : 512);
  number("duplicates", static_cast<double>(data.exact_duplicates));
  number("near_duplicates", static_cast<double>(data.near_duplicates));
  number("all_duplicates", static_cast<double>(data.exact_duplicates + data.near_duplicates));
  number("booru_captions", static_cast<double>(data.booru_captions));
  number("natural_captions", static_cast<double>(data.natural_captions));
  if (!data.leading_trigger_word.empty()) facts["trigger_word"] = data.leading_trigger_word;
  number("has_trigger_word", data.leading_trigger_word.empty() ? 0 : 1);
  number("keep_tokens", static_cast<double>(data.keep_tokens.value_or(config.keep_tokens)));

  facts["optimizer_type"] = config.optimizer_type.empty() ? "AdamW" : config.optimizer_type;
  const std::string optimizer = NormalizeOptimizer(config.optimizer_type);
  facts["optimizer"] = optimizer;
  facts["optimizer_family"] = OptimizerFamily(optimizer);
  const std::optional<double> lr = config.unet_lr ? config.unet_lr : config.learning_rate;
  std::optional<double> te_lr =
      config.text_encoder_lr ? config.text_encoder_lr : config.learning_rate;
  if (config.network_train_unet_only) te_lr = 0.0;
  if (lr) number("lr", *lr);
  if (te_lr) number("te_lr", *te_lr);
  if (lr || te_lr) number("max_lr", std::max(lr.value_or(0.0), te_lr.value_or(0.0)));
  number("dim", static_cast<double>(config.network_dim.value_or(4)));
  number("alpha", config.network_alpha.value_or(1.0));
  number("dora", UsesDora(config.network_args) ? 1 : 0);
  number("batch", static_cast<double>(config.train_batch_size));
  number("grad_accum", static_cast<double>(config.gradient_accumulation_steps));
  if (config.max_train_epochs) number("epochs", static_cast<double>(*config.max_train_epochs));
  const StepCount steps = ComputeSteps(data, config);
  number("steps_per_epoch", static_cast<double>(steps.steps_per_epoch));
  number("steps", static_cast<double>(steps.steps));
  facts["steps_formula"] = steps.formula;
  return facts;
}

bool AdviceReport::blocking() const { return !forced && !never_findings().empty(); }

std::vector<Finding> AdviceReport::never_findings() const {
  std::vector<Finding> out;
  for (const Finding& finding : findings) {
    if (finding.severity == Severity::kNever) out.push_back(finding);
  }
  return out;
}

AdviceReport Advise(const AdvisorInput& input, const AdviseOptions& options) {
  return Advise(input, DefaultRules(), options);
}

AdviceReport Advise(const AdvisorInput& input, const RuleSet& rules,
                    const AdviseOptions& options) {
  const FactMap facts = ComputeFacts(input);
  AdviceReport report;
  report.forced = options.force;
  const StepCount steps = ComputeSteps(input.dataset, input.config);
  report.computed_steps = steps.steps;
  report.steps_formula = steps.formula;
  for (const Rule& rule : rules.rules) {
    if (!rule.Fires(facts)) continue;
    report.findings.push_back(
        Finding{rule.id, rule.severity, rule.RenderMessage(facts), rule.citation});
  }
  return report;
}

std::string RenderText(const AdviceReport& report) {
  std::string out;
  for (const Finding& finding : report.findings) {
    absl::StrAppend(&out, "[", SeverityName(finding.severity), "] ", finding.rule_id, ": ",
                    finding.message, "\n    (", finding.citation, ")\n");
  }
  if (report.findings.empty()) out = "no findings\n";
  absl::StrAppend(&out, "steps: ", report.computed_steps, " (", report.steps_formula, ")\n");
  if (report.blocking()) {
    absl::StrAppend(&out, "blocked: a 'never' rule fired; fix the config or pass --force\n");
  } else if (report.forced && !report.never_findings().empty()) {
    absl::StrAppend(&out, "forced: 'never' findings overridden by --force\n");
  }
  return out;
}

std::string RenderJson(const AdviceReport& report) {
  nlohmann::json findings = nlohmann::json::array();
  for (const Finding& finding : report.findings) {
    findings.push_back({{"rule_id", finding.rule_id},
                        {"severity", std::string(SeverityName(finding.severity))},
                        {"message", finding.message},
                        {"citation", finding.citation}});
  }
  nlohmann::json out = {{"blocking", report.blocking()},
                        {"forced", report.forced},
                        {"computed_steps", report.computed_steps},
                        {"steps_formula", report.steps_formula},
                        {"findings", std::move(findings)}};
  return out.dump(2);
}

}  // namespace lorad::advisor
