// The advisor: checks a dataset and a kohya config against what experienced
// LoRA trainers published (DuskFall's 2025 guide, cited per rule in rules.toml)
// and returns findings that cite the rule.
// The config comes parsed by the trainer's own reader (core/config), so the
// advisor judges exactly what training will use.
// The rules are data (core/planner/rules.toml, compiled in; extra rule files
// can be loaded with LoadRules); this file evaluates them.
//
// Thread-safety: everything here is a pure function of its arguments.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/config/config.h"
#include "core/planner/rules.h"

namespace lorad::planner {

// What the LoRA is meant to learn; the guide's thresholds differ for characters
// and styles. kConcept (objects, poses, ...) gets only the kind-neutral rules.
enum class TrainingKind { kUnspecified, kCharacter, kStyle, kConcept };
enum class ModelFamily { kUnknown, kSdxl, kSd15 };

// Parses "character" | "style" | "concept" (case-insensitive); InvalidArgument
// naming the accepted kinds otherwise.
absl::StatusOr<TrainingKind> ParseTrainingKind(absl::string_view text);
// Parses "sdxl" | "sd15" | "sd1.5" | "sd1" (case-insensitive).
absl::StatusOr<ModelFamily> ParseModelFamily(absl::string_view text);
absl::string_view TrainingKindName(TrainingKind kind);
absl::string_view ModelFamilyName(ModelFamily family);

// What the curation report (core/data) knows about a dataset.
struct DatasetFacts {
  int64_t image_count = 0;          // distinct images
  int64_t images_with_repeats = 0;  // sum of images x num_repeats; 0 = same as image_count
  int64_t below_512 = 0;            // short side < 512 px
  int64_t below_1024 = 0;           // short side < 1024 px (includes below_512)
  int64_t exact_duplicates = 0;     // images identical to an earlier one
  int64_t near_duplicates = 0;      // perceptual-hash pairs under the threshold
  int64_t booru_captions = 0;       // caption files in tag style
  int64_t natural_captions = 0;     // caption files in natural language
  // A tag most captions open with ("ohwx", "sks woman"), empty when none, and
  // the furthest tag position (1-based) it sits at; see DetectTriggerWord.
  std::string trigger_word;
  int trigger_position = 0;
  // The dataset_config's caption settings when every training subset sets the
  // same value; they win over the training config's keys, as in kohya.
  std::optional<int64_t> keep_tokens;
  std::optional<bool> shuffle_caption;
  std::optional<double> caption_tag_dropout_rate;
  ModelFamily family = ModelFamily::kUnknown;
};

// How often a tag opens captions at one position: the curation report's
// caption_heads (core/data/curation.h).
struct CaptionHead {
  std::string tag;  // lowercased
  int position = 1;  // 1-based tag position
  int64_t count = 0;
};

struct TriggerWord {
  std::string word;  // empty: none
  int position = 0;  // the furthest position it opens captions at
};

// The trigger word of a dataset: a short tag (at most 3 words, not a generic
// subject count such as "1girl" or "solo") found among the first tags of at
// least `min_fraction` of `captions` caption files (at least 2). The most
// frequent wins; a tie goes to the earlier position.
TriggerWord DetectTriggerWord(const std::vector<CaptionHead>& heads, int64_t captions,
                              double min_fraction = 0.8);

// The optimizer family the rules speak of: the lowercase last dotted part of
// `optimizer_type` ("LoraEasyCustomOptimizer.came.CAME" -> came), grouped:
// adamw, lion, adafactor, prodigy, came, dadapt, sgd; any other name as is.
std::string OptimizerFamily(absl::string_view optimizer_type);

struct AdvisorInput {
  DatasetFacts dataset;
  // The training config as the trainer reads it (core/config's parser, e.g.
  // train::ParseTrainOptions), defaults included: the rules see the values
  // training will use.
  train::TrainConfig config;
  TrainingKind kind = TrainingKind::kUnspecified;
};

struct Finding {
  std::string rule_id;
  Severity severity = Severity::kInfo;
  std::string message;   // with the job's numbers filled in
  std::string citation;  // where the rule comes from
};

struct AdviceReport {
  std::vector<Finding> findings;  // rule-table order
  // Optimizer steps: ceil(images x repeats / batch) x epochs / grad accumulation,
  // or max_train_steps when no epoch count is set (kohya default 1600).
  int64_t computed_steps = 0;
  std::string steps_formula;  // e.g. "120 images x repeats / batch 4 = 30 steps/epoch x 10 epochs"
  bool forced = false;

  // True when a "never" rule fired and the run was not forced.
  bool blocking() const;
  // Findings of the "never" severity (the reason a submit is refused).
  std::vector<Finding> never_findings() const;
};

struct AdviseOptions {
  bool force = false;  // --force: "never" findings stay, but do not block
};

// The facts the rules see (names documented in rules.toml / KnownFacts()).
FactMap ComputeFacts(const AdvisorInput& input);

// Evaluates `rules` (default: the built-in table) on `input`.
AdviceReport Advise(const AdvisorInput& input, const AdviseOptions& options = {});
AdviceReport Advise(const AdvisorInput& input, const RuleSet& rules,
                    const AdviseOptions& options = {});

// Human-readable rendering: one line per finding ("[warn] id: message" plus the
// citation), then the step count; "no findings" when empty.
std::string RenderText(const AdviceReport& report);
// {"blocking":bool,"forced":bool,"computed_steps":N,"steps_formula":"...",
//  "findings":[{"rule_id","severity","message","citation"}]}
std::string RenderJson(const AdviceReport& report);

}  // namespace lorad::planner
