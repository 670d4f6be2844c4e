#include "core/optim/lr_scheduler.h"

#include <cmath>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/base/logging.h"
#include "core/base/status_macros.h"
#include "core/config/config.h"
#include "core/optim/optimizer.h"
#include "core/optim/optimizer_args.h"

namespace lorad::optim {
namespace {

constexpr double kPi = 3.14159265358979323846;

double Warmup(int64_t step, int64_t warmup) {
  return static_cast<double>(step) / static_cast<double>(std::max<int64_t>(1, warmup));
}

}  // namespace

std::vector<std::string> LrScheduler::AcceptedNames() {
  return train::LrSchedulerNames();  // the config parser checks the same list
}

absl::StatusOr<LrScheduler> LrScheduler::Create(const SchedulerOptions& options) {
  if (!options.type.empty()) {
    // kohya get_scheduler_fix: a scheduler class takes no lr_warmup_steps.
    if (options.warmup_steps != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "lr_scheduler_type ", options.type, " does not take lr_warmup_steps (kohya raises): set lr_warmup_steps = 0 "
          "and give the class its own warmup in lr_scheduler_args if it has one (e.g. warmup_steps=N for REX)"));
    }
    LrScheduler s;
    s.name_ = absl::AsciiStrToLower(absl::StripAsciiWhitespace(options.name));
    s.total_ = options.total_steps;
    ASSIGN_OR_RETURN(TypedSchedule typed, ParseTypedSchedule(options.type, options.args, options.total_steps,
                                                             std::max(1, options.num_groups), &s.warnings_));
    s.typed_ = std::move(typed);
    return s;
  }
  std::string name = absl::AsciiStrToLower(absl::StripAsciiWhitespace(options.name));
  // kohya spells the Adafactor schedule "adafactor:<initial lr>".
  if (absl::StartsWith(name, "adafactor:")) name = "adafactor";
  std::vector<std::string> names = AcceptedNames();
  if (std::find(names.begin(), names.end(), name) == names.end()) {
    return absl::InvalidArgumentError(absl::StrCat("unknown lr_scheduler '", options.name,
                                                   "'; accepted: ", absl::StrJoin(names, ", ")));
  }
  if (options.total_steps < 0) {
    return absl::InvalidArgumentError(absl::StrCat("total training steps ", options.total_steps, " must be >= 0"));
  }
  const double w = options.warmup_steps;
  if (!std::isfinite(w) || w < 0 || (w >= 1 && std::floor(w) != w)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "lr_warmup_steps ", w, " must be a step count (integer >= 0) or a ratio of the total steps in (0, 1)"));
  }
  LrScheduler s;
  s.name_ = name;
  s.total_ = options.total_steps;
  // kohya: a float warmup is a ratio, int(ratio * num_training_steps).
  s.warmup_ = w < 1 ? static_cast<int64_t>(w * static_cast<double>(options.total_steps)) : static_cast<int64_t>(w);
  s.num_cycles_ = options.num_cycles;
  s.power_ = options.power;
  s.min_lr_ratio_ = options.min_lr_ratio;
  s.lr_end_ = options.lr_end;
  s.lr_init_ = options.lr_init;
  if (name == "constant" && w != 0) {
    return absl::InvalidArgumentError(
        "lr_scheduler constant does not require lr_warmup_steps: set it to 0, or use constant_with_warmup");
  }
  if (!std::isfinite(s.num_cycles_) || s.num_cycles_ <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("lr_scheduler_num_cycles ", s.num_cycles_, " must be > 0"));
  }
  if (!std::isfinite(s.power_) || s.power_ <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("lr_scheduler_power ", s.power_, " must be > 0"));
  }
  if (!std::isfinite(s.min_lr_ratio_) || s.min_lr_ratio_ < 0 || s.min_lr_ratio_ > 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("lr_scheduler_min_lr_ratio ", s.min_lr_ratio_, " must be in [0, 1]"));
  }
  if (s.min_lr_ratio_ != 0 && name != "cosine_with_min_lr") {
    Logger("optim")->warn("lr_scheduler_min_lr_ratio={} is ignored by lr_scheduler {} (kohya uses it only for "
                          "cosine_with_min_lr)",
                          s.min_lr_ratio_, name);
  }
  RETURN_IF_ERROR(s.ReadNamedScheduleArgs(options.args));
  if (name == "polynomial") {
    if (!(s.lr_init_ > s.lr_end_)) {
      return absl::InvalidArgumentError(absl::StrCat("polynomial schedule needs the learning rate (", s.lr_init_,
                                                     ") to be larger than lr_end (", s.lr_end_, ")"));
    }
    if (s.total_ <= s.warmup_) {
      return absl::InvalidArgumentError(absl::StrCat("polynomial schedule needs more total steps (", s.total_,
                                                     ") than warmup steps (", s.warmup_, ")"));
    }
  }
  return s;
}

