#include "core/optim/lr_scheduler_type.h"

#include <algorithm>
#include <cmath>
#include <map>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "core/base/status_macros.h"
#include "core/optim/optimizer_args.h"

namespace lorad::optim {
namespace {

using Kind = TypedSchedule::Kind;
constexpr double kPi = 3.14159265358979323846;  // math.pi
constexpr char kTorchModule[] = "torch.optim.lr_scheduler";
constexpr char kEasyModule[] = "LoraEasyCustomOptimizer";

struct ClassInfo {
  Kind kind;
  std::vector<std::string> kwargs;  // the keyword arguments its constructor takes (besides the optimizer)
};

const std::map<std::string, ClassInfo>& TorchClasses() {
  static const auto* classes = new std::map<std::string, ClassInfo>{
      {"StepLR", {Kind::kStepLR, {"step_size", "gamma", "last_epoch"}}},
      {"MultiStepLR", {Kind::kMultiStepLR, {"milestones", "gamma", "last_epoch"}}},
      {"ConstantLR", {Kind::kConstantLR, {"factor", "total_iters", "last_epoch"}}},
      {"LinearLR", {Kind::kLinearLR, {"start_factor", "end_factor", "total_iters", "last_epoch"}}},
      {"ExponentialLR", {Kind::kExponentialLR, {"gamma", "last_epoch"}}},
      {"PolynomialLR", {Kind::kPolynomialLR, {"total_iters", "power", "last_epoch"}}},
      {"CosineAnnealingLR", {Kind::kCosineAnnealingLR, {"T_max", "eta_min", "last_epoch"}}},
      {"CosineAnnealingWarmRestarts", {Kind::kCosineAnnealingWarmRestarts, {"T_0", "T_mult", "eta_min", "last_epoch"}}},
      {"OneCycleLR",
       {Kind::kOneCycleLR,
        {"max_lr", "total_steps", "epochs", "steps_per_epoch", "pct_start", "anneal_strategy", "cycle_momentum",
         "base_momentum", "max_momentum", "div_factor", "final_div_factor", "three_phase", "last_epoch"}}},
  };
  return *classes;
}

// torch classes that exist but cannot be configured from a TOML file, and why.
const std::map<std::string, std::string>& TorchClassesRefused() {
  static const auto* refused = new std::map<std::string, std::string>{
      {"LambdaLR", "it takes a Python function (lr_lambda)"},
      {"MultiplicativeLR", "it takes a Python function (lr_lambda)"},
      {"SequentialLR", "it takes other scheduler objects"},
      {"ChainedScheduler", "it takes other scheduler objects"},
      {"ReduceLROnPlateau", "it steps on a validation metric, which LoRA training does not compute"},
      {"CyclicLR", "it cycles the optimizer's momentum by default; use OneCycleLR or CosineAnnealingWarmRestarts"},
  };
  return *refused;
}

const std::map<std::string, ClassInfo>& EasyClasses() {
  static const auto* classes = new std::map<std::string, ClassInfo>{
      {"RexAnnealingWarmRestarts.RexAnnealingWarmRestarts",
       {Kind::kRexWarmRestarts,
        {"gamma", "cycle_multiplier", "first_cycle_max_steps", "min_lr", "warmup_steps", "last_epoch", "d"}}},
      {"CosineAnnealingWarmRestarts.CosineAnnealingWarmRestarts",
       {Kind::kEasyCosineWarmRestarts,
        {"gamma", "cycle_multiplier", "first_cycle_max_steps", "min_lr", "warmup_steps", "last_epoch"}}},
  };
  return *classes;
}

absl::Status Bad(const std::string& class_name, const std::string& message) {
  return absl::InvalidArgumentError(absl::StrCat("lr_scheduler_type ", class_name, ": ", message));
}

absl::StatusOr<double> Required(const OptimizerArgs& args, const std::string& cls, const std::string& key,
                                const std::string& example) {
  if (!args.Has(key)) return Bad(cls, absl::StrCat("needs ", key, " in lr_scheduler_args, e.g. \"", example, "\""));
  return args.Float(key, 0);
}

absl::StatusOr<int64_t> RequiredInt(const OptimizerArgs& args, const std::string& cls, const std::string& key,
                                    const std::string& example) {
  if (!args.Has(key)) return Bad(cls, absl::StrCat("needs ", key, " in lr_scheduler_args, e.g. \"", example, "\""));
  return args.Int(key, 0);
}

absl::Status ReadTorch(const std::string& cls, const OptimizerArgs& args, int64_t total_steps, int num_groups,
                       TypedSchedule& s) {
  switch (s.kind) {
    case Kind::kStepLR: {
      ASSIGN_OR_RETURN(s.step_size, RequiredInt(args, cls, "step_size", "step_size=500"));
      ASSIGN_OR_RETURN(s.gamma, args.Float("gamma", 0.1));
      if (s.step_size < 1) return Bad(cls, "step_size must be >= 1");
      break;
    }
    case Kind::kMultiStepLR: {
      if (!args.Has("milestones")) return Bad(cls, "needs milestones, e.g. \"milestones=[500,1000]\"");
      ASSIGN_OR_RETURN(s.milestones, args.Ints("milestones"));
      ASSIGN_OR_RETURN(s.gamma, args.Float("gamma", 0.1));
      break;
    }
    case Kind::kConstantLR: {
      ASSIGN_OR_RETURN(s.factor, args.Float("factor", 1.0 / 3));
      ASSIGN_OR_RETURN(s.total_iters, args.Int("total_iters", 5));
      // torch refuses factors outside [0, 1]; 0 would divide by zero where the constant phase ends.
      if (!(s.factor > 0 && s.factor <= 1)) return Bad(cls, "factor must be in (0, 1]");
      break;
    }
    case Kind::kLinearLR: {
      ASSIGN_OR_RETURN(s.start_factor, args.Float("start_factor", 1.0 / 3));
      ASSIGN_OR_RETURN(s.end_factor, args.Float("end_factor", 1.0));
      ASSIGN_OR_RETURN(s.total_iters, args.Int("total_iters", 5));
      if (!(s.start_factor > 0 && s.start_factor <= 1)) return Bad(cls, "start_factor must be in (0, 1]");
      if (!(s.end_factor >= 0 && s.end_factor <= 1)) return Bad(cls, "end_factor must be in [0, 1]");
      if (s.total_iters < 1) return Bad(cls, "total_iters must be >= 1");
      break;
    }
    case Kind::kExponentialLR: {
      ASSIGN_OR_RETURN(s.gamma, Required(args, cls, "gamma", "gamma=0.999"));
      break;
    }
    case Kind::kPolynomialLR: {
      ASSIGN_OR_RETURN(s.total_iters, args.Int("total_iters", 5));
      ASSIGN_OR_RETURN(s.power, args.Float("power", 1.0));
      if (s.total_iters < 1) return Bad(cls, "total_iters must be >= 1");
      break;
    }
    case Kind::kCosineAnnealingLR: {
      ASSIGN_OR_RETURN(s.t_max, RequiredInt(args, cls, "T_max", absl::StrCat("T_max=", std::max<int64_t>(1, total_steps))));
      ASSIGN_OR_RETURN(s.eta_min, args.Float("eta_min", 0.0));
      if (s.t_max < 1) return Bad(cls, "T_max must be >= 1");
      break;
    }
    case Kind::kCosineAnnealingWarmRestarts: {
      ASSIGN_OR_RETURN(s.t_0, RequiredInt(args, cls, "T_0", "T_0=500"));
      ASSIGN_OR_RETURN(s.t_mult, args.Int("T_mult", 1));
      ASSIGN_OR_RETURN(s.eta_min, args.Float("eta_min", 0.0));
      if (s.t_0 < 1) return Bad(cls, "T_0 must be a positive integer");
      if (s.t_mult < 1) return Bad(cls, "T_mult must be an integer >= 1");
      break;
    }
    case Kind::kOneCycleLR: {
      if (!args.Has("max_lr")) return Bad(cls, "needs max_lr, e.g. \"max_lr=1e-4\"");
      auto one = args.Float("max_lr", 0);
      if (one.ok()) {
        s.max_lr = {*one};
      } else {
        ASSIGN_OR_RETURN(s.max_lr, args.Floats("max_lr", std::vector<double>(num_groups, 0.0)));
      }
      if (args.Has("total_steps")) {
        ASSIGN_OR_RETURN(s.total_steps, args.Int("total_steps", 0));
      } else if (args.Has("epochs") && args.Has("steps_per_epoch")) {
        ASSIGN_OR_RETURN(int64_t epochs, args.Int("epochs", 0));
        ASSIGN_OR_RETURN(int64_t per_epoch, args.Int("steps_per_epoch", 0));
        if (epochs < 1 || per_epoch < 1) return Bad(cls, "epochs and steps_per_epoch must be >= 1");
        s.total_steps = epochs * per_epoch;
      } else {
        return Bad(cls, absl::StrCat("needs total_steps (or epochs and steps_per_epoch), e.g. \"total_steps=",
                                     std::max<int64_t>(1, total_steps), "\""));
      }
      if (s.total_steps < 1) return Bad(cls, "total_steps must be >= 1");
      // torch raises once the scheduler steps past total_steps; kohya steps it after every update.
      if (s.total_steps < total_steps) {
        return Bad(cls, absl::StrCat("total_steps ", s.total_steps, " is less than this run's ", total_steps,
                                     " steps (torch raises past total_steps): set total_steps=", total_steps));
      }
      ASSIGN_OR_RETURN(s.pct_start, args.Float("pct_start", 0.3));
      if (!(s.pct_start >= 0 && s.pct_start <= 1)) return Bad(cls, "pct_start must be in [0, 1]");
      ASSIGN_OR_RETURN(s.div_factor, args.Float("div_factor", 25.0));
      ASSIGN_OR_RETURN(s.final_div_factor, args.Float("final_div_factor", 1e4));
      ASSIGN_OR_RETURN(s.three_phase, args.Bool("three_phase", false));
      if (args.Has("anneal_strategy")) {
        // A Python string literal: 'cos' or 'linear'.
        std::string strategy;
        for (const std::string& a : args.DescribeArgs()) {
          if (absl::StartsWith(a, "anneal_strategy=")) strategy = a.substr(16);
        }
        strategy.erase(std::remove_if(strategy.begin(), strategy.end(), [](char c) { return c == '\'' || c == '"'; }),
                       strategy.end());
        if (strategy != "cos" && strategy != "linear") return Bad(cls, "anneal_strategy must be 'cos' or 'linear'");
        s.anneal_cos = strategy == "cos";
      }
      ASSIGN_OR_RETURN(bool cycle_momentum, args.Bool("cycle_momentum", true));
      if (cycle_momentum) {
        return Bad(cls, "cycle_momentum=True (torch's default) varies the optimizer's momentum / beta1 every step, "
                        "which lorad's optimizers do not take from a scheduler; add cycle_momentum=False to "
                        "lr_scheduler_args (the learning rates then follow OneCycleLR exactly)");
      }
      break;
    }
    default:
      break;
  }
  return absl::OkStatus();
}

absl::Status ReadEasy(const std::string& cls, const OptimizerArgs& args, int64_t total_steps, TypedSchedule& s,
                      std::vector<std::string>* warnings) {
  ASSIGN_OR_RETURN(s.gamma, Required(args, cls, "gamma", "gamma=0.9"));
  ASSIGN_OR_RETURN(s.cycle_multiplier, args.Float("cycle_multiplier", 1.0));
  ASSIGN_OR_RETURN(s.first_cycle_max_steps, args.Int("first_cycle_max_steps", 1));
  ASSIGN_OR_RETURN(s.min_lr, args.Float("min_lr", 1e-6));
  ASSIGN_OR_RETURN(s.warmup_steps, args.Int("warmup_steps", 0));
  if (s.kind == Kind::kRexWarmRestarts) {
    ASSIGN_OR_RETURN(s.d, args.Float("d", 0.9));
  }
  if (s.warmup_steps < 0) return Bad(cls, "warmup_steps must be >= 0");
  if (s.warmup_steps >= s.first_cycle_max_steps) {
    return Bad(cls, absl::StrCat("warmup_steps (", s.warmup_steps, ") must be smaller than first_cycle_max_steps (",
                                 s.first_cycle_max_steps, ")"));
  }
  if (!(s.cycle_multiplier > 0)) return Bad(cls, "cycle_multiplier must be > 0");
  if (!args.Has("first_cycle_max_steps") && total_steps > 1) {
    const double end = std::pow(s.gamma, static_cast<double>(total_steps - 1));
    warnings->push_back(absl::StrCat(
        "lr_scheduler_type ", cls, ": first_cycle_max_steps is not set, and its default of 1 makes every step a "
        "cycle of its own, so the learning rate falls by gamma (", s.gamma, ") at every step, to ", end,
        " x the learning rate by the last step (as the reference does). For one annealing cycle over the run add "
        "\"first_cycle_max_steps=", total_steps, "\" to lr_scheduler_args"));
  }
  return absl::OkStatus();
}

// LoraEasyCustomOptimizer's _update_cycle: at most one new cycle per step.
void UpdateEasyCycle(const TypedSchedule& s, TypedGroupState& g) {
  if (g.cycle_step < g.cycle_max_steps) return;
  g.cycle_step -= g.cycle_max_steps;
  g.cycle += 1;
  // Python's round(): half to even, as nearbyint in the default rounding mode.
  g.cycle_max_steps =
      static_cast<int64_t>(std::nearbyint(static_cast<double>(g.cycle_max_steps - s.warmup_steps) * s.cycle_multiplier)) +
      s.warmup_steps;
  g.current_max_lr = g.base_lr * std::pow(s.gamma, static_cast<double>(g.cycle));
}

double EasyLr(const TypedSchedule& s, const TypedGroupState& g) {
  if (g.current_max_lr <= g.group_min_lr) return g.group_min_lr;
  const double lr_range = g.current_max_lr - g.group_min_lr;
  if (g.cycle_step < s.warmup_steps) {
    return lr_range * static_cast<double>(g.cycle_step) / static_cast<double>(s.warmup_steps) + g.group_min_lr;
  }
  const double normalized_step = static_cast<double>(g.cycle_step - s.warmup_steps);
  const double normalized_max = static_cast<double>(g.cycle_max_steps - s.warmup_steps);
  if (s.kind == Kind::kRexWarmRestarts) {
    const double progress = normalized_step / normalized_max;
    const double divider = (1 - s.d) + (s.d * (1 - progress));
    return g.group_min_lr + lr_range * ((1 - progress) / divider);
  }
  return lr_range * (1 + std::cos(kPi * normalized_step / normalized_max)) / 2.0 + g.group_min_lr;
}

double Anneal(bool cos, double start, double end, double pct) {
  if (cos) return end + (start - end) / 2.0 * (std::cos(kPi * pct) + 1);
  return (end - start) * pct + start;
}

// torch OneCycleLR.get_lr for one group at step `step`.
double OneCycleLr(const TypedSchedule& s, int group, int64_t step) {
  const double max_lr = s.max_lr.size() == 1 ? s.max_lr[0] : s.max_lr.at(group);
  const double initial_lr = max_lr / s.div_factor;
  const double min_lr = initial_lr / s.final_div_factor;
  struct Phase {
    double end_step, start_lr, end_lr;
  };
  const double total = static_cast<double>(s.total_steps);
  std::vector<Phase> phases;
  if (s.three_phase) {
    phases = {{s.pct_start * total - 1, initial_lr, max_lr},
              {2 * s.pct_start * total - 2, max_lr, initial_lr},
              {total - 1, initial_lr, min_lr}};
  } else {
    phases = {{s.pct_start * total - 1, initial_lr, max_lr}, {total - 1, max_lr, min_lr}};
  }
  double start_step = 0;
  const double step_num = static_cast<double>(step);
  for (size_t i = 0; i < phases.size(); ++i) {
    if (step_num <= phases[i].end_step || i + 1 == phases.size()) {
      const double pct = (step_num - start_step) / (phases[i].end_step - start_step);
      return Anneal(s.anneal_cos, phases[i].start_lr, phases[i].end_lr, pct);
    }
    start_step = phases[i].end_step;
  }
  return min_lr;
}

}  // namespace

std::vector<std::string> SupportedScheduleTypes() {
  std::vector<std::string> out;
  for (const auto& entry : TorchClasses()) out.push_back(entry.first);
  for (const auto& entry : EasyClasses()) out.push_back(absl::StrCat(kEasyModule, ".", entry.first));
  return out;
}

absl::StatusOr<TypedSchedule> ParseTypedSchedule(const std::string& type, const std::vector<std::string>& args,
                                                 int64_t total_steps, int num_groups,
                                                 std::vector<std::string>* warnings) {
  const std::string supported = absl::StrJoin(SupportedScheduleTypes(), ", ");
  TypedSchedule s;
  const ClassInfo* info = nullptr;
  std::string class_name;
  // kohya: no dot -> torch.optim.lr_scheduler.<type>; otherwise module path + class.
  const size_t last_dot = type.rfind('.');
  const std::string module = last_dot == std::string::npos ? kTorchModule : type.substr(0, last_dot);
  class_name = last_dot == std::string::npos ? type : type.substr(last_dot + 1);
  if (module == kTorchModule) {
    s.class_path = absl::StrCat(kTorchModule, ".", class_name);
    auto it = TorchClasses().find(class_name);
    if (it != TorchClasses().end()) info = &it->second;
    auto refused = TorchClassesRefused().find(class_name);
    if (refused != TorchClassesRefused().end()) {
      return absl::InvalidArgumentError(absl::StrCat("lr_scheduler_type ", type, " cannot be used from a config: ",
                                                     refused->second, ". Supported: ", supported));
    }
  } else if (absl::StartsWith(type, absl::StrCat(kEasyModule, "."))) {
    s.class_path = type;
    auto it = EasyClasses().find(type.substr(sizeof(kEasyModule)));
    if (it != EasyClasses().end()) info = &it->second;
  }
  if (info == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("unknown lr_scheduler_type '", type, "'; supported: ", supported,
                                                   " (a bare class name means torch.optim.lr_scheduler.<name>, as in "
                                                   "kohya)"));
  }
  s.kind = info->kind;
  ASSIGN_OR_RETURN(OptimizerArgs parsed, OptimizerArgs::Parse(args, "lr_scheduler_args"));
  RETURN_IF_ERROR(parsed.CheckKnown(class_name, info->kwargs));
  ASSIGN_OR_RETURN(int64_t last_epoch, parsed.Int("last_epoch", -1));
  if (last_epoch != -1) {
    return Bad(class_name, "last_epoch must stay -1; resume a run with `resume` instead");
  }
  if (s.kind == Kind::kRexWarmRestarts || s.kind == Kind::kEasyCosineWarmRestarts) {
    RETURN_IF_ERROR(ReadEasy(class_name, parsed, total_steps, s, warnings));
  } else {
    RETURN_IF_ERROR(ReadTorch(class_name, parsed, total_steps, num_groups, s));
  }
  if (!s.max_lr.empty() && s.max_lr.size() != 1 && static_cast<int>(s.max_lr.size()) != num_groups) {
    return Bad(class_name, absl::StrCat("max_lr has ", s.max_lr.size(), " values for ", num_groups,
                                        " parameter groups"));
  }
  return s;
}

