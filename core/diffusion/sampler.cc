#include "core/diffusion/sampler.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/diffusion/sampler_internal.h"

namespace lorad::diffusion {
namespace {

struct NamedKind {
  const char* name;
  SamplerKind kind;
};

// kohya train_util: the --sample_sampler choices and get_my_scheduler's mapping.
constexpr NamedKind kNames[] = {
    {"ddim", SamplerKind::kDdim},
    {"pndm", SamplerKind::kPndm},
    {"lms", SamplerKind::kLms},
    {"euler", SamplerKind::kEuler},
    {"euler_a", SamplerKind::kEulerAncestral},
    {"heun", SamplerKind::kHeun},
    {"dpm_2", SamplerKind::kDpm2},
    {"dpm_2_a", SamplerKind::kDpm2Ancestral},
    {"dpmsolver", SamplerKind::kDpmSolver},
    {"dpmsolver++", SamplerKind::kDpmSolverPlusPlus},
    {"dpmsingle", SamplerKind::kDpmSingle},
    {"k_lms", SamplerKind::kLms},
    {"k_euler", SamplerKind::kEuler},
    {"k_euler_a", SamplerKind::kEulerAncestral},
    {"k_dpm_2", SamplerKind::kDpm2},
    {"k_dpm_2_a", SamplerKind::kDpm2Ancestral},
};

}  // namespace

Denoiser ClassifierFreeGuidance(Denoiser uncond_then_cond, double guidance_scale) {
  return [model = std::move(uncond_then_cond), guidance_scale](const torch::Tensor& x, double t) {
    auto out = model(torch::cat({x, x}), t);
    auto halves = out.chunk(2, 0);
    return halves[0] + guidance_scale * (halves[1] - halves[0]);
  };
}

const std::vector<std::string>& SamplerNames() {
  static const auto* names = [] {
    auto* v = new std::vector<std::string>;
    for (const NamedKind& n : kNames) v->push_back(n.name);
    return v;
  }();
  return *names;
}

absl::StatusOr<SamplerKind> ParseSamplerKind(const std::string& name) {
  for (const NamedKind& n : kNames) {
    if (name == n.name) return n.kind;
  }
  return absl::InvalidArgumentError(absl::StrCat("sampler '", name, "' is not one kohya offers; use one of ",
                                                 absl::StrJoin(SamplerNames(), ", ")));
}

const char* SamplerKindName(SamplerKind kind) {
  for (const NamedKind& n : kNames) {
    if (n.kind == kind) return n.name;  // the first entry of a kind is its canonical name
  }
  return "unknown";
}

SamplerOptions KohyaSamplerOptions(SamplerKind kind) {
  SamplerOptions o;
  switch (kind) {
    case SamplerKind::kDdim:
      // DDIMScheduler defaults: leading, set_alpha_to_one; clip_sample is already on.
      o.spacing = TimestepSpacing::kLeading;
      o.clip_sample = true;
      o.set_alpha_to_one = true;
      break;
    case SamplerKind::kPndm:
      o.spacing = TimestepSpacing::kLeading;
      o.set_alpha_to_one = false;
      break;
    case SamplerKind::kHeun:
      o.clip_sample = true;  // kohya turns HeunDiscreteScheduler's clip_sample on
      break;
    case SamplerKind::kDpmSolver:
      o.final_sigma = FinalSigma::kSigmaMin;
      break;
    default:
      break;
  }
  return o;
}

std::unique_ptr<Scheduler> MakeScheduler(SamplerKind kind, const NoiseSchedule& schedule, int64_t steps,
                                         PredictionType prediction, const SamplerOptions& options,
                                         NoiseSource noise) {
  namespace in = sampler_internal;
  if (!noise) noise = [](const torch::Tensor& like) { return torch::randn_like(like, torch::kFloat32); };
  switch (kind) {
    case SamplerKind::kDdim:
      return in::MakeDdim(schedule, steps, prediction, options);
    case SamplerKind::kPndm:
      return in::MakePndm(schedule, steps, prediction, options);
    case SamplerKind::kLms:
      return in::MakeLms(schedule, steps, prediction, options);
    case SamplerKind::kEuler:
      return in::MakeEuler(schedule, steps, prediction, options);
    case SamplerKind::kEulerAncestral:
      return in::MakeEulerAncestral(schedule, steps, prediction, options, std::move(noise));
    case SamplerKind::kHeun:
      return in::MakeHeun(schedule, steps, prediction, options);
    case SamplerKind::kDpm2:
      return in::MakeDpm2(schedule, steps, prediction, options);
    case SamplerKind::kDpm2Ancestral:
      return in::MakeDpm2Ancestral(schedule, steps, prediction, options, std::move(noise));
    case SamplerKind::kDpmSolver:
      return in::MakeDpmSolverMultistep(schedule, steps, prediction, options, /*plus_plus=*/false);
    case SamplerKind::kDpmSolverPlusPlus:
      return in::MakeDpmSolverMultistep(schedule, steps, prediction, options, /*plus_plus=*/true);
    case SamplerKind::kDpmSingle:
      return in::MakeDpmSolverSinglestep(schedule, steps, prediction, options);
  }
  return in::MakeDdim(schedule, steps, prediction, options);
}

torch::Tensor RunScheduler(Scheduler& scheduler, const torch::Tensor& noise, const Denoiser& denoiser) {
  auto x = noise * scheduler.init_noise_sigma();
  const auto timesteps = sampler_internal::ToVector(scheduler.timesteps());
  for (int64_t i = 0; i < static_cast<int64_t>(timesteps.size()); ++i) {
    auto model_output = denoiser(scheduler.ScaleModelInput(x, i), static_cast<double>(timesteps[i]));
    x = scheduler.Step(model_output, i, x).prev_sample;
  }
  return x;
}

torch::Tensor SampleLatents(SamplerKind kind, const NoiseSchedule& schedule, int64_t steps, PredictionType prediction,
                            const torch::Tensor& noise, const Denoiser& denoiser, NoiseSource step_noise) {
  auto scheduler = MakeScheduler(kind, schedule, steps, prediction, KohyaSamplerOptions(kind), std::move(step_noise));
  return RunScheduler(*scheduler, noise, denoiser);
}

}  // namespace lorad::diffusion
