#include "core/config/config.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <fstream>
#include <functional>
#include <set>
#include <sstream>
#include <type_traits>
#include <variant>

#include <toml++/toml.h>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "core/base/limits.h"
#include "core/base/status_macros.h"
#include "core/base/toml.h"
#include "core/optim/lr_scheduler_type.h"

namespace lorad::train {
namespace {

// A typed member of TrainConfig that an option name binds to.
using Member = std::variant<bool TrainConfig::*, int64_t TrainConfig::*, double TrainConfig::*,
                            std::string TrainConfig::*, std::optional<int64_t> TrainConfig::*,
                            std::optional<double> TrainConfig::*, std::vector<std::string> TrainConfig::*>;

struct Option {
  Member member;
  std::vector<std::string> allowed;  // non-empty: an enumeration (case-sensitive, kohya spells them so)
  std::optional<double> min;         // numeric lower bound (inclusive)
  // Numeric upper bound (inclusive). Every number has one: a value must be
  // finite, in range and representable in the type the engine computes with
  // (float for losses and noise, int for sizes and counts); see core/base/limits.h.
  std::optional<double> max;
};

#define LORAD_OPT(name, ...) {#name, Option{&TrainConfig::name, __VA_ARGS__}}

const std::map<std::string, Option>& Options() {
  static const auto* options = new std::map<std::string, Option>{
      LORAD_OPT(pretrained_model_name_or_path),
      LORAD_OPT(v2),
      LORAD_OPT(v_parameterization),
      LORAD_OPT(sdxl),
      LORAD_OPT(vae),
      LORAD_OPT(tokenizer_path),
      LORAD_OPT(device),
      LORAD_OPT(cuda_graphs),
      LORAD_OPT(log_every_n_steps, {}, 1, kMaxTrainSteps),
      LORAD_OPT(no_half_vae),
      LORAD_OPT(network_module, {"networks.lora", "lycoris.kohya"}),
      LORAD_OPT(network_dim, {}, 1, 4096),
      LORAD_OPT(network_alpha, {}, 0, 65536),
      LORAD_OPT(network_dropout, {}, 0, 1),
      LORAD_OPT(network_args),
      LORAD_OPT(network_weights),
      LORAD_OPT(network_train_unet_only),
      LORAD_OPT(network_train_text_encoder_only),
      LORAD_OPT(scale_weight_norms, {}, 0, 1e6),
      LORAD_OPT(learning_rate, {}, 0, 1000),
      LORAD_OPT(unet_lr, {}, 0, 1000),
      LORAD_OPT(text_encoder_lr, {}, 0, 1000),
      LORAD_OPT(optimizer_type),
      LORAD_OPT(optimizer_args),
      LORAD_OPT(lr_scheduler),
      LORAD_OPT(lr_warmup_steps, {}, 0, kMaxTrainSteps),
      LORAD_OPT(lr_scheduler_num_cycles, {}, 1, 10000),
      LORAD_OPT(lr_scheduler_power, {}, 0, 1000),
      LORAD_OPT(lr_scheduler_min_lr_ratio, {}, 0, 1),
      LORAD_OPT(lr_scheduler_args),
      LORAD_OPT(lr_scheduler_type),
      LORAD_OPT(max_grad_norm, {}, 0, 1e6),
      LORAD_OPT(train_batch_size, {}, 1, kMaxBatchSize),
      LORAD_OPT(max_train_steps, {}, 1, kMaxTrainSteps),
      LORAD_OPT(max_train_epochs, {}, 1, kMaxTrainEpochs),
      LORAD_OPT(gradient_accumulation_steps, {}, 1, kMaxBatchSize),
      LORAD_OPT(mixed_precision, {"no", "fp16", "bf16"}),
      LORAD_OPT(full_fp16),
      LORAD_OPT(full_bf16),
      LORAD_OPT(gradient_checkpointing),
      LORAD_OPT(seed, {}, 0),
      LORAD_OPT(clip_skip, {}, 1, 32),
      LORAD_OPT(max_token_length, {"75", "150", "225"}),
      LORAD_OPT(cache_latents),
      LORAD_OPT(cache_latents_to_disk),
      LORAD_OPT(cache_text_encoder_outputs),
      LORAD_OPT(cache_text_encoder_outputs_to_disk),
      LORAD_OPT(vae_batch_size, {}, 1, kMaxBatchSize),
      LORAD_OPT(prior_loss_weight, {}, 0, 1000),
      LORAD_OPT(num_processes, {}, 1, 4096),
      LORAD_OPT(num_machines, {}, 1, 4096),
      LORAD_OPT(machine_rank, {}, 0, 4095),
      LORAD_OPT(main_process_ip),
      LORAD_OPT(main_process_port, {}, 1, 65535),
      LORAD_OPT(ddp_timeout, {}, 0.01, 10080),
      LORAD_OPT(noise_offset, {}, 0, 10),
      LORAD_OPT(noise_offset_random_strength),
      LORAD_OPT(adaptive_noise_scale, {}, -10, 10),
      LORAD_OPT(multires_noise_iterations, {}, 1, 64),
      LORAD_OPT(multires_noise_discount, {}, 0, 1),
      LORAD_OPT(ip_noise_gamma, {}, 0, 10),
      LORAD_OPT(ip_noise_gamma_random_strength),
      LORAD_OPT(min_snr_gamma, {}, 0, 1000),
      LORAD_OPT(scale_v_pred_loss_like_noise_pred),
      LORAD_OPT(v_pred_like_loss, {}, 0, 100),
      LORAD_OPT(debiased_estimation_loss),
      LORAD_OPT(loss_type, {"l2", "l1", "huber", "smooth_l1"}),
      LORAD_OPT(huber_schedule, {"constant", "exponential", "snr"}),
      LORAD_OPT(huber_c, {}, 0, 100),
      LORAD_OPT(huber_scale, {}, 0, 100),
      LORAD_OPT(min_timestep, {}, 0, 1000),
      LORAD_OPT(max_timestep, {}, 1, 1000),
      LORAD_OPT(zero_terminal_snr),
      LORAD_OPT(output_dir),
      LORAD_OPT(output_name),
      LORAD_OPT(save_precision, {"float", "fp16", "bf16"}),
      LORAD_OPT(save_model_as, {"safetensors"}),
      LORAD_OPT(save_every_n_steps, {}, 1, kMaxTrainSteps),
      LORAD_OPT(save_every_n_epochs, {}, 1, kMaxTrainEpochs),
      LORAD_OPT(save_last_n_steps, {}, 1, kMaxTrainSteps),
      LORAD_OPT(save_last_n_epochs, {}, 1, kMaxTrainEpochs),
      LORAD_OPT(save_last_n_steps_state, {}, 1, kMaxTrainSteps),
      LORAD_OPT(save_last_n_epochs_state, {}, 1, kMaxTrainEpochs),
      LORAD_OPT(save_state),
      LORAD_OPT(save_state_on_train_end),
      LORAD_OPT(resume),
      LORAD_OPT(no_metadata),
      LORAD_OPT(training_comment),
      LORAD_OPT(metadata_title),
      LORAD_OPT(metadata_author),
      LORAD_OPT(metadata_description),
      LORAD_OPT(metadata_license),
      LORAD_OPT(metadata_tags),
      LORAD_OPT(sample_prompts),
      LORAD_OPT(sample_every_n_steps, {}, 1, kMaxTrainSteps),
      LORAD_OPT(sample_every_n_epochs, {}, 1, kMaxTrainEpochs),
      LORAD_OPT(sample_sampler),
      LORAD_OPT(sample_lora_strength, {}, -kMaxPreviewLoraStrength, kMaxPreviewLoraStrength),
      LORAD_OPT(sample_at_first),
      LORAD_OPT(logging_dir),
      LORAD_OPT(log_with),  // checked in ValidateLogging: "" (unset) is a value ConfigToToml writes
      LORAD_OPT(log_prefix),
      LORAD_OPT(log_tracker_name),
      LORAD_OPT(dataset_config),
      LORAD_OPT(train_data_dir),
      LORAD_OPT(reg_data_dir),
      LORAD_OPT(resolution),
      LORAD_OPT(enable_bucket),
      LORAD_OPT(min_bucket_reso, {}, 8, kMaxResolution),
      LORAD_OPT(max_bucket_reso, {}, 8, kMaxResolution),
      LORAD_OPT(bucket_reso_steps, {}, 8, kMaxResolution),
      LORAD_OPT(bucket_no_upscale),
      LORAD_OPT(caption_extension),
      LORAD_OPT(caption_separator),
      LORAD_OPT(shuffle_caption),
      LORAD_OPT(keep_tokens, {}, 0, 1000),
      LORAD_OPT(keep_tokens_separator),
      LORAD_OPT(secondary_separator),
      LORAD_OPT(enable_wildcard),
      LORAD_OPT(caption_prefix),
      LORAD_OPT(caption_suffix),
      LORAD_OPT(caption_dropout_rate, {}, 0, 1),
      LORAD_OPT(caption_dropout_every_n_epochs, {}, 0, kMaxTrainEpochs),
      LORAD_OPT(caption_tag_dropout_rate, {}, 0, 1),
      LORAD_OPT(token_warmup_min, {}, 1, 1000),
      LORAD_OPT(token_warmup_step, {}, 0, kMaxTrainSteps),
      LORAD_OPT(color_aug),
      LORAD_OPT(flip_aug),
      LORAD_OPT(random_crop),
      LORAD_OPT(face_crop_aug_range),
      LORAD_OPT(dataset_repeats, {}, 1, kMaxRepeats),
  };
  return *options;
}
#undef LORAD_OPT

// kohya options that exist but have no effect here (attention backends, data
// loader workers, logging backends, distributed launch). Accepted quietly so a
// kohya file loads without a wall of warnings.
const std::set<std::string>& NoEffectOptions() {
  static const auto* keys = new std::set<std::string>{
      "xformers", "sdpa", "mem_eff_attn", "max_data_loader_n_workers", "persistent_data_loader_workers",
      "lowram", "highvram", "log_config",
      "wandb_api_key", "wandb_run_name", "async_upload", "ddp_gradient_as_bucket_view",
      "ddp_static_graph", "console_log_level", "console_log_file", "console_log_simple", "lowvram", "cache_info",
      "training_comment_extra", "sample_prompts_path", "output_config", "config_file", "no_half_vae_for_sampling"};
  return *keys;
}

// kohya options with no field here that still change what kohya does: each is
// mapped onto lorad's option, or accepted with a warning that says what lorad
// does instead. Never silently dropped (that would change the run's meaning).
struct ForeignOption {
  const char* alias_of;  // non-null: the same option under kohya's old spelling
  const char* warning;   // non-null: accepted, with this warning when set
};

const std::map<std::string, ForeignOption>& ForeignOptions() {
  static const auto* options = new std::map<std::string, ForeignOption>{
      // kohya's prepare_dataset_args: the misspelt key still sets caption_extension.
      {"caption_extention", {"caption_extension", nullptr}},
      {"fp8_base",
       {nullptr, "fp8_base is not supported: the frozen weights stay in the mixed_precision dtype (more memory "
                 "than kohya's fp8, the same LoRA)"}},
      {"initial_epoch", {nullptr, "initial_epoch is not supported: training starts at epoch 1; continue a run with "
                                  "`resume` from a saved state"}},
      {"initial_step", {nullptr, "initial_step is not supported: training starts at step 0; continue a run with "
                                 "`resume` from a saved state"}},
      {"skip_until_initial_step", {nullptr, "skip_until_initial_step is not supported: continue a run with `resume` "
                                            "from a saved state"}},
      {"huggingface_repo_id", {nullptr, "lorad does not upload to Hugging Face (huggingface_repo_id is ignored): "
                                        "fetch the LoRA with `loractl fetch` and upload it from there"}},
      {"huggingface_repo_type", {nullptr, nullptr}},
      {"huggingface_path_in_repo", {nullptr, nullptr}},
      {"huggingface_token", {nullptr, nullptr}},
      {"huggingface_repo_visibility", {nullptr, nullptr}},
      {"save_state_to_huggingface", {nullptr, "save_state_to_huggingface is ignored: states stay on this machine"}},
      {"resume_from_huggingface", {nullptr, "resume_from_huggingface is not supported: resume from a local state "
                                            "folder"}},
      // get_optimizer's deprecated flags pick the optimizer (see ApplyOptimizerFlags).
      {"use_8bit_adam", {nullptr, nullptr}},
      {"use_lion_optimizer", {nullptr, nullptr}},
  };
  return *options;
}

bool IsTrue(const std::string& text) {
  const std::string v = absl::AsciiStrToLower(absl::StripAsciiWhitespace(text));
  return v == "true" || v == "1" || v == "yes" || v == "on";
}

absl::Status Assign(TrainConfig& config, const std::string& key, const struct Option& option, const std::string& text);

// A key Options() does not know: a ForeignOption, a no-effect key, or unknown.
// `text` is the value as the command line would give it.
absl::Status ApplyForeignOption(TrainConfig& config, const std::string& key, const std::string& text,
                                const char* unknown_what) {
  auto it = ForeignOptions().find(key);
  if (it != ForeignOptions().end()) {
    if (it->second.alias_of != nullptr) {
      const std::string target = it->second.alias_of;
      RETURN_IF_ERROR(Assign(config, target, Options().at(target), text));
      config.explicitly_set[target] = text;
      return absl::OkStatus();
    }
    config.explicitly_set[key] = text;
    // A flag set to false asks for nothing; any other value is what kohya would act on.
    if (it->second.warning != nullptr && !text.empty() && absl::AsciiStrToLower(text) != "false") {
      config.warnings.push_back(it->second.warning);
    }
    return absl::OkStatus();
  }
  if (NoEffectOptions().count(key) == 0) {
    config.warnings.push_back(absl::StrCat("unknown ", unknown_what, " '", key, "' ignored"));
  }
  return absl::OkStatus();
}

// kohya's get_optimizer: use_8bit_adam / use_lion_optimizer choose AdamW8bit /
// Lion and may not be combined with each other or with optimizer_type.
absl::Status ApplyOptimizerFlags(TrainConfig& config) {
  auto flag = [&](const char* key) {
    auto it = config.explicitly_set.find(key);
    return it != config.explicitly_set.end() && IsTrue(it->second);
  };
  const bool adam8 = flag("use_8bit_adam"), lion = flag("use_lion_optimizer");
  if (!adam8 && !lion) return absl::OkStatus();
  if (adam8 && lion) {
    return absl::InvalidArgumentError("config keys 'use_8bit_adam' and 'use_lion_optimizer' exclude each other");
  }
  const char* flag_name = adam8 ? "use_8bit_adam" : "use_lion_optimizer";
  if (config.explicitly_set.count("optimizer_type") && !config.optimizer_type.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("config keys '", flag_name, "' and 'optimizer_type' are both set (",
                                                   "kohya refuses this); keep optimizer_type = \"", config.optimizer_type,
                                                   "\" and remove ", flag_name));
  }
  config.optimizer_type = adam8 ? "AdamW8bit" : "Lion";
  config.explicitly_set["optimizer_type"] = config.optimizer_type;
  return absl::OkStatus();
}

// Quoted for an error message; a huge value is cut (the message names its size).
std::string Quote(const std::string& s) {
  constexpr size_t kShown = 80;
  if (s.size() <= kShown) return absl::StrCat("\"", s, "\"");
  return absl::StrCat("\"", s.substr(0, kShown), "...\" (", s.size(), " bytes)");
}

std::string FormatDouble(double v);

absl::Status BadValue(const std::string& key, const std::string& value, const std::string& expected) {
  return absl::InvalidArgumentError(
      absl::StrCat("config key '", key, "': bad value ", Quote(value), "; expected ", expected));
}

absl::StatusOr<bool> ParseBool(const std::string& key, const std::string& text) {
  const std::string v = absl::AsciiStrToLower(absl::StripAsciiWhitespace(text));
  if (v == "true" || v == "1" || v == "yes" || v == "on") return true;
  if (v == "false" || v == "0" || v == "no" || v == "off") return false;
  return BadValue(key, text, "true or false");
}

absl::Status CheckNumeric(const std::string& key, const Option& option, double value, const std::string& text);

absl::StatusOr<int64_t> ParseInt(const std::string& key, const Option& option, const std::string& text) {
  const std::string v(absl::StripAsciiWhitespace(text));
  int64_t out = 0;
  if (absl::SimpleAtoi(v, &out)) return out;
  double d = 0;  // "1e3" and "10.0" are integers written as floats
  if (absl::SimpleAtod(v, &d) && std::isfinite(d) && d == std::floor(d)) {
    // The option's bounds first, so 9e15 for a step count names the limit.
    RETURN_IF_ERROR(CheckNumeric(key, option, d, text));
    if (std::fabs(d) < 9.2e18) return static_cast<int64_t>(d);
  }
  return BadValue(key, text, "an integer");
}

absl::StatusOr<double> ParseDouble(const std::string& key, const std::string& text) {
  const std::string v(absl::StripAsciiWhitespace(text));
  double out = 0;
  if (absl::SimpleAtod(v, &out) && std::isfinite(out)) return out;
  return BadValue(key, text, "a number");
}

bool IsNone(const std::string& text) {
  const std::string v = absl::AsciiStrToLower(absl::StripAsciiWhitespace(text));
  return v == "none" || v == "null";
}

// The command-line form of a list: kohya takes nargs='*' ("a=1 b=2"); a single
// text value is split on whitespace.
std::vector<std::string> SplitList(const std::string& text) {
  return absl::StrSplit(text, absl::ByAnyChar(" \t\n"), absl::SkipEmpty());
}

// A bound as text: integers in full ("100000000", not "1e+08").
std::string FormatBound(double v) {
  if (v == std::floor(v) && std::fabs(v) < 1e15) return std::to_string(static_cast<int64_t>(v));
  return FormatDouble(v);
}

absl::Status CheckNumeric(const std::string& key, const Option& option, double value, const std::string& text) {
  const bool below = option.min && value < *option.min;
  const bool above = option.max && value > *option.max;
  if (!below && !above) return absl::OkStatus();
  if (option.min && option.max) {
    return BadValue(key, text, absl::StrCat("a value from ", FormatBound(*option.min), " to ", FormatBound(*option.max)));
  }
  return BadValue(key, text, below ? absl::StrCat("a value >= ", FormatBound(*option.min))
                                   : absl::StrCat("a value <= ", FormatBound(*option.max)));
}

// Caption text is prepended/appended to every caption and tokenized per sample.
bool IsCaptionText(const std::string& key) {
  return key == "caption_prefix" || key == "caption_suffix" || key == "caption_separator" ||
         key == "keep_tokens_separator" || key == "secondary_separator";
}

absl::Status CheckTextSize(const std::string& key, const std::string& text) {
  const size_t limit = IsCaptionText(key) ? kMaxCaptionBytes : kMaxConfigStringBytes;
  if (text.size() <= limit) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("config key '", key, "': value of ", text.size(),
                                                 " bytes is longer than the ", limit, "-byte limit"));
}

