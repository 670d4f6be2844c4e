// Learning-rate schedules: kohya's get_scheduler_fix (sd-scripts library/train_util.py)
// over the lambdas of transformers/diffusers optimization.py. Multiplier(step) is
// lr_lambda(step): the factor for the (step+1)-th optimizer update, so warmup starts at lr 0.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

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
};

class LrScheduler {
 public:
  // Validates the options: unknown name (lists the accepted ones), warmup with
  // "constant" (kohya's error), negative values, polynomial lr_init <= lr_end.
  static absl::StatusOr<LrScheduler> Create(const SchedulerOptions& options);
  static std::vector<std::string> AcceptedNames();

  // lr_lambda(step), step counted from 0.
  double Multiplier(int64_t step) const;
  // Sets every group's lr to base_lr x Multiplier(step). The "adafactor"
  // schedule leaves the optimizer alone (Adafactor computes its own lr).
  absl::Status Apply(int64_t step, Optimizer& optimizer) const;

  const std::string& name() const { return name_; }
  int64_t warmup_steps() const { return warmup_; }
  int64_t total_steps() const { return total_; }

 private:
  LrScheduler() = default;
  std::string name_;
  int64_t warmup_ = 0;
  int64_t total_ = 0;
  double num_cycles_ = 1;
  double power_ = 1;
  double min_lr_ratio_ = 0;
  double lr_end_ = 1e-7;
  double lr_init_ = 0;
};

}  // namespace lorad::optim