TypedGroupState StartGroup(const TypedSchedule& s, int group, double base_lr) {
  TypedGroupState g;
  g.started = true;
  g.step = 0;
  g.base_lr = base_lr;
  g.lr = base_lr;
  switch (s.kind) {
    case Kind::kMultiStepLR: {
      const auto count = std::count(s.milestones.begin(), s.milestones.end(), 0);
      if (count > 0) g.lr = base_lr * std::pow(s.gamma, static_cast<double>(count));
      break;
    }
    case Kind::kConstantLR:
      g.lr = base_lr * s.factor;
      break;
    case Kind::kLinearLR:
      g.lr = base_lr * s.start_factor;
      break;
    case Kind::kCosineAnnealingWarmRestarts:
      g.t_cur = 0;
      g.t_i = s.t_0;
      g.lr = s.eta_min + (base_lr - s.eta_min) * (1 + std::cos(kPi * 0.0 / static_cast<double>(g.t_i))) / 2;
      break;
    case Kind::kOneCycleLR:
      g.lr = OneCycleLr(s, group, 0);
      break;
    case Kind::kRexWarmRestarts:
    case Kind::kEasyCosineWarmRestarts:
      g.cycle = 0;
      g.cycle_step = 0;  // -1, then the construction's step
      g.cycle_max_steps = s.first_cycle_max_steps;
      g.current_max_lr = base_lr;
      // REX keeps min_lr only below the group's lr; their cosine variant always.
      g.group_min_lr = s.kind == Kind::kEasyCosineWarmRestarts || s.min_lr < base_lr ? s.min_lr : 0.0;
      UpdateEasyCycle(s, g);
      g.lr = EasyLr(s, g);
      break;
    default:
      break;
  }
  return g;
}

