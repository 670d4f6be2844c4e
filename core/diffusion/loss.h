// Training targets, kohya's conditional_loss (l2 / l1 / huber / smooth_l1 with a
// per-sample huber_c) and the per-sample loss weightings of
// NetworkTrainer.post_process_loss (sd-scripts train_network.py,
// library/custom_train_functions.py:apply_snr_weight and neighbours; Min-SNR-gamma:
// Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting Strategy").
#pragma once

#include <optional>
#include <string>

#include <torch/torch.h>

#include "absl/status/statusor.h"
#include "core/diffusion/noise_schedule.h"

namespace lorad::diffusion {

enum class PredictionType { kEpsilon, kVPrediction };
enum class LossType { kL2, kL1, kHuber, kSmoothL1 };
enum class HuberSchedule { kConstant, kExponential, kSnr };
enum class Reduction { kNone, kMean, kSum };

// "l2" | "l1" | "huber" | "smooth_l1"; error names the value and the allowed ones.
absl::StatusOr<LossType> ParseLossType(const std::string& name);
// "constant" | "exponential" | "snr".
absl::StatusOr<HuberSchedule> ParseHuberSchedule(const std::string& name);
std::string LossTypeName(LossType type);
std::string HuberScheduleName(HuberSchedule schedule);

// epsilon -> noise; v -> schedule.Velocity(latents, noise, t).
torch::Tensor TrainingTarget(const NoiseSchedule& schedule, PredictionType type, const torch::Tensor& latents,
                             const torch::Tensor& noise, const torch::Tensor& t);

struct HuberOptions {
  HuberSchedule schedule = HuberSchedule::kSnr;  // kohya CLI default
  double huber_c = 0.1;
  double huber_scale = 1.0;
};

// train_util.get_huber_threshold_if_needed: float32 [B] on t's device
// (constant: c*scale; exponential: exp(-ln(1/c)/T * t)*scale; snr: (1-c)/(1+sigma_t)^2 + c,
// scale ignored, sigma from the schedule's (possibly rescaled) alphas_cumprod).
torch::Tensor HuberThreshold(const NoiseSchedule& schedule, const HuberOptions& options, const torch::Tensor& t);

// train_util.conditional_loss. huber_c [B] is required for huber / smooth_l1.
torch::Tensor ConditionalLoss(const torch::Tensor& pred, const torch::Tensor& target, LossType type,
                              Reduction reduction, const torch::Tensor& huber_c = {});

struct LossWeighting {
  PredictionType prediction = PredictionType::kEpsilon;
  std::optional<double> min_snr_gamma;
  bool scale_v_pred_loss_like_noise_pred = false;
  std::optional<double> v_pred_like_loss;
  bool debiased_estimation_loss = false;
};

// Individual weightings of custom_train_functions, applied to a per-sample loss [B].
torch::Tensor ApplySnrWeight(const torch::Tensor& loss, const torch::Tensor& t, const NoiseSchedule& schedule,
                             double gamma, bool v_prediction);
torch::Tensor ScaleVPredictionLossLikeNoisePrediction(const torch::Tensor& loss, const torch::Tensor& t,
                                                      const NoiseSchedule& schedule);
torch::Tensor AddVPredictionLikeLoss(const torch::Tensor& loss, const torch::Tensor& t,
                                     const NoiseSchedule& schedule, double v_pred_like_loss);
torch::Tensor ApplyDebiasedEstimation(const torch::Tensor& loss, const torch::Tensor& t,
                                      const NoiseSchedule& schedule, bool v_prediction);

// post_process_loss: min-SNR, v-pred scaling, v-pred-like loss, debiased, in that
// order, on a per-sample loss [B] (before the final mean).
torch::Tensor PostProcessLoss(const torch::Tensor& loss, const torch::Tensor& t, const NoiseSchedule& schedule,
                              const LossWeighting& weighting);

}  // namespace lorad::diffusion