absl::Status CheckAllowed(const std::string& key, const Option& option, const std::string& value) {
  if (option.allowed.empty()) return absl::OkStatus();
  if (std::find(option.allowed.begin(), option.allowed.end(), value) != option.allowed.end()) {
    return absl::OkStatus();
  }
  return BadValue(key, value, absl::StrCat("one of ", absl::StrJoin(option.allowed, ", ")));
}

// Assigns the option from text (the command line, or a TOML scalar rendered as text).
absl::Status Assign(TrainConfig& config, const std::string& key, const Option& option, const std::string& text) {
  return std::visit(
      [&](auto member) -> absl::Status {
        using T = std::remove_cvref_t<decltype(config.*member)>;
        if constexpr (std::is_same_v<T, bool>) {
          ASSIGN_OR_RETURN(config.*member, ParseBool(key, text));
        } else if constexpr (std::is_same_v<T, int64_t> || std::is_same_v<T, std::optional<int64_t>>) {
          if constexpr (std::is_same_v<T, std::optional<int64_t>>) {
            if (IsNone(text)) {
              config.*member = std::nullopt;
              return absl::OkStatus();
            }
          }
          ASSIGN_OR_RETURN(int64_t v, ParseInt(key, option, text));
          RETURN_IF_ERROR(CheckAllowed(key, option, std::to_string(v)));
          RETURN_IF_ERROR(CheckNumeric(key, option, static_cast<double>(v), text));
          config.*member = v;
        } else if constexpr (std::is_same_v<T, double> || std::is_same_v<T, std::optional<double>>) {
          if constexpr (std::is_same_v<T, std::optional<double>>) {
            if (IsNone(text)) {
              config.*member = std::nullopt;
              return absl::OkStatus();
            }
          }
          ASSIGN_OR_RETURN(double v, ParseDouble(key, text));
          RETURN_IF_ERROR(CheckNumeric(key, option, v, text));
          config.*member = v;
        } else if constexpr (std::is_same_v<T, std::string>) {
          RETURN_IF_ERROR(CheckTextSize(key, text));
          RETURN_IF_ERROR(CheckAllowed(key, option, text));
          config.*member = text;
        } else {
          RETURN_IF_ERROR(CheckTextSize(key, text));
          config.*member = SplitList(text);
        }
        return absl::OkStatus();
      },
      option.member);
}

