// optimizer_type names as kohya accepts them -> implementations.
#include <optional>
#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/match.h"
#include "absl/strings/str_join.h"
#include "core/base/status_macros.h"
#include "core/optim/optim_internal.h"

namespace lorad::optim {
namespace {

struct TypeEntry {
  const char* name;        // as users write it (matched case-insensitively)
  const char* class_path;  // Python class path for ss_optimizer (kohya: class __module__ + "." + __name__)
  OptimizerFactory make;
};

absl::StatusOr<std::unique_ptr<Optimizer>> MakeSgdNesterov(const OptimizerArgs& a, std::vector<ParamGroup> g,
                                                           std::string p) {
  return MakeSgd(a, std::move(g), std::move(p), /*kohya_nesterov=*/true);
}
absl::StatusOr<std::unique_ptr<Optimizer>> MakeTorchSgd(const OptimizerArgs& a, std::vector<ParamGroup> g,
                                                        std::string p) {
  return MakeSgd(a, std::move(g), std::move(p), /*kohya_nesterov=*/false);
}
absl::StatusOr<std::unique_ptr<Optimizer>> MakeSgdNesterov8bit(const OptimizerArgs& a, std::vector<ParamGroup> g,
                                                               std::string p) {
  return MakeSgd8bit(a, std::move(g), std::move(p), /*kohya_nesterov=*/true);
}
absl::StatusOr<std::unique_ptr<Optimizer>> MakeBnbSgd8bit(const OptimizerArgs& a, std::vector<ParamGroup> g,
                                                          std::string p) {
  return MakeSgd8bit(a, std::move(g), std::move(p), /*kohya_nesterov=*/false);
}

constexpr char kDAdaptAdam[] = "dadaptation.dadapt_adam.DAdaptAdam";
constexpr char kDAdaptPreprint[] = "dadaptation.experimental.dadapt_adam_preprint.DAdaptAdamPreprint";

// kohya's get_optimizer (library/train_util.py): its short names match
// case-insensitively; anything else is a class path ("Name" = torch.optim.Name,
// "a.b.Name" = import a.b, take Name). Names starting with "dadapt" or ending
// in "8bit" are matched against its own lists first, so e.g.
// "dadaptation.DAdaptAdam" is rejected by kohya (see Refusal below).
const std::vector<TypeEntry>& Types() {
  static const std::vector<TypeEntry> types = {
      {"AdamW", "torch.optim.adamw.AdamW", MakeAdamW},
      {"torch.optim.AdamW", "torch.optim.adamw.AdamW", MakeAdamW},
      {"torch.optim.adamw.AdamW", "torch.optim.adamw.AdamW", MakeAdamW},
      {"AdamW8bit", "bitsandbytes.optim.adamw.AdamW8bit", MakeAdamW8bit},
      {"bitsandbytes.optim.AdamW8bit", "bitsandbytes.optim.adamw.AdamW8bit", MakeAdamW8bit},
      {"bitsandbytes.optim.adamw.AdamW8bit", "bitsandbytes.optim.adamw.AdamW8bit", MakeAdamW8bit},
      {"bnb.optim.AdamW8bit", "bitsandbytes.optim.adamw.AdamW8bit", MakeAdamW8bit},
      {"Lion", "lion_pytorch.lion_pytorch.Lion", MakeLion},
      {"lion_pytorch.Lion", "lion_pytorch.lion_pytorch.Lion", MakeLion},
      {"lion_pytorch.lion_pytorch.Lion", "lion_pytorch.lion_pytorch.Lion", MakeLion},
      {"Adafactor", "transformers.optimization.Adafactor", MakeAdafactor},
      {"transformers.optimization.Adafactor", "transformers.optimization.Adafactor", MakeAdafactor},
      {"transformers.Adafactor", "transformers.optimization.Adafactor", MakeAdafactor},
      {"Prodigy", "prodigyopt.prodigy.Prodigy", MakeProdigy},
      {"prodigyopt.Prodigy", "prodigyopt.prodigy.Prodigy", MakeProdigy},
      {"prodigyopt.prodigy.Prodigy", "prodigyopt.prodigy.Prodigy", MakeProdigy},
      {"CAME", "came_pytorch.CAME.CAME", MakeCame},
      {"came_pytorch.CAME", "came_pytorch.CAME.CAME", MakeCame},
      {"came_pytorch.CAME.CAME", "came_pytorch.CAME.CAME", MakeCame},
      // kohya maps "DAdaptation" to the experimental DAdaptAdamPreprint, not DAdaptAdam.
      {"DAdaptation", kDAdaptPreprint, MakeDAdaptAdamPreprint},
      {"DAdaptAdamPreprint", kDAdaptPreprint, MakeDAdaptAdamPreprint},
      {"DAdaptAdam", kDAdaptAdam, MakeDAdaptAdam},
      {"DAdaptLion", "dadaptation.dadapt_lion.DAdaptLion", MakeDAdaptLion},
      {"DAdaptSGD", "dadaptation.dadapt_sgd.DAdaptSGD", MakeDAdaptSgd},
      {"DAdaptAdaGrad", "dadaptation.dadapt_adagrad.DAdaptAdaGrad", MakeDAdaptAdaGrad},
      {"DAdaptAdan", "dadaptation.dadapt_adan.DAdaptAdan", MakeDAdaptAdan},
      {"SGDNesterov", "torch.optim.sgd.SGD", MakeSgdNesterov},
      {"SGD", "torch.optim.sgd.SGD", MakeTorchSgd},
      {"torch.optim.SGD", "torch.optim.sgd.SGD", MakeTorchSgd},
      {"torch.optim.sgd.SGD", "torch.optim.sgd.SGD", MakeTorchSgd},
      {"SGDNesterov8bit", "bitsandbytes.optim.sgd.SGD8bit", MakeSgdNesterov8bit},
      {"bitsandbytes.optim.SGD8bit", "bitsandbytes.optim.sgd.SGD8bit", MakeBnbSgd8bit},
      {"bitsandbytes.optim.sgd.SGD8bit", "bitsandbytes.optim.sgd.SGD8bit", MakeBnbSgd8bit},
      {"LoraEasyCustomOptimizer.came.CAME", "LoraEasyCustomOptimizer.came.CAME", MakeLoraEasyCame},
      {"LoraEasyCustomOptimizer.compass.Compass", "LoraEasyCustomOptimizer.compass.Compass", MakeCompass},
  };
  return types;
}

// Names kohya (or a package users point it at) knows that lorad does not
// implement, or spellings kohya itself rejects: a reason instead of "unknown".
std::optional<std::string> Refusal(const std::string& wanted_lower) {
  static const std::vector<std::string> kohya_not_implemented = {
      "DAdaptAdanIP", "PagedAdamW", "PagedAdamW8bit", "PagedAdamW32bit", "Lion8bit", "PagedLion8bit",
      "AdEMAMix8bit", "PagedAdEMAMix8bit", "RAdamScheduleFree", "AdamWScheduleFree", "SGDScheduleFree"};
  for (const std::string& name : kohya_not_implemented) {
    if (absl::AsciiStrToLower(name) == wanted_lower) {
      return absl::StrCat("kohya's optimizer_type ", name, " is not implemented in lorad");
    }
  }
  if (absl::StartsWith(wanted_lower, "dadaptation.")) {
    return "kohya treats every optimizer_type starting with 'dadapt' as a D-Adaptation short name and rejects module "
           "paths like this one; write DAdaptAdam, DAdaptAdaGrad, DAdaptAdan, DAdaptLion, DAdaptSGD or DAdaptation "
           "(= DAdaptAdamPreprint)";
  }
  if (absl::StartsWith(wanted_lower, "dadapt")) {
    return "kohya accepts only these D-Adaptation names: DAdaptation (= DAdaptAdamPreprint), DAdaptAdamPreprint, "
           "DAdaptAdaGrad, DAdaptAdam, DAdaptAdan, DAdaptAdanIP (not implemented in lorad), DAdaptLion, DAdaptSGD";
  }
  static const char kLoraEasyClasses[] =
      "LoRA_Easy_Training_Scripts' LoraEasyCustomOptimizer package defines came.CAME, compass.Compass "
      "(both implemented), lpfadamw.LPFAdamW and rmsprop.RMSProp (not implemented in lorad)";
  if (wanted_lower == "loraeasycustomoptimizer.lpfadamw.lpfadamw" ||
      wanted_lower == "loraeasycustomoptimizer.rmsprop.rmsprop") {
    return absl::StrCat("not implemented in lorad; ", kLoraEasyClasses);
  }
  if (absl::StartsWith(wanted_lower, "loraeasycustomoptimizer.")) {
    return absl::StrCat("no such class (kohya would fail to import it; e.g. utils.StableAdamW and lpfadamw.LPF_AdamW "
                        "do not exist); ",
                        kLoraEasyClasses);
  }
  return std::nullopt;
}

absl::Status CheckGroups(const std::vector<ParamGroup>& groups) {
  if (groups.empty()) return absl::InvalidArgumentError("optimizer needs at least one parameter group");
  std::set<const void*> seen;
  for (const ParamGroup& g : groups) {
    if (!std::isfinite(g.lr) || g.lr < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("learning rate ", g.lr, " of parameter group '", g.name, "' must be finite and >= 0"));
    }
    for (size_t i = 0; i < g.params.size(); ++i) {
      const torch::Tensor& p = g.params[i];
      if (!p.defined()) {
        return absl::InvalidArgumentError(absl::StrCat("parameter ", i, " of group '", g.name, "' is undefined"));
      }
      if (!p.is_floating_point()) {
        return absl::InvalidArgumentError(absl::StrCat("parameter ", i, " of group '", g.name,
                                                       "' is not floating point (", c10::toString(p.scalar_type()), ")"));
      }
      if (!seen.insert(p.unsafeGetTensorImpl()).second) {
        return absl::InvalidArgumentError(
            absl::StrCat("parameter ", i, " of group '", g.name, "' appears more than once"));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace

std::vector<std::string> AcceptedOptimizerTypes() {
  std::vector<std::string> out;
  for (const TypeEntry& t : Types()) out.push_back(t.name);
  return out;
}

absl::StatusOr<std::unique_ptr<Optimizer>> CreateOptimizer(std::string_view optimizer_type,
                                                           const std::vector<std::string>& optimizer_args,
                                                           std::vector<ParamGroup> groups) {
  const std::string wanted = absl::AsciiStrToLower(absl::StripAsciiWhitespace(std::string(optimizer_type)));
  const TypeEntry* entry = nullptr;
  for (const TypeEntry& t : Types()) {
    if (absl::AsciiStrToLower(t.name) == wanted) entry = &t;
  }
  if (entry == nullptr) {
    if (std::optional<std::string> why = Refusal(wanted)) {
      return absl::InvalidArgumentError(absl::StrCat("optimizer_type '", std::string(optimizer_type), "': ", *why,
                                                     ". Accepted (case-insensitive): ",
                                                     absl::StrJoin(AcceptedOptimizerTypes(), ", ")));
    }
    return absl::InvalidArgumentError(absl::StrCat("unknown optimizer_type '", std::string(optimizer_type),
                                                   "'; accepted (case-insensitive): ",
                                                   absl::StrJoin(AcceptedOptimizerTypes(), ", ")));
  }
  RETURN_IF_ERROR(CheckGroups(groups));
  ASSIGN_OR_RETURN(OptimizerArgs args, OptimizerArgs::Parse(optimizer_args));
  return entry->make(args, std::move(groups), entry->class_path);
}

}  // namespace lorad::optim
