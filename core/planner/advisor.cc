#include "core/planner/advisor.h"

#include <algorithm>
#include <optional>
#include <string>
#include <utility>

#include <nlohmann/json.hpp>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "core/networks/network_config.h"

namespace lorad::planner {
namespace {

std::string NormalizeOptimizer(absl::string_view optimizer_type) {
  std::string name = absl::AsciiStrToLower(
      optimizer_type.empty() ? absl::string_view("AdamW") : optimizer_type);
  if (const size_t dot = name.rfind('.'); dot != std::string::npos) name = name.substr(dot + 1);
  return name;
}

// DoRA as the trainer reads network_args (use_dora / dora_wd in any of the
// parser's boolean spellings); unknown when the network config does not parse.
std::optional<bool> UsesDora(const train::TrainConfig& config) {
  auto network = networks::ParseNetworkConfig(networks::NetworkInputOf(config));
  if (!network.ok()) return std::nullopt;
  return network->dora;
}

// Generic booru subject tags ("1girl", "2boys", "solo"): nearly every caption of
// a character set opens with them, so they are no trigger.
bool IsSubjectCountTag(absl::string_view tag) {
  if (tag == "solo" || tag == "no humans" || absl::StartsWith(tag, "multiple ")) return true;
  size_t digits = 0;
  while (digits < tag.size() && absl::ascii_isdigit(static_cast<unsigned char>(tag[digits]))) ++digits;
  if (digits == 0) return false;
  absl::string_view rest = tag.substr(digits);
  absl::ConsumeSuffix(&rest, "s");
  absl::ConsumeSuffix(&rest, "+");
  return rest == "girl" || rest == "boy" || rest == "other";
}

struct StepCount {
  int64_t steps_per_epoch = 0;
  int64_t steps = 0;
  std::string formula;
};

StepCount ComputeSteps(const DatasetFacts& dataset, const train::TrainConfig& config) {
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
  } else {
    count.steps = config.max_train_steps;  // kohya's default 1600 when the config sets none
    count.formula = absl::StrCat("max_train_steps = ", count.steps);
  }
  return count;
}

}  // namespace

absl::StatusOr<TrainingKind> ParseTrainingKind(absl::string_view text) {
  const std::string lower = absl::AsciiStrToLower(text);
  if (lower == "character") return TrainingKind::kCharacter;
  if (lower == "style") return TrainingKind::kStyle;
  if (lower == "concept") return TrainingKind::kConcept;
  return absl::InvalidArgumentError(absl::StrCat(
      "kind '", std::string(text), "' is not one of: character, style, concept"));
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
    case TrainingKind::kConcept: return "concept";
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

std::string OptimizerFamily(absl::string_view optimizer_type) {
  const std::string optimizer = NormalizeOptimizer(optimizer_type);
  if (absl::StrContains(optimizer, "came")) return "came";
  if (absl::StrContains(optimizer, "adamw")) return "adamw";
  if (absl::StartsWith(optimizer, "lion") || absl::StartsWith(optimizer, "pagedlion")) return "lion";
  if (absl::StartsWith(optimizer, "prodigy")) return "prodigy";
  if (absl::StartsWith(optimizer, "adafactor")) return "adafactor";
  if (absl::StartsWith(optimizer, "dadapt")) return "dadapt";
  if (absl::StartsWith(optimizer, "sgd")) return "sgd";
  return optimizer;
}

TriggerWord DetectTriggerWord(const std::vector<CaptionHead>& heads, int64_t captions,
                              double min_fraction) {
  struct Seen {
    int64_t count = 0;
    int first = 0;
    int last = 0;
  };
  absl::flat_hash_map<std::string, Seen> by_tag;
  for (const CaptionHead& head : heads) {
    const std::string tag = absl::AsciiStrToLower(absl::StripAsciiWhitespace(head.tag));
    const std::vector<absl::string_view> words =
        absl::StrSplit(tag, absl::ByAnyChar(" \t"), absl::SkipEmpty());
    // A trigger is a short tag; a long first segment is a sentence.
    if (words.empty() || words.size() > 3 || IsSubjectCountTag(tag) || head.count <= 0) continue;
    Seen& seen = by_tag[tag];
    seen.count += head.count;
    seen.first = seen.first == 0 ? head.position : std::min(seen.first, head.position);
    seen.last = std::max(seen.last, head.position);
  }
  TriggerWord best;
  const Seen* best_seen = nullptr;
  if (captions < 2) return best;
  for (const auto& entry : by_tag) {
    const Seen& seen = entry.second;
    if (static_cast<double>(seen.count) < min_fraction * static_cast<double>(captions)) continue;
    const bool better =
        best_seen == nullptr || seen.count > best_seen->count ||
        (seen.count == best_seen->count &&
         (seen.first < best_seen->first || (seen.first == best_seen->first && entry.first < best.word)));
    if (better) {
      best = TriggerWord{entry.first, seen.last};
      best_seen = &seen;
    }
  }
  return best;
}

FactMap ComputeFacts(const AdvisorInput& input) {
  const DatasetFacts& data = input.dataset;
  const train::TrainConfig& config = input.config;
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
  if (!data.trigger_word.empty()) {
    facts["trigger_word"] = data.trigger_word;
    number("trigger_position", data.trigger_position);
  }
  number("has_trigger_word", data.trigger_word.empty() ? 0 : 1);
  number("keep_tokens", static_cast<double>(data.keep_tokens.value_or(config.keep_tokens)));
  const bool shuffle = data.shuffle_caption.value_or(config.shuffle_caption);
  number("shuffle_caption", shuffle ? 1 : 0);
  number("tags_unfixed",
         shuffle || data.caption_tag_dropout_rate.value_or(config.caption_tag_dropout_rate) > 0 ? 1 : 0);

  facts["optimizer_type"] = config.optimizer_type.empty() ? "AdamW" : config.optimizer_type;
  facts["optimizer"] = NormalizeOptimizer(config.optimizer_type);
  facts["optimizer_family"] = OptimizerFamily(config.optimizer_type);
  const double lr = config.UnetLr();
  const double te_lr = config.network_train_unet_only ? 0.0 : config.TextEncoderLr();
  number("lr", lr);
  number("te_lr", te_lr);
  number("max_lr", std::max(lr, te_lr));
  number("dim", static_cast<double>(config.network_dim));
  number("alpha", config.network_alpha);
  if (const std::optional<bool> dora = UsesDora(config)) number("dora", *dora ? 1 : 0);
  number("clip_skip", static_cast<double>(config.clip_skip.value_or(1)));
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

}  // namespace lorad::planner
