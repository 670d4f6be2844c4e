#include "core/diffusion/loss.h"

#include <cmath>

#include "absl/strings/str_cat.h"

namespace lorad::diffusion {
namespace {

// kohya's get_snr_scale: min(snr, 1000) / (min(snr, 1000) + 1).
torch::Tensor ClampedSnr(const torch::Tensor& t, const NoiseSchedule& schedule) {
  auto snr = schedule.SnrAt(t);
  return torch::minimum(snr, torch::ones_like(snr) * 1000);
}

torch::Tensor SnrScale(const torch::Tensor& t, const NoiseSchedule& schedule) {
  auto snr = ClampedSnr(t, schedule);
  return snr / (snr + 1);
}

torch::Tensor Reduce(const torch::Tensor& loss, Reduction reduction) {
  switch (reduction) {
    case Reduction::kMean: return loss.mean();
    case Reduction::kSum: return loss.sum();
    case Reduction::kNone: break;
  }
  return loss;
}

}  // namespace

absl::StatusOr<LossType> ParseLossType(const std::string& name) {
  if (name == "l2") return LossType::kL2;
  if (name == "l1") return LossType::kL1;
  if (name == "huber") return LossType::kHuber;
  if (name == "smooth_l1") return LossType::kSmoothL1;
  return absl::InvalidArgumentError(
      absl::StrCat("loss_type '", name, "' is not supported; use one of l2, l1, huber, smooth_l1"));
}

absl::StatusOr<HuberSchedule> ParseHuberSchedule(const std::string& name) {
  if (name == "constant") return HuberSchedule::kConstant;
  if (name == "exponential") return HuberSchedule::kExponential;
  if (name == "snr") return HuberSchedule::kSnr;
  return absl::InvalidArgumentError(
      absl::StrCat("huber_schedule '", name, "' is not supported; use one of constant, exponential, snr"));
}

std::string LossTypeName(LossType type) {
  switch (type) {
    case LossType::kL2: return "l2";
    case LossType::kL1: return "l1";
    case LossType::kHuber: return "huber";
    case LossType::kSmoothL1: return "smooth_l1";
  }
  return "l2";
}

std::string HuberScheduleName(HuberSchedule schedule) {
  switch (schedule) {
    case HuberSchedule::kConstant: return "constant";
    case HuberSchedule::kExponential: return "exponential";
    case HuberSchedule::kSnr: return "snr";
  }
  return "snr";
}

torch::Tensor TrainingTarget(const NoiseSchedule& schedule, PredictionType type, const torch::Tensor& latents,
                             const torch::Tensor& noise, const torch::Tensor& t) {
  if (type == PredictionType::kVPrediction) return schedule.Velocity(latents, noise, t);
  return noise;
}

torch::Tensor HuberThreshold(const NoiseSchedule& schedule, const HuberOptions& options, const torch::Tensor& t) {
  const auto f32 = torch::TensorOptions().dtype(torch::kFloat32).device(t.device());
  switch (options.schedule) {
    case HuberSchedule::kConstant:
      return torch::full({t.size(0)}, options.huber_c * options.huber_scale, f32);
    case HuberSchedule::kExponential: {
      const double alpha = -std::log(options.huber_c) / static_cast<double>(schedule.num_train_timesteps());
      return torch::exp(-alpha * t) * options.huber_scale;
    }
    case HuberSchedule::kSnr: {
      auto acp = schedule.alphas_cumprod().to(t.device()).index_select(0, t.to(torch::kLong).flatten());
      auto sigmas = ((1.0 - acp) / acp).pow(0.5);
      return (1 - options.huber_c) / (1 + sigmas).pow(2) + options.huber_c;
    }
  }
  return torch::full({t.size(0)}, options.huber_c, f32);
}

torch::Tensor ConditionalLoss(const torch::Tensor& pred, const torch::Tensor& target, LossType type,
                              Reduction reduction, const torch::Tensor& huber_c) {
  switch (type) {
    case LossType::kL2: return Reduce((pred - target).pow(2), reduction);
    case LossType::kL1: return Reduce((pred - target).abs(), reduction);
    case LossType::kHuber:
    case LossType::kSmoothL1: {
      TORCH_CHECK(huber_c.defined(), "huber / smooth_l1 loss needs a per-sample huber_c");
      std::vector<int64_t> shape(pred.dim(), 1);
      shape[0] = -1;
      auto c = huber_c.to(pred.device(), pred.scalar_type()).view(shape);
      auto core = torch::sqrt((pred - target).pow(2) + c.pow(2)) - c;
      return Reduce(type == LossType::kHuber ? 2 * c * core : 2 * core, reduction);
    }
  }
  return {};
}

torch::Tensor ApplySnrWeight(const torch::Tensor& loss, const torch::Tensor& t, const NoiseSchedule& schedule,
                             double gamma, bool v_prediction) {
  auto snr = schedule.SnrAt(t).to(loss.device());
  auto min_snr = torch::minimum(snr, torch::full_like(snr, gamma));
  auto weight = v_prediction ? torch::div(min_snr, snr + 1) : torch::div(min_snr, snr);
  return loss * weight.to(torch::kFloat32);
}

torch::Tensor ScaleVPredictionLossLikeNoisePrediction(const torch::Tensor& loss, const torch::Tensor& t,
                                                      const NoiseSchedule& schedule) {
  return loss * SnrScale(t, schedule).to(loss.device());
}

torch::Tensor AddVPredictionLikeLoss(const torch::Tensor& loss, const torch::Tensor& t,
                                     const NoiseSchedule& schedule, double v_pred_like_loss) {
  return loss + loss / SnrScale(t, schedule).to(loss.device()) * v_pred_like_loss;
}

torch::Tensor ApplyDebiasedEstimation(const torch::Tensor& loss, const torch::Tensor& t,
                                      const NoiseSchedule& schedule, bool v_prediction) {
  auto snr = ClampedSnr(t, schedule).to(loss.device());
  auto weight = v_prediction ? 1 / (snr + 1) : 1 / torch::sqrt(snr);
  return weight * loss;
}

torch::Tensor PostProcessLoss(const torch::Tensor& loss, const torch::Tensor& t, const NoiseSchedule& schedule,
                              const LossWeighting& w) {
  const bool v = w.prediction == PredictionType::kVPrediction;
  auto out = loss;
  if (w.min_snr_gamma && *w.min_snr_gamma != 0.0) out = ApplySnrWeight(out, t, schedule, *w.min_snr_gamma, v);
  if (w.scale_v_pred_loss_like_noise_pred) out = ScaleVPredictionLossLikeNoisePrediction(out, t, schedule);
  if (w.v_pred_like_loss && *w.v_pred_like_loss != 0.0) {
    out = AddVPredictionLikeLoss(out, t, schedule, *w.v_pred_like_loss);
  }
  if (w.debiased_estimation_loss) out = ApplyDebiasedEstimation(out, t, schedule, v);
  return out;
}

}  // namespace lorad::diffusion