// The shortest text that parses back to `v` ("2e-04", not 0.00020000000000000001):
// what explicitly_set and EffectiveOptions record, shown as the job's hyperparameters.
std::string FormatDouble(double v) {
  char buffer[64];
  const auto result = std::to_chars(buffer, buffer + sizeof(buffer), v);
  return std::string(buffer, result.ptr);
}

// A TOML value as the text Assign parses; arrays become a list (string list
// members) or comma-joined text (resolution = [512, 768]).
// What a TOML node is, for type errors.
std::string TomlTypeName(const toml::node& node) {
  if (node.is_table()) return "a table";
  if (node.is_array()) return "an array";
  if (node.is_date() || node.is_time() || node.is_date_time()) return "a date/time";
  return "a value of another type";
}

// What an option takes, for type errors.
std::string ExpectedType(const std::string& key, const Option& option) {
  if (key == "resolution") return "a size (512), \"WIDTH,HEIGHT\" or [WIDTH, HEIGHT]";
  return std::visit(
      [](auto member) -> std::string {
        using T = std::remove_cvref_t<decltype(TrainConfig().*member)>;
        if constexpr (std::is_same_v<T, bool>) return "true or false";
        if constexpr (std::is_same_v<T, std::string>) return "a string";
        if constexpr (std::is_same_v<T, std::vector<std::string>>) return "a string or a list of strings";
        return "a number";
      },
      option.member);
}

