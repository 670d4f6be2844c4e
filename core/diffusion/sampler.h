// Preview samplers: every name kohya sd-scripts accepts for `sample_sampler` /
// `--ss`, each with the semantics of the diffusers scheduler kohya builds for it
// (library/train_util.py get_my_scheduler: the class defaults plus 1000 train
// timesteps, scaled_linear betas 0.00085..0.012, v_prediction when asked, and
// config.clip_sample forced on where the class has that field). Driven by a
// denoiser callback, so this module does not depend on the U-Net; the loop is
// the one of diffusers' pipelines (init_noise_sigma, scale_model_input, step).
//
// Families (one file each): DDIM and PNDM on alphas_cumprod
// (sampler_alpha.cc), the k-diffusion sigma samplers Euler, Euler ancestral,
// LMS, Heun, DPM2 and DPM2 ancestral (sampler_sigma.cc), DPM-Solver multistep
// and singlestep (sampler_dpm_solver.cc); shared timestep / sigma helpers in
// sampler_tables.h.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "absl/status/statusor.h"
#include "core/diffusion/loss.h"
#include "core/diffusion/noise_schedule.h"

namespace lorad::diffusion {

// The model: (model input x [B, C, H, W], timestep) -> eps or v [B, C, H, W].
// The k-diffusion samplers call it at fractional timesteps, as diffusers does.
using Denoiser = std::function<torch::Tensor(const torch::Tensor& x, double timestep)>;

// Unit Gaussian noise shaped like `like` (float32, on its device). Ancestral
// samplers draw their per-step noise through it; tests inject recorded noise.
using NoiseSource = std::function<torch::Tensor(const torch::Tensor& like)>;

// Wraps a model that is evaluated on the doubled batch cat([x, x]) whose first
// half is conditioned on the negative prompt and second half on the prompt:
// out = u + scale * (c - u). scale == 1 still evaluates both halves.
Denoiser ClassifierFreeGuidance(Denoiser uncond_then_cond, double guidance_scale);

enum class SamplerKind {
  kDdim,              // DDIMScheduler
  kPndm,              // PNDMScheduler
  kLms,               // LMSDiscreteScheduler
  kEuler,             // EulerDiscreteScheduler
  kEulerAncestral,    // EulerAncestralDiscreteScheduler
  kHeun,              // HeunDiscreteScheduler
  kDpm2,              // KDPM2DiscreteScheduler
  kDpm2Ancestral,     // KDPM2AncestralDiscreteScheduler
  kDpmSolver,         // DPMSolverMultistepScheduler, algorithm_type "dpmsolver"
  kDpmSolverPlusPlus, // DPMSolverMultistepScheduler, algorithm_type "dpmsolver++"
  kDpmSingle,         // DPMSolverSinglestepScheduler
};

// kohya's names, in its --sample_sampler order: ddim, pndm, lms, euler, euler_a,
// heun, dpm_2, dpm_2_a, dpmsolver, dpmsolver++, dpmsingle, k_lms, k_euler,
// k_euler_a, k_dpm_2, k_dpm_2_a (the k_* names are aliases).
const std::vector<std::string>& SamplerNames();
// A name above -> its kind; any other is INVALID_ARGUMENT naming it and listing them.
absl::StatusOr<SamplerKind> ParseSamplerKind(const std::string& name);
// The kind's canonical (non-k_) kohya name.
const char* SamplerKindName(SamplerKind kind);

enum class TimestepSpacing { kLinspace, kLeading };
enum class FinalSigma { kZero, kSigmaMin };

// The diffusers config fields the samplers read besides the noise schedule.
struct SamplerOptions {
  TimestepSpacing spacing = TimestepSpacing::kLinspace;
  int64_t steps_offset = 0;
  bool clip_sample = false;      // clamp the x0 prediction (DDIM, Heun)
  double clip_sample_range = 1.0;
  bool set_alpha_to_one = true;  // DDIM / PNDM: the final step's alpha_prev is 1, else alphas_cumprod[0]
  FinalSigma final_sigma = FinalSigma::kZero;  // DPM-Solver's last sigma
};

// What kohya's get_my_scheduler configures for `kind`: the diffusers class
// defaults (DDIM/PNDM leading spacing, the others linspace; steps_offset 0;
// DDIM set_alpha_to_one, PNDM not) and clip_sample on for DDIM and Heun. For
// "dpmsolver" the final sigma is sigma_min: diffusers (0.26+, kohya pins 0.32.1)
// refuses algorithm_type dpmsolver with a zero final sigma and names sigma_min.
SamplerOptions KohyaSamplerOptions(SamplerKind kind);

// One diffusers scheduler after set_timesteps(steps). Call Step with i = 0, 1,
// ... in order (the multistep and second-order ones keep state between calls).
// Not thread-safe.
class Scheduler {
 public:
  virtual ~Scheduler() = default;

  // The model's timestep at each call, in call order (float32 [k]; second-order
  // samplers call the model more than once per step).
  const torch::Tensor& timesteps() const { return timesteps_; }
  int64_t num_calls() const { return timesteps_.size(0); }
  // The scheduler's sigma table (float32, as diffusers holds it); empty for DDIM / PNDM.
  const torch::Tensor& sigmas() const { return sigmas_; }
  // Scale of the unit initial noise.
  double init_noise_sigma() const { return init_noise_sigma_; }

  // The model input for call i (identity unless the sampler scales it).
  virtual torch::Tensor ScaleModelInput(const torch::Tensor& x, int64_t i) const { (void)i; return x; }
  struct StepResult {
    torch::Tensor prev_sample;
    torch::Tensor pred_original_sample;  // undefined where diffusers returns none (PNDM, DPM-Solver)
  };
  virtual StepResult Step(const torch::Tensor& model_output, int64_t i, const torch::Tensor& x) = 0;

 protected:
  torch::Tensor timesteps_;
  torch::Tensor sigmas_;
  double init_noise_sigma_ = 1.0;
};

// The scheduler for `kind` with `options` after set_timesteps(steps). `noise`
// feeds the ancestral samplers (empty: torch::randn on the global generator).
std::unique_ptr<Scheduler> MakeScheduler(SamplerKind kind, const NoiseSchedule& schedule, int64_t steps,
                                         PredictionType prediction, const SamplerOptions& options,
                                         NoiseSource noise = {});

// The pipeline loop from unit Gaussian `noise` (x_T before any scaling):
// x = noise * init_noise_sigma, then model and step for every call.
torch::Tensor RunScheduler(Scheduler& scheduler, const torch::Tensor& noise, const Denoiser& denoiser);

// MakeScheduler with kohya's options, then RunScheduler.
torch::Tensor SampleLatents(SamplerKind kind, const NoiseSchedule& schedule, int64_t steps, PredictionType prediction,
                            const torch::Tensor& noise, const Denoiser& denoiser, NoiseSource step_noise = {});

}  // namespace lorad::diffusion
