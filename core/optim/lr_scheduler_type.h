// kohya's `lr_scheduler_type`: a learning-rate scheduler class named by module
// path, built with `lr_scheduler_args` as its keyword arguments
// (sd-scripts library/train_util.py get_scheduler_fix; no dot = a class of
// torch.optim.lr_scheduler). Supported: the torch.optim.lr_scheduler classes
// whose rates need no Python callable, metric or other scheduler (StepLR,
// MultiStepLR, ConstantLR, LinearLR, ExponentialLR, PolynomialLR,
// CosineAnnealingLR, CosineAnnealingWarmRestarts, OneCycleLR without momentum
// cycling), and LoraEasyCustomOptimizer's RexAnnealingWarmRestarts and
// CosineAnnealingWarmRestarts (derrian-distro/LoRA_Easy_Training_scripts_Backend,
// custom_scheduler/LoraEasyCustomOptimizer). Each repeats its class's arithmetic
// step by step in double precision, torch 2.11's recursive ("chainable") form
// where torch uses one, so the rates are the reference's to the last bits.
// Internal to core/optim: LrScheduler is the public face.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace lorad::optim {

struct TypedSchedule {
  enum class Kind {
    kStepLR,
    kMultiStepLR,
    kConstantLR,
    kLinearLR,
    kExponentialLR,
    kPolynomialLR,
    kCosineAnnealingLR,
    kCosineAnnealingWarmRestarts,
    kOneCycleLR,
    kRexWarmRestarts,        // LoraEasyCustomOptimizer.RexAnnealingWarmRestarts
    kEasyCosineWarmRestarts  // LoraEasyCustomOptimizer.CosineAnnealingWarmRestarts
  };
  Kind kind = Kind::kStepLR;
  std::string class_path;  // the full path, as recorded

  // torch.optim.lr_scheduler arguments (torch's defaults).
  int64_t step_size = 0;
  double gamma = 0.1;
  std::vector<int64_t> milestones;
  double factor = 1.0 / 3;
  int64_t total_iters = 5;
  double start_factor = 1.0 / 3;
  double end_factor = 1.0;
  double power = 1.0;
  int64_t t_max = 0;
  double eta_min = 0.0;
  int64_t t_0 = 0;
  int64_t t_mult = 1;
  // OneCycleLR.
  std::vector<double> max_lr;  // one value, or one per parameter group
  int64_t total_steps = 0;
  double pct_start = 0.3;
  bool anneal_cos = true;
  double div_factor = 25.0;
  double final_div_factor = 1e4;
  bool three_phase = false;
  // LoraEasyCustomOptimizer warm restarts.
  double cycle_multiplier = 1.0;
  int64_t first_cycle_max_steps = 1;
  double min_lr = 1e-6;
  int64_t warmup_steps = 0;
  double d = 0.9;
};

// One parameter group's position in a typed schedule.
struct TypedGroupState {
  bool started = false;  // set by StartGroup
  int64_t step = 0;      // the scheduler's last_epoch
  double lr = 0;     // the group's lr at `step`
  double base_lr = 0;
  // CosineAnnealingWarmRestarts (torch).
  int64_t t_cur = 0, t_i = 0;
  // LoraEasyCustomOptimizer warm restarts (their param-group keys).
  int64_t cycle = 0, cycle_step = 0, cycle_max_steps = 0;
  double current_max_lr = 0, group_min_lr = 0;
};

// Resolves `type` as kohya does and reads `args`. `total_steps` is the run's
// optimizer steps (max_train_steps): OneCycleLR must cover them. Errors name
// the class and the argument; an unsupported class lists what is supported
// and why (e.g. LambdaLR needs a Python function). Warnings (e.g. REX left at
// its default one-step cycles) go to `warnings`.
absl::StatusOr<TypedSchedule> ParseTypedSchedule(const std::string& type, const std::vector<std::string>& args,
                                                 int64_t total_steps, int num_groups,
                                                 std::vector<std::string>* warnings);
// The class names accepted in lr_scheduler_type, for messages.
std::vector<std::string> SupportedScheduleTypes();

// The group's state after the scheduler's construction (step 0), for a group
// created with `base_lr`, then one scheduler.step().
TypedGroupState StartGroup(const TypedSchedule& schedule, int group, double base_lr);
void AdvanceGroup(const TypedSchedule& schedule, int group, TypedGroupState& state);

}  // namespace lorad::optim
