// DPM-Solver (Lu et al. 2022, arXiv 2206.00927 / 2211.01095) as diffusers
// implements it: DPMSolverMultistepScheduler (schedulers/scheduling_dpmsolver_multistep.py)
// and DPMSolverSinglestepScheduler (scheduling_dpmsolver_singlestep.py) with
// their defaults: solver order 2, midpoint, lower_order_final, linspace
// timesteps (rounded integers), sigmas from the train table.
#include <cmath>
#include <utility>

#include "core/diffusion/sampler_internal.h"

namespace lorad::diffusion::sampler_internal {
namespace {

// alpha_t = 1 / sqrt(sigma^2 + 1), sigma_t = sigma * alpha_t, lambda = log(alpha_t / sigma_t).
struct NoiseLevel {
  float alpha, sigma, lambda;
};

NoiseLevel LevelAt(float sigma) {
  NoiseLevel l;
  l.alpha = 1.0f / InputScale(sigma);
  l.sigma = sigma * l.alpha;
  l.lambda = std::log(l.alpha) - std::log(l.sigma);
  return l;
}

class DpmSolverBase : public Scheduler {
 public:
  DpmSolverBase(const NoiseSchedule& schedule, int64_t steps, PredictionType prediction,
                const SamplerOptions& options, bool plus_plus)
      : prediction_(prediction), plus_plus_(plus_plus) {
    // np.linspace(0, T - 1, n + 1).round()[::-1][:-1] (leading: (arange(n + 1) * (T // (n + 1)))[::-1][:-1] + offset).
    const auto train = TrainSigmas(schedule);
    auto spaced = SpacedTimesteps(options.spacing, steps + 1, schedule.num_train_timesteps(), options.steps_offset);
    spaced.pop_back();
    std::vector<float> timesteps;
    for (double t : spaced) {
      const double rounded = RoundHalfEven(t);
      timesteps.push_back(static_cast<float>(rounded));
      sig_.push_back(static_cast<float>(InterpolateSigma(train, rounded)));
    }
    if (options.final_sigma == FinalSigma::kSigmaMin) {
      const float a0 = ToVector(schedule.alphas_cumprod().slice(0, 0, 1))[0];
      sig_.push_back(std::sqrt((1 - a0) / a0));
    } else {
      sig_.push_back(0.0f);
    }
    timesteps_ = ToTensor(timesteps);
    sigmas_ = ToTensor(sig_);
  }

 protected:
  // The model output as the solver's variable: x0 for dpmsolver++, eps for dpmsolver.
  torch::Tensor ConvertModelOutput(const torch::Tensor& model_output, const torch::Tensor& x, int64_t i) const {
    const NoiseLevel l = LevelAt(sig_[static_cast<size_t>(i)]);
    if (plus_plus_) {
      if (prediction_ == PredictionType::kVPrediction) {
        return static_cast<double>(l.alpha) * x - static_cast<double>(l.sigma) * model_output;
      }
      return (x - static_cast<double>(l.sigma) * model_output) / static_cast<double>(l.alpha);
    }
    if (prediction_ == PredictionType::kVPrediction) {
      return static_cast<double>(l.alpha) * model_output + static_cast<double>(l.sigma) * x;
    }
    return model_output;
  }

  // One first-order step from sigma index s to t (DDIM in lambda).
  torch::Tensor FirstOrder(const torch::Tensor& m, size_t s, size_t t, const torch::Tensor& x) const {
    const NoiseLevel to = LevelAt(sig_[t]);
    const NoiseLevel from = LevelAt(sig_[s]);
    const float h = to.lambda - from.lambda;
    if (plus_plus_) {
      return static_cast<double>(to.sigma / from.sigma) * x - static_cast<double>(to.alpha * (std::exp(-h) - 1.0f)) * m;
    }
    return static_cast<double>(to.alpha / from.alpha) * x - static_cast<double>(to.sigma * (std::exp(h) - 1.0f)) * m;
  }

  // The midpoint second-order update to sigma index t from the sample at index
  // `from` with model outputs m0 (at s0) and m1 (at s1); D0 is the output at `from`.
  torch::Tensor SecondOrder(const torch::Tensor& m0, const torch::Tensor& m1, size_t t, size_t s0, size_t s1,
                            size_t from, const torch::Tensor& x) const {
    const NoiseLevel lt = LevelAt(sig_[t]);
    const NoiseLevel l0 = LevelAt(sig_[s0]);
    const NoiseLevel l1 = LevelAt(sig_[s1]);
    const NoiseLevel lf = from == s0 ? l0 : l1;
    const float h = lt.lambda - lf.lambda;
    const float h_0 = l0.lambda - l1.lambda;
    const float r0 = h_0 / h;
    const torch::Tensor& d0 = from == s0 ? m0 : m1;
    auto d1 = static_cast<double>(1.0f / r0) * (m0 - m1);
    if (plus_plus_) {
      const float c = lt.alpha * (std::exp(-h) - 1.0f);
      return static_cast<double>(lt.sigma / lf.sigma) * x - static_cast<double>(c) * d0 -
             static_cast<double>(0.5f * c) * d1;
    }
    const float c = lt.sigma * (std::exp(h) - 1.0f);
    return static_cast<double>(lt.alpha / lf.alpha) * x - static_cast<double>(c) * d0 - static_cast<double>(0.5f * c) * d1;
  }