absl::StatusOr<std::string> TomlScalarText(const std::string& key, const Option& option, const toml::node& node) {
  if (auto v = node.as_boolean()) return std::string(v->get() ? "true" : "false");
  if (auto v = node.as_integer()) return std::to_string(v->get());
  if (auto v = node.as_floating_point()) return FormatDouble(v->get());
  if (auto v = node.as_string()) return v->get();
  return absl::InvalidArgumentError(
      absl::StrCat("config key '", key, "': expected ", ExpectedType(key, option), ", got ", TomlTypeName(node)));
}

absl::Status ApplyTomlValue(TrainConfig& config, const std::string& key, const toml::node& node) {
  const auto& options = Options();
  auto it = options.find(key);
  if (it == options.end()) {
    std::string text;
    if (auto v = node.as_boolean()) text = v->get() ? "true" : "false";
    if (auto v = node.as_string()) text = v->get();
    if (auto v = node.as_integer()) text = std::to_string(v->get());
    if (auto v = node.as_floating_point()) text = FormatDouble(v->get());
    return ApplyForeignOption(config, key, text, "config key");
  }
  if (const toml::array* array = node.as_array()) {
    std::vector<std::string> items;
    for (const toml::node& item : *array) {
      ASSIGN_OR_RETURN(std::string text, TomlScalarText(key, it->second, item));
      items.push_back(std::move(text));
    }
    RETURN_IF_ERROR(CheckTextSize(key, absl::StrJoin(items, " ")));
    if (std::holds_alternative<std::vector<std::string> TrainConfig::*>(it->second.member)) {
      config.*std::get<std::vector<std::string> TrainConfig::*>(it->second.member) = items;
      config.explicitly_set[key] = absl::StrJoin(items, " ");
      return absl::OkStatus();
    }
    if (key == "text_encoder_lr" && !items.empty()) {
      // kohya's text_encoder_lr takes one value per text encoder (nargs="*");
      // its SD / SDXL LoRA network (networks/lora.py) trains both at the first.
      if (std::any_of(items.begin(), items.end(), [&](const std::string& v) { return v != items[0]; })) {
        config.warnings.push_back(absl::StrCat("text_encoder_lr = [", absl::StrJoin(items, ", "),
                                               "]: both text encoders train at the first value, ", items[0],
                                               ", as kohya's networks.lora does"));
      }
      RETURN_IF_ERROR(Assign(config, key, it->second, items[0]));
      config.explicitly_set[key] = items[0];
      return absl::OkStatus();
    }
    if (key == "resolution") {
      config.resolution = absl::StrJoin(items, ",");
      config.explicitly_set[key] = config.resolution;
      return absl::OkStatus();
    }
    return absl::InvalidArgumentError(absl::StrCat("config key '", key, "': expected a single value, got a list"));
  }
  ASSIGN_OR_RETURN(std::string text, TomlScalarText(key, it->second, node));
  RETURN_IF_ERROR(CheckTextSize(key, text));
  if (std::holds_alternative<std::vector<std::string> TrainConfig::*>(it->second.member)) {
    // A single string in TOML is one list item (e.g. optimizer_args = "weight_decay=0.1").
    config.*std::get<std::vector<std::string> TrainConfig::*>(it->second.member) = {text};
  } else {
    RETURN_IF_ERROR(Assign(config, key, it->second, text));
  }
  config.explicitly_set[key] = text;
  return absl::OkStatus();
}

}  // namespace