void AdvanceGroup(const TypedSchedule& s, int group, TypedGroupState& g) {
  const int64_t e = ++g.step;  // torch's last_epoch after step()
  const double ed = static_cast<double>(e);
  switch (s.kind) {
    case Kind::kStepLR:
      if (e % s.step_size == 0) g.lr = g.lr * s.gamma;
      break;
    case Kind::kMultiStepLR: {
      const auto count = std::count(s.milestones.begin(), s.milestones.end(), e);
      if (count > 0) g.lr = g.lr * std::pow(s.gamma, static_cast<double>(count));
      break;
    }
    case Kind::kConstantLR:
      if (e == s.total_iters) g.lr = g.lr * (1.0 / s.factor);
      break;
    case Kind::kLinearLR:
      if (e <= s.total_iters) {
        g.lr = g.lr * (1.0 + (s.end_factor - s.start_factor) /
                                 (static_cast<double>(s.total_iters) * s.start_factor +
                                  static_cast<double>(e - 1) * (s.end_factor - s.start_factor)));
      }
      break;
    case Kind::kExponentialLR:
      g.lr = g.lr * s.gamma;
      break;
    case Kind::kPolynomialLR:
      if (e <= s.total_iters) {
        const double t = static_cast<double>(s.total_iters);
        g.lr = g.lr * std::pow((1.0 - ed / t) / (1.0 - static_cast<double>(e - 1) / t), s.power);
      }
      break;
    case Kind::kCosineAnnealingLR: {
      const double t = static_cast<double>(s.t_max);
      if ((e - 1 - s.t_max) % (2 * s.t_max) == 0) {
        g.lr = g.lr + (g.base_lr - s.eta_min) * (1 - std::cos(kPi / t)) / 2;
      } else {
        g.lr = (1 + std::cos(kPi * ed / t)) / (1 + std::cos(kPi * (ed - 1) / t)) * (g.lr - s.eta_min) + s.eta_min;
      }
      break;
    }
    case Kind::kCosineAnnealingWarmRestarts:
      g.t_cur += 1;
      if (g.t_cur >= g.t_i) {
        g.t_cur = g.t_cur % g.t_i;
        g.t_i = g.t_i * s.t_mult;
      }
      g.lr = s.eta_min + (g.base_lr - s.eta_min) *
                             (1 + std::cos(kPi * static_cast<double>(g.t_cur) / static_cast<double>(g.t_i))) / 2;
      break;
    case Kind::kOneCycleLR:
      g.lr = OneCycleLr(s, group, e);
      break;
    case Kind::kRexWarmRestarts:
    case Kind::kEasyCosineWarmRestarts:
      g.cycle_step += 1;
      UpdateEasyCycle(s, g);
      g.lr = EasyLr(s, g);
      break;
  }
}

}  // namespace lorad::optim
