// Learning-rate schedules: kohya's get_scheduler_fix (sd-scripts library/train_util.py)
// over the lambdas of transformers/diffusers optimization.py. Multiplier(step) is
// lr_lambda(step): the factor for the (step+1)-th optimizer update, so warmup starts at lr 0.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "core/optim/lr_scheduler_type.h"

namespace lorad::optim {

class Optimizer;

struct SchedulerOptions {
  // constant, constant_with_warmup, linear, cosine, cosine_with_restarts,
  // polynomial, cosine_with_min_lr, adafactor (case-insensitive; "adafactor:<lr>" too).
  std::string name = "constant";
  // lr_warmup_steps: a step count (>= 1 or 0), or a ratio of total_steps when < 1.
  double warmup_steps = 0;
  // max_train_steps x num_processes.
  int64_t total_steps = 0;
  // lr_scheduler_num_cycles (cosine_with_restarts; cosine_with_min_lr as kohya: cycles / 2).
  double num_cycles = 1;
  // lr_scheduler_power (polynomial).
  double power = 1.0;
  // lr_scheduler_min_lr_ratio (cosine_with_min_lr; ignored by the others, as in kohya).
  double min_lr_ratio = 0.0;
  // polynomial: lr_end and lr_init (the optimizer's default lr; must be > lr_end).
  double lr_end = 1e-7;
  double lr_init = 0.0;
  // lr_scheduler_type: a scheduler class by module path (see lr_scheduler_type.h);
  // when set, `name` is only recorded, as in kohya.
  std::string type;
  // lr_scheduler_args ("key=value", Python literals): the class's keyword
  // arguments, or extra arguments of the named schedule (cosine: num_cycles;
  // polynomial: lr_end; cosine_with_min_lr: min_lr), as kohya passes them.
  std::vector<std::string> args;
  // Parameter groups (OneCycleLR max_lr may give one value per group).
  int num_groups = 1;
};

class LrScheduler {
 public:
  // Validates the options: unknown name (lists the accepted ones), warmup with
  // "constant" (kohya's error), negative values, polynomial lr_init <= lr_end.
  static absl::StatusOr<LrScheduler> Create(const SchedulerOptions& options);
  static std::vector<std::string> AcceptedNames();

  // lr_lambda(step), step counted from 0. With lr_scheduler_type: the rate
  // of a group whose base lr is 1.
  double Multiplier(int64_t step) const;
  // The lr of a group created with `base_lr` at `step`.
  double LrAt(int group, double base_lr, int64_t step) const;
  // Sets every group's lr for `step`: base_lr x Multiplier(step), or the
  // lr_scheduler_type class's rate. The "adafactor" schedule leaves the
  // optimizer alone (Adafactor computes its own lr).
  absl::Status Apply(int64_t step, Optimizer& optimizer) const;

  // What the schedule does that the user should know (e.g. REX with one-step cycles).
  const std::vector<std::string>& warnings() const { return warnings_; }
  // "torch.optim.lr_scheduler.CosineAnnealingLR", ...; empty without lr_scheduler_type.
  const std::string& type() const { return typed_ ? typed_->class_path : no_type_; }

  const std::string& name() const { return name_; }
  int64_t warmup_steps() const { return warmup_; }
  int64_t total_steps() const { return total_; }

 private:
  LrScheduler() = default;
  absl::Status ReadNamedScheduleArgs(const std::vector<std::string>& args);
  std::string name_;
  int64_t warmup_ = 0;
  int64_t total_ = 0;
  double num_cycles_ = 1;
  double power_ = 1;
  double min_lr_ratio_ = 0;
  double lr_end_ = 1e-7;
  double lr_init_ = 0;
  double cosine_cycles_ = 0.5;  // transformers' default for "cosine"
  std::optional<TypedSchedule> typed_;
  // Per group, the typed schedule's position: rates depend on the previous
  // step's (torch's chainable form), so they are advanced, not recomputed.
  mutable std::vector<TypedGroupState> states_;
  std::vector<std::string> warnings_;
  std::string no_type_;
};

}  // namespace lorad::optim