std::map<std::string, std::string> TrainConfig::NetworkArgsMap() const {
  std::map<std::string, std::string> out;
  for (const std::string& arg : network_args) {
    std::pair<std::string, std::string> kv = absl::StrSplit(arg, absl::MaxSplits('=', 1));
    out[std::string(absl::StripAsciiWhitespace(kv.first))] = std::string(absl::StripAsciiWhitespace(kv.second));
  }
  return out;
}

absl::StatusOr<std::pair<int64_t, int64_t>> TrainConfig::ResolutionWH(int64_t default_size) const {
  if (resolution.empty()) return std::make_pair(default_size, default_size);
  std::vector<std::string> parts = absl::StrSplit(resolution, absl::ByAnyChar(",x"), absl::SkipWhitespace());
  if (parts.empty() || parts.size() > 2) {
    return BadValue("resolution", resolution, "\"SIZE\" or \"WIDTH,HEIGHT\", e.g. \"1024\" or \"832,1216\"");
  }
  std::vector<int64_t> values;
  for (const std::string& part : parts) {
    int64_t v = 0;
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(part), &v) || v < 64 || v > kMaxResolution || v % 8 != 0) {
      return BadValue("resolution", resolution,
                      absl::StrCat("sizes that are multiples of 8 from 64 to ", kMaxResolution,
                                   " (the largest training resolution per side)"));
    }
    values.push_back(v);
  }
  return std::make_pair(values[0], values.size() == 2 ? values[1] : values[0]);
}

