// optimizer_type names as kohya accepts them -> implementations.
#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/base/status_macros.h"
#include "core/optim/optim_internal.h"

namespace lorad::optim {
namespace {

struct TypeEntry {
  const char* name;        // as users write it (matched case-insensitively)
  const char* class_path;  // Python class path for ss_optimizer
  OptimizerFactory make;
};

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
      {"LoraEasyCustomOptimizer.came.CAME", "LoraEasyCustomOptimizer.came.CAME", MakeCame},
  };
  return types;
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
    return absl::InvalidArgumentError(absl::StrCat("unknown optimizer_type '", std::string(optimizer_type),
                                                   "'; accepted (case-insensitive): ",
                                                   absl::StrJoin(AcceptedOptimizerTypes(), ", ")));
  }
  RETURN_IF_ERROR(CheckGroups(groups));
  ASSIGN_OR_RETURN(OptimizerArgs args, OptimizerArgs::Parse(optimizer_args));
  return entry->make(args, std::move(groups), entry->class_path);
}

}  // namespace lorad::optim
