#include "core/optim/optimizer_warnings.h"

#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/optim/optimizer_args.h"

namespace lorad::optim {
namespace {

bool IsDAdaptOrProdigy(const std::string& name) {
  return absl::StartsWith(name, "DAdapt") || name == "Prodigy";
}

}  // namespace

std::vector<OptimizerWarning> OptimizerWarnings(const OptimizerWarningInputs& in) {
  std::vector<OptimizerWarning> out;
  auto parsed = OptimizerArgs::Parse(in.optimizer_args);
  if (!parsed.ok()) return out;
  const OptimizerArgs& args = *parsed;

  if (IsDAdaptOrProdigy(in.optimizer)) {
    // kohya checks the first group's lr (the text encoder's when it is trained).
    const double first_lr = in.group_lrs.empty() ? in.learning_rate : in.group_lrs.front();
    if (first_lr <= 0.1) {
      out.push_back({"dadapt_lr_low",
                     absl::StrCat(in.optimizer, " estimates the step size itself and expects a learning rate near 1.0 "
                                  "(kohya and the package recommend 1.0); lr=", first_lr,
                                  " scales that estimate down and will likely make training very slow")});
    }
    std::set<double> distinct(in.group_lrs.begin(), in.group_lrs.end());
    if (distinct.size() > 1) {
      const bool first_for_all = in.optimizer == "DAdaptAdaGrad" || in.optimizer == "DAdaptAdan";
      out.push_back({"dadapt_group_lrs",
                     absl::StrCat(in.optimizer, " does not support different learning rates per parameter group "
                                  "(text encoder vs U-Net, LoRA+): ",
                                  first_for_all ? "only the first group's lr takes effect"
                                                : "it rejects unequal non-zero lrs",
                                  "; set unet_lr and text_encoder_lr to the same value")});
    }
  }

  if (in.optimizer == "Adafactor") {
    auto relative = args.Bool("relative_step", true);
    auto warmup_init = args.Bool("warmup_init", false);
    auto clip = args.Float("clip_threshold", 1.0);
    if (relative.ok() && warmup_init.ok() && clip.ok()) {
      bool relative_step = *relative;
      if (!relative_step && *warmup_init) {
        relative_step = true;
        out.push_back({"adafactor_warmup_init",
                       "Adafactor warmup_init=True needs relative_step: relative_step is set to True (as kohya does)"});
      }
      if (relative_step) {
        if (in.learning_rate != 0.0) {
          out.push_back({"adafactor_relative_step_lr",
                         absl::StrCat("Adafactor with relative_step=True computes its own step size: learning_rate=",
                                      in.learning_rate,
                                      " is only the initial lr the adafactor schedule reports, not the step size")});
        }
        if (in.unet_lr || in.text_encoder_lr) {
          out.push_back({"adafactor_group_lrs_ignored",
                         "Adafactor with relative_step=True ignores unet_lr and text_encoder_lr"});
        }
        if (in.lr_warmup_steps > 0) {
          out.push_back({"adafactor_warmup_ignored",
                         "Adafactor with relative_step=True replaces lr_scheduler by its own schedule, so "
                         "lr_warmup_steps has no effect (Adafactor's own warmup is warmup_init=True)"});
        }
      } else {
        if (in.max_grad_norm != 0.0) {
          out.push_back({"adafactor_clip_grad_norm",
                         absl::StrCat("Adafactor clips its updates itself, yet max_grad_norm=", in.max_grad_norm,
                                      " also clips the gradients; consider max_grad_norm=0")});
        }
        if (in.lr_scheduler != "constant_with_warmup") {
          out.push_back({"adafactor_scheduler",
                         absl::StrCat("Adafactor with a fixed lr works best with lr_scheduler=constant_with_warmup "
                                      "(kohya's advice); got ",
                                      in.lr_scheduler)});
        }
        if (*clip != 1.0) {
          out.push_back({"adafactor_clip_threshold",
                         absl::StrCat("Adafactor clip_threshold=", *clip, ": 1.0 is the recommended value")});
        }
      }
    }
  }

  if (in.optimizer == "SGDNesterov8bit") {
    if (!args.Has("momentum")) {
      out.push_back({"sgd8bit_momentum", "SGDNesterov8bit needs momentum: momentum=0.9 is used (as kohya does)"});
    }
    out.push_back({"sgd8bit_not_nesterov",
                   "SGDNesterov8bit is bitsandbytes' SGD8bit, which ignores nesterov=True (and dampening): it runs "
                   "plain momentum SGD; use SGDNesterov for Nesterov momentum"});
  }

  if (in.optimizer == "LoraEasyCAME") {
    auto decouple = args.Bool("weight_decouple", true);
    auto wd = args.Float("weight_decay", 0.0);
    if (decouple.ok() && wd.ok() && !*decouple && *wd != 0) {
      out.push_back({"came_weight_decay_no_effect",
                     "LoraEasyCustomOptimizer.came.CAME with weight_decouple=False adds weight decay to the "
                     "gradient after the update is computed, so weight_decay has no effect (as in the reference)"});
    }
  }
  return out;
}

}  // namespace lorad::optim