absl::StatusOr<std::vector<std::pair<std::string, std::string>>> ParseCommandLine(
    const std::vector<std::string>& args) {
  std::vector<std::pair<std::string, std::string>> out;
  const auto& options = Options();
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (!absl::StartsWith(arg, "--") || arg.size() == 2) {
      return absl::InvalidArgumentError(
          absl::StrCat("unexpected argument ", Quote(arg), "; options are written --key value or --key=value"));
    }
    std::string body = arg.substr(2);
    std::replace(body.begin(), body.end(), '-', '_');  // --events-fd == --events_fd
    const size_t eq = body.find('=');
    if (eq != std::string::npos) {
      out.emplace_back(body.substr(0, eq), body.substr(eq + 1));
      continue;
    }
    auto it = options.find(body);
    const bool is_bool = it != options.end() && std::holds_alternative<bool TrainConfig::*>(it->second.member);
    const bool is_list =
        it != options.end() && std::holds_alternative<std::vector<std::string> TrainConfig::*>(it->second.member);
    const bool next_is_value = i + 1 < args.size() && !absl::StartsWith(args[i + 1], "--");
    if (is_bool) {
      // kohya's store_true flags take no value; "--flag false" is accepted too.
      if (next_is_value && ParseBool(body, args[i + 1]).ok()) {
        out.emplace_back(body, args[++i]);
      } else {
        out.emplace_back(body, "true");
      }
      continue;
    }
    if (is_list) {  // nargs='*': every following non-option token
      std::vector<std::string> items;
      while (i + 1 < args.size() && !absl::StartsWith(args[i + 1], "--")) items.push_back(args[++i]);
      out.emplace_back(body, absl::StrJoin(items, " "));
      continue;
    }
    if (!next_is_value) {
      return absl::InvalidArgumentError(absl::StrCat("option --", body, " needs a value"));
    }
    out.emplace_back(body, args[++i]);
  }
  return out;
}

absl::Status SetOption(TrainConfig& config, const std::string& key, const std::string& value) {
  const auto& options = Options();
  auto it = options.find(key);
  if (it == options.end()) return ApplyForeignOption(config, key, value, "option");
  RETURN_IF_ERROR(Assign(config, key, it->second, value));
  config.explicitly_set[key] = value;
  return absl::OkStatus();
}

namespace {

// log_prefix and log_tracker_name each name one folder under logging_dir: a
// path would write elsewhere.
absl::Status CheckFolderName(const std::string& key, const std::string& value) {
  if (value.find_first_of(std::string("/\\\0", 3)) == std::string::npos && value != "." && value != "..") {
    return absl::OkStatus();
  }
  return BadValue(key, value, "a folder name under logging_dir, without / or \\, not . or ..");
}

// kohya's trackers (train_util.py prepare_accelerator): lorad writes the
// TensorBoard one itself and sends nothing to Weights & Biases.
absl::Status ValidateLogging(const TrainConfig& config) {
  if (config.log_with == "wandb" || config.log_with == "all") {
    return absl::InvalidArgumentError(absl::StrCat(
        "config key 'log_with': ", Quote(config.log_with),
        " asks for Weights & Biases (wandb), which lorad does not support: use log_with = \"tensorboard\" with "
        "logging_dir and open the logs with `tensorboard --logdir <logging_dir>` (the wandb_* keys are then ignored)"));
  }
  if (!config.log_with.empty() && config.log_with != "tensorboard") {
    return BadValue("log_with", config.log_with, "one of tensorboard, wandb, all (kohya's choices; wandb is refused)");
  }
  if (config.log_with == "tensorboard" && config.logging_dir.empty()) {
    return absl::InvalidArgumentError(
        "config key 'log_with': \"tensorboard\" needs logging_dir, the folder the TensorBoard logs go to");
  }
  RETURN_IF_ERROR(CheckFolderName("log_prefix", config.log_prefix));
  return CheckFolderName("log_tracker_name", config.log_tracker_name);
}

}  // namespace