  PredictionType prediction_;
  bool plus_plus_;
  std::vector<float> sig_;  // n + 1, the last the final sigma
};

// Multistep: each call is one step; from the second on it also uses the
// previous model output. The last step (and, under 15 steps, the one before
// with order 2 anyway) falls back to first order where diffusers does.
class DpmSolverMultistep : public DpmSolverBase {
 public:
  DpmSolverMultistep(const NoiseSchedule& schedule, int64_t steps, PredictionType prediction,
                     const SamplerOptions& options, bool plus_plus)
      : DpmSolverBase(schedule, steps, prediction, options, plus_plus), final_zero_(options.final_sigma == FinalSigma::kZero) {}

  StepResult Step(const torch::Tensor& model_output, int64_t i, const torch::Tensor& x) override {
    const int64_t n = num_calls();
    // lower_order_final (default True): first order on the last step when
    // there are fewer than 15 steps or the final sigma is 0.
    const bool lower_order_final = i == n - 1 && (n < 15 || final_zero_);
    auto m = ConvertModelOutput(model_output, x, i);
    prev_output_ = std::exchange(last_output_, m);
    const auto sample = x.to(torch::kFloat32);
    const size_t k = static_cast<size_t>(i);
    torch::Tensor prev;
    if (lower_order_nums_ < 1 || lower_order_final) {
      prev = FirstOrder(m, k, k + 1, sample);
    } else {
      prev = SecondOrder(m, prev_output_, k + 1, k, k - 1, k, sample);
    }
    if (lower_order_nums_ < 2) ++lower_order_nums_;
    return {prev.to(model_output.scalar_type()), torch::Tensor()};
  }

 private:
  bool final_zero_;
  int lower_order_nums_ = 0;
  torch::Tensor last_output_, prev_output_;
};

// Singlestep: steps alternate order 1 and order 2; an order-2 step restarts
// from the sample saved at the order-1 step before it and uses both outputs.
class DpmSolverSinglestep : public DpmSolverBase {
 public:
  DpmSolverSinglestep(const NoiseSchedule& schedule, int64_t steps, PredictionType prediction,
                      const SamplerOptions& options)
      : DpmSolverBase(schedule, steps, prediction, options, /*plus_plus=*/true) {
    // get_order_list for order 2. diffusers turns lower_order_final on for a
    // zero final sigma (kohya's dpmsingle) or an odd step count.
    const bool lower_order_final = options.final_sigma == FinalSigma::kZero || steps % 2 != 0;
    for (int64_t j = 0; j < steps / 2 - (lower_order_final && steps % 2 == 0 ? 1 : 0); ++j) {
      orders_.insert(orders_.end(), {1, 2});
    }
    if (lower_order_final) {
      if (steps % 2 == 0) {
        orders_.insert(orders_.end(), {1, 1});
      } else {
        orders_.push_back(1);
      }
    }
    if (options.final_sigma == FinalSigma::kZero) orders_.back() = 1;
  }

  StepResult Step(const torch::Tensor& model_output, int64_t i, const torch::Tensor& x) override {
    auto m = ConvertModelOutput(model_output, x, i);
    prev_output_ = std::exchange(last_output_, m);
    int order = orders_[static_cast<size_t>(i)];
    if (order == 2 && !prev_output_.defined()) order = 1;
    if (order == 1) sample_ = x;
    const size_t k = static_cast<size_t>(i);
    if (order == 1) return {FirstOrder(m, k, k + 1, sample_), torch::Tensor()};
    return {SecondOrder(m, prev_output_, k + 1, k, k - 1, k - 1, sample_), torch::Tensor()};
  }

 private:
  std::vector<int> orders_;
  torch::Tensor last_output_, prev_output_, sample_;
};

}  // namespace

std::unique_ptr<Scheduler> MakeDpmSolverMultistep(const NoiseSchedule& schedule, int64_t steps,
                                                  PredictionType prediction, const SamplerOptions& options,
                                                  bool plus_plus) {
  return std::make_unique<DpmSolverMultistep>(schedule, steps, prediction, options, plus_plus);
}

std::unique_ptr<Scheduler> MakeDpmSolverSinglestep(const NoiseSchedule& schedule, int64_t steps,
                                                   PredictionType prediction, const SamplerOptions& options) {
  return std::make_unique<DpmSolverSinglestep>(schedule, steps, prediction, options);
}

}  // namespace lorad::diffusion::sampler_internal