absl::Status LrScheduler::ReadNamedScheduleArgs(const std::vector<std::string>& args) {
  if (args.empty()) return absl::OkStatus();
  // kohya passes lr_scheduler_args to the transformers / diffusers schedule
  // function as keyword arguments; these are the ones it does not pass itself.
  std::vector<std::string> accepted = {"last_epoch"};
  if (name_ == "cosine") accepted.push_back("num_cycles");
  if (name_ == "polynomial") accepted.push_back("lr_end");
  ASSIGN_OR_RETURN(OptimizerArgs parsed, OptimizerArgs::Parse(args, "lr_scheduler_args"));
  absl::Status known = parsed.CheckKnown(absl::StrCat("lr_scheduler ", name_), accepted);
  if (!known.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        known.message(), " (lr_scheduler_args are keyword arguments of the schedule; kohya passes warmup, total "
                         "steps, num_cycles and power itself from lr_warmup_steps, lr_scheduler_num_cycles and "
                         "lr_scheduler_power)"));
  }
  ASSIGN_OR_RETURN(int64_t last_epoch, parsed.Int("last_epoch", -1));
  if (last_epoch != -1) {
    return absl::InvalidArgumentError("lr_scheduler_args last_epoch must stay -1; resume a run with `resume` instead");
  }
  ASSIGN_OR_RETURN(cosine_cycles_, parsed.Float("num_cycles", 0.5));
  ASSIGN_OR_RETURN(lr_end_, parsed.Float("lr_end", lr_end_));
  return absl::OkStatus();
}

double LrScheduler::LrAt(int group, double base_lr, int64_t step) const {
  if (!typed_) return base_lr * Multiplier(step);
  if (static_cast<size_t>(group) >= states_.size()) states_.resize(group + 1);
  TypedGroupState& g = states_[group];
  // A new group, a changed base lr or a step back (resume): start over.
  if (!g.started || g.step > step || g.base_lr != base_lr) {
    g = StartGroup(*typed_, group, base_lr);
  }
  while (g.step < step) AdvanceGroup(*typed_, group, g);
  return g.lr;
}

double LrScheduler::Multiplier(int64_t step) const {
  if (typed_) {
    // A fresh position, so this never disturbs the groups' states.
    TypedGroupState g = StartGroup(*typed_, 0, 1.0);
    while (g.step < step) AdvanceGroup(*typed_, 0, g);
    return g.lr;
  }
  const int64_t W = warmup_, T = total_;
  if (name_ == "constant" || name_ == "adafactor") return 1.0;
  if (step < W) return Warmup(step, W);
  if (name_ == "constant_with_warmup") return 1.0;
  const double progress = static_cast<double>(step - W) / static_cast<double>(std::max<int64_t>(1, T - W));
  if (name_ == "linear") {
    return std::max(0.0, static_cast<double>(T - step) / static_cast<double>(std::max<int64_t>(1, T - W)));
  }
  if (name_ == "cosine") {
    // kohya calls it without num_cycles: transformers' default 0.5, one half
    // cosine, unless lr_scheduler_args sets num_cycles.
    return std::max(0.0, 0.5 * (1.0 + std::cos(kPi * cosine_cycles_ * 2.0 * progress)));
  }
  if (name_ == "cosine_with_restarts") {
    if (progress >= 1.0) return 0.0;
    return std::max(0.0, 0.5 * (1.0 + std::cos(kPi * std::fmod(num_cycles_ * progress, 1.0))));
  }
  if (name_ == "cosine_with_min_lr") {
    // kohya passes num_cycles = lr_scheduler_num_cycles / 2.
    double factor = 0.5 * (1.0 + std::cos(kPi * (num_cycles_ / 2.0) * 2.0 * progress));
    factor = factor * (1 - min_lr_ratio_) + min_lr_ratio_;
    return std::max(0.0, factor);
  }
  // polynomial (transformers get_polynomial_decay_schedule_with_warmup)
  if (step > T) return lr_end_ / lr_init_;
  const double lr_range = lr_init_ - lr_end_;
  const double decay_steps = static_cast<double>(T - W);
  const double pct_remaining = 1 - static_cast<double>(step - W) / decay_steps;
  const double decay = lr_range * std::pow(pct_remaining, power_) + lr_end_;
  return decay / lr_init_;
}

absl::Status LrScheduler::Apply(int64_t step, Optimizer& optimizer) const {
  if (name_ == "adafactor" && !optimizer.UsesInternalLr()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the adafactor lr_scheduler only works with Adafactor and relative_step=True, not ", std::string(optimizer.name())));
  }
  // Adafactor with relative_step computes its own lr (kohya forces the adafactor schedule).
  if (optimizer.UsesInternalLr()) return absl::OkStatus();
  if (step < 0) return absl::InvalidArgumentError(absl::StrCat("scheduler step ", step, " must be >= 0"));
  if (typed_) {
    for (int g = 0; g < optimizer.num_groups(); ++g) {
      RETURN_IF_ERROR(optimizer.SetLr(g, LrAt(g, optimizer.base_lr(g), step)));
    }
    return absl::OkStatus();
  }
  const double multiplier = Multiplier(step);
  for (int g = 0; g < optimizer.num_groups(); ++g) {
    absl::Status status = optimizer.SetLr(g, optimizer.base_lr(g) * multiplier);
    if (!status.ok()) return status;
  }
  return absl::OkStatus();
}

}  // namespace lorad::optim