absl::Status ValidateTrainConfig(const TrainConfig& config) {
  if (config.pretrained_model_name_or_path.empty()) {
    return absl::InvalidArgumentError(
        "config key 'pretrained_model_name_or_path' is required: the base checkpoint (.safetensors) to train on");
  }
  if (config.dataset_config.empty() && config.train_data_dir.empty()) {
    return absl::InvalidArgumentError(
        "no dataset: set 'dataset_config' (a kohya dataset TOML) or 'train_data_dir' (a folder of N_name subfolders)");
  }
  if (config.full_bf16 && config.mixed_precision != "bf16") {
    return absl::InvalidArgumentError("config key 'full_bf16' needs mixed_precision = \"bf16\"");
  }
  if (config.full_fp16 && config.mixed_precision != "fp16") {
    return absl::InvalidArgumentError("config key 'full_fp16' needs mixed_precision = \"fp16\"");
  }
  if (config.full_fp16 && config.full_bf16) {
    return absl::InvalidArgumentError("config keys 'full_fp16' and 'full_bf16' exclude each other");
  }
  if (config.network_train_unet_only && config.network_train_text_encoder_only) {
    return absl::InvalidArgumentError(
        "config keys 'network_train_unet_only' and 'network_train_text_encoder_only' exclude each other");
  }
  // The scheduler's name, checked here so a submit is refused before a worker
  // starts (LrScheduler builds from the same list). With lr_scheduler_type the
  // name is only recorded (kohya ignores it; the guide's notebook writes "rex").
  if (config.lr_scheduler_type.empty()) {
    std::string scheduler = absl::AsciiStrToLower(absl::StripAsciiWhitespace(config.lr_scheduler));
    if (absl::StartsWith(scheduler, "adafactor:")) scheduler = "adafactor";
    const std::vector<std::string>& names = LrSchedulerNames();
    if (std::find(names.begin(), names.end(), scheduler) == names.end()) {
      return BadValue("lr_scheduler", config.lr_scheduler, absl::StrCat("one of ", absl::StrJoin(names, ", ")));
    }
  }
  if (config.lr_scheduler == "constant" && config.lr_warmup_steps > 0) {
    return absl::InvalidArgumentError(
        "config key 'lr_warmup_steps': lr_scheduler \"constant\" takes no warmup; use \"constant_with_warmup\"");
  }
  // lr_warmup_steps below 1 is a ratio of the total steps; from 1 up, a count.
  if (config.lr_warmup_steps >= 1 && config.lr_warmup_steps != std::floor(config.lr_warmup_steps)) {
    return BadValue("lr_warmup_steps", FormatDouble(config.lr_warmup_steps),
                    "a whole number of steps, or a ratio of the total steps below 1");
  }
  const int64_t min_t = config.min_timestep.value_or(0);
  const int64_t max_t = config.max_timestep.value_or(1000);
  if (max_t > 1000 || min_t >= max_t) {
    return absl::InvalidArgumentError(absl::StrCat("config keys 'min_timestep'/'max_timestep': need 0 <= min < max <= 1000, got ",
                                                   min_t, " and ", max_t));
  }
  // The text encoders are frozen with network_train_unet_only, or when their lr
  // is 0 (kohya drops that parameter group).
  const bool text_frozen = config.network_train_unet_only || config.TextEncoderLr() == 0;
  if (config.cache_text_encoder_outputs && !text_frozen) {
    return absl::InvalidArgumentError(
        "config key 'cache_text_encoder_outputs' needs frozen text encoders: network_train_unet_only = true or "
        "text_encoder_lr = 0");
  }
  if (config.cache_text_encoder_outputs_to_disk && !text_frozen) {
    return absl::InvalidArgumentError(
        "config key 'cache_text_encoder_outputs_to_disk' needs frozen text encoders: network_train_unet_only = true "
        "or text_encoder_lr = 0");
  }
  if (!config.lr_scheduler_type.empty()) {
    // kohya get_scheduler_fix: the class is built with lr_scheduler_args and no warmup.
    if (config.lr_warmup_steps != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "config key 'lr_warmup_steps': lr_scheduler_type ", config.lr_scheduler_type,
          " takes no lr_warmup_steps (kohya raises); set it to 0 and give the class its own warmup in "
          "lr_scheduler_args if it has one (e.g. warmup_steps=N for REX)"));
    }
    std::vector<std::string> ignored;  // warnings that need the step count come from the trainer
    auto typed = optim::ParseTypedSchedule(config.lr_scheduler_type, config.lr_scheduler_args, 0, 2, &ignored);
    if (!typed.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("config key 'lr_scheduler_type'/'lr_scheduler_args': ", typed.status().message()));
    }
  }
  // kohya: 0 disables max-norm; negative limits are meaningless.
  if (config.scale_weight_norms && !(*config.scale_weight_norms >= 0)) {
    return BadValue("scale_weight_norms", FormatDouble(*config.scale_weight_norms), "a positive max norm, or 0 to disable");
  }
  if (config.cache_latents && (config.color_aug || config.random_crop)) {
    return absl::InvalidArgumentError(
        "config key 'cache_latents' cannot be combined with color_aug or random_crop (the cached latent would be stale)");
  }
  RETURN_IF_ERROR(config.ResolutionWH(512).status());
  RETURN_IF_ERROR(ValidateLogging(config));
  const std::string& dev = config.device;
  if (!(dev == "auto" || dev == "cpu" || dev == "cuda" || absl::StartsWith(dev, "cuda:"))) {
    return BadValue("device", dev, "auto, cpu, cuda or cuda:N");
  }
  return absl::OkStatus();
}

absl::StatusOr<TrainConfig> ParseTrainOptions(const std::string& toml_text,
                                              const std::vector<std::pair<std::string, std::string>>& overrides) {
  TrainConfig config;
  ASSIGN_OR_RETURN(toml::table table, ParseToml(toml_text, "config"));
  // kohya's read_config_from_file: one level of sections is flattened away.
  for (const auto& [raw_key, node] : table) {
    const std::string key(raw_key.str());
    if (const toml::table* section = node.as_table()) {
      // A table under an option's own name is a wrong type (resolution = {w = 64}),
      // not a section: refused, never silently ignored.
      if (Options().count(key) != 0) RETURN_IF_ERROR(ApplyTomlValue(config, key, node));
      for (const auto& [inner_key, inner] : *section) {
        RETURN_IF_ERROR(ApplyTomlValue(config, std::string(inner_key.str()), inner));
      }
    } else {
      RETURN_IF_ERROR(ApplyTomlValue(config, key, node));
    }
  }
  for (const auto& [key, value] : overrides) {
    if (key == "config_file") continue;
    RETURN_IF_ERROR(SetOption(config, key, value));
  }
  RETURN_IF_ERROR(ApplyOptimizerFlags(config));
  return config;
}

