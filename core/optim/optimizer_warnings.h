// The advice kohya's get_optimizer (library/train_util.py) logs for an
// optimizer choice, plus lorad's own notes where a reference package silently
// differs from what its name promises. Pure and LibTorch-free: the trainer
// emits these next to the config warnings; others (planner, server) may too.
#pragma once

#include <optional>
#include <string>
#include <vector>

namespace lorad::optim {

struct OptimizerWarningInputs {
  // The optimizer's canonical name (Optimizer::name(): "DAdaptAdam", "Prodigy", "Adafactor", ...).
  std::string optimizer;
  std::vector<std::string> optimizer_args;  // as configured ("key=value")
  double learning_rate = 0.0;
  std::optional<double> unet_lr, text_encoder_lr;  // as configured (unset: learning_rate)
  // Base lrs of the parameter groups in order (text encoder first, as kohya).
  std::vector<double> group_lrs;
  std::string lr_scheduler;
  double lr_warmup_steps = 0;
  double max_grad_norm = 0;
};

struct OptimizerWarning {
  std::string code;  // short stable id, e.g. "dadapt_lr_low"
  std::string message;
};

// Every warning that applies, in a fixed order. Unparseable optimizer_args give
// none (creating the optimizer reports them).
std::vector<OptimizerWarning> OptimizerWarnings(const OptimizerWarningInputs& in);

}  // namespace lorad::optim
