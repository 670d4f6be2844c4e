// Private to core/diffusion: the timestep / sigma helpers every sampler family
// shares, and the per-family constructors MakeScheduler dispatches to.
// Scalars are float where diffusers computes on 0-d float32 tensors, so the
// trajectories match it to float32 rounding.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include <torch/torch.h>

#include "core/diffusion/sampler.h"

namespace lorad::diffusion::sampler_internal {

// diffusers' spaced timesteps, descending, before any dtype cast:
// linspace: np.linspace(0, T - 1, n)[::-1]; leading: (arange(n) * (T // n))[::-1] + offset.
std::vector<double> SpacedTimesteps(TimestepSpacing spacing, int64_t steps, int64_t num_train_timesteps,
                                    int64_t steps_offset);
// numpy's round (half to even), as np.round / ndarray.round.
double RoundHalfEven(double x);

// sqrt((1 - alphas_cumprod) / alphas_cumprod) in float32, index = train timestep.
std::vector<float> TrainSigmas(const NoiseSchedule& schedule);
// np.interp(t, arange(T), table): linear between the integer neighbours, in double.
double InterpolateSigma(const std::vector<float>& table, double t);
// diffusers' _sigma_to_t: the fractional train timestep whose log sigma is
// log(sigma), interpolated in log space; `log_sigmas` = log of TrainSigmas.
float SigmaToTimestep(float sigma, const std::vector<float>& log_sigmas);
// x0 from a model output at noise level sigma with k-diffusion input scaling:
// eps: x - sigma * out; v: out * (-sigma / sqrt(sigma^2 + 1)) + x / (sigma^2 + 1).
torch::Tensor SigmaPredictedX0(PredictionType prediction, const torch::Tensor& model_output,
                               const torch::Tensor& x, float sigma);
// (sigma^2 + 1)^0.5, the k-diffusion model-input divisor.
float InputScale(float sigma);

torch::Tensor ToTensor(const std::vector<float>& values);
std::vector<float> ToVector(const torch::Tensor& t);

// Per family (sampler_alpha.cc, sampler_sigma.cc, sampler_dpm_solver.cc).
std::unique_ptr<Scheduler> MakeDdim(const NoiseSchedule& schedule, int64_t steps, PredictionType prediction,
                                    const SamplerOptions& options);
std::unique_ptr<Scheduler> MakePndm(const NoiseSchedule& schedule, int64_t steps, PredictionType prediction,
                                    const SamplerOptions& options);
std::unique_ptr<Scheduler> MakeEuler(const NoiseSchedule& schedule, int64_t steps, PredictionType prediction,
                                     const SamplerOptions& options);
std::unique_ptr<Scheduler> MakeEulerAncestral(const NoiseSchedule& schedule, int64_t steps,
                                              PredictionType prediction, const SamplerOptions& options,
                                              NoiseSource noise);
std::unique_ptr<Scheduler> MakeLms(const NoiseSchedule& schedule, int64_t steps, PredictionType prediction,
                                   const SamplerOptions& options);
std::unique_ptr<Scheduler> MakeHeun(const NoiseSchedule& schedule, int64_t steps, PredictionType prediction,
                                    const SamplerOptions& options);
std::unique_ptr<Scheduler> MakeDpm2(const NoiseSchedule& schedule, int64_t steps, PredictionType prediction,
                                    const SamplerOptions& options);
std::unique_ptr<Scheduler> MakeDpm2Ancestral(const NoiseSchedule& schedule, int64_t steps, PredictionType prediction,
                                             const SamplerOptions& options, NoiseSource noise);
// algorithm: true for dpmsolver++ (data prediction), false for dpmsolver (noise prediction).
std::unique_ptr<Scheduler> MakeDpmSolverMultistep(const NoiseSchedule& schedule, int64_t steps,
                                                  PredictionType prediction, const SamplerOptions& options,
                                                  bool plus_plus);
std::unique_ptr<Scheduler> MakeDpmSolverSinglestep(const NoiseSchedule& schedule, int64_t steps,
                                                   PredictionType prediction, const SamplerOptions& options);

}  // namespace lorad::diffusion::sampler_internal