absl::StatusOr<TrainConfig> ParseTrainConfig(const std::string& toml_text,
                                             const std::vector<std::pair<std::string, std::string>>& overrides) {
  ASSIGN_OR_RETURN(TrainConfig config, ParseTrainOptions(toml_text, overrides));
  RETURN_IF_ERROR(ValidateTrainConfig(config));
  return config;
}

absl::StatusOr<TrainConfig> LoadTrainConfig(const std::filesystem::path& config_file,
                                            const std::vector<std::pair<std::string, std::string>>& overrides) {
  std::string text;
  if (!config_file.empty()) {
    std::ifstream in(config_file, std::ios::binary);
    if (!in) {
      return absl::NotFoundError(absl::StrCat("cannot read config file ", config_file.string(),
                                              ": check the path given to --config_file"));
    }
    std::stringstream buffer;
    buffer << in.rdbuf();
    text = buffer.str();
  }
  auto config = ParseTrainConfig(text, overrides);
  if (!config.ok() && !config_file.empty()) {
    return absl::Status(config.status().code(),
                        absl::StrCat(config_file.string(), ": ", config.status().message()));
  }
  return config;
}

std::map<std::string, std::string> EffectiveOptions(const TrainConfig& config) {
  std::map<std::string, std::string> out;
  for (const auto& entry : Options()) {
    // Not a structured binding: clang 14 (the fuzzing build) cannot capture one.
    const auto& name = entry.first;
    std::visit(
        [&](auto member) {
          using T = std::remove_cvref_t<decltype(config.*member)>;
          const T& value = config.*member;
          if constexpr (std::is_same_v<T, bool>) {
            out[name] = value ? "true" : "false";
          } else if constexpr (std::is_same_v<T, int64_t>) {
            out[name] = std::to_string(value);
          } else if constexpr (std::is_same_v<T, double>) {
            out[name] = FormatDouble(value);
          } else if constexpr (std::is_same_v<T, std::string>) {
            out[name] = value;
          } else if constexpr (std::is_same_v<T, std::optional<int64_t>>) {
            if (value) out[name] = std::to_string(*value);
          } else if constexpr (std::is_same_v<T, std::optional<double>>) {
            if (value) out[name] = FormatDouble(*value);
          } else {
            out[name] = absl::StrJoin(value, " ");
          }
        },
        entry.second.member);
  }
  return out;
}

std::string ConfigToToml(const TrainConfig& config) {
  toml::table table;
  for (const auto& entry : Options()) {
    // Not a structured binding: clang 14 (the fuzzing build) cannot capture one.
    const auto& name = entry.first;
    std::visit(
        [&](auto member) {
          using T = std::remove_cvref_t<decltype(config.*member)>;
          const T& value = config.*member;
          if constexpr (std::is_same_v<T, std::optional<int64_t>> || std::is_same_v<T, std::optional<double>>) {
            if (value) table.insert(name, *value);
          } else if constexpr (std::is_same_v<T, std::vector<std::string>>) {
            toml::array array;
            for (const std::string& item : value) array.push_back(item);
            table.insert(name, std::move(array));
          } else {
            table.insert(name, value);
          }
        },
        entry.second.member);
  }
  std::ostringstream out;
  out << table << "\n";
  return out.str();
}

const std::vector<std::string>& LrSchedulerNames() {
  static const auto* names = new std::vector<std::string>{
      "constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial",
      "cosine_with_min_lr", "adafactor"};
  return *names;
}

std::vector<std::string> ForeignOptionNames() {
  std::set<std::string> names(NoEffectOptions().begin(), NoEffectOptions().end());
  for (const auto& entry : ForeignOptions()) names.insert(entry.first);
  return std::vector<std::string>(names.begin(), names.end());
}

std::vector<std::string> KnownOptionNames() {
  std::vector<std::string> out;
  for (const auto& [name, option] : Options()) out.push_back(name);
  return out;
}

absl::StatusOr<StepPlan> ComputeStepPlan(const TrainConfig& config, int64_t batches_per_epoch) {
  if (batches_per_epoch <= 0) {
    return absl::FailedPreconditionError("the dataset yields no batches: check the image folders and repeats");
  }
  if (batches_per_epoch > kMaxSamplesPerEpoch) {
    return absl::InvalidArgumentError(absl::StrCat("the dataset yields ", batches_per_epoch,
                                                   " batches per epoch, more than the limit of ", kMaxSamplesPerEpoch,
                                                   " samples per epoch: lower num_repeats"));
  }
  StepPlan plan;
  plan.batches_per_epoch = batches_per_epoch;
  const int64_t accumulation = std::max<int64_t>(1, config.gradient_accumulation_steps);
  plan.steps_per_epoch = (batches_per_epoch + accumulation - 1) / accumulation;
  plan.max_train_steps =
      config.max_train_epochs ? *config.max_train_epochs * plan.steps_per_epoch : config.max_train_steps;
  if (plan.max_train_steps > kMaxTrainSteps) {
    return absl::InvalidArgumentError(absl::StrCat("config key 'max_train_epochs': ", *config.max_train_epochs,
                                                   " epochs of ", plan.steps_per_epoch, " steps is ",
                                                   plan.max_train_steps, " steps, more than the limit of ",
                                                   kMaxTrainSteps));
  }
  plan.num_epochs = (plan.max_train_steps + plan.steps_per_epoch - 1) / plan.steps_per_epoch;
  plan.warmup_steps = config.lr_warmup_steps < 1 && config.lr_warmup_steps > 0
                          ? static_cast<int64_t>(config.lr_warmup_steps * plan.max_train_steps)
                          : static_cast<int64_t>(config.lr_warmup_steps);
  return plan;
}

}  // namespace lorad::train
