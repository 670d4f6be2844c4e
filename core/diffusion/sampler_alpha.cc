// The samplers on alphas_cumprod at integer timesteps: diffusers
// DDIMScheduler (schedulers/scheduling_ddim.py, eta 0) and PNDMScheduler
// (schedulers/scheduling_pndm.py, Runge-Kutta warm-up then 4th-order linear
// multistep, skip_prk_steps False as kohya leaves it).
#include <cmath>
#include <utility>

#include "core/diffusion/sampler_internal.h"

namespace lorad::diffusion::sampler_internal {
namespace {

class AlphaScheduler : public Scheduler {
 public:
  AlphaScheduler(const NoiseSchedule& schedule, int64_t steps, PredictionType prediction,
                 const SamplerOptions& options, const std::vector<int64_t>& timesteps)
      : prediction_(prediction),
        options_(options),
        acp_(ToVector(schedule.alphas_cumprod())),
        step_ratio_(schedule.num_train_timesteps() / steps) {
    final_alpha_ = options.set_alpha_to_one ? 1.0f : acp_.front();
    std::vector<float> t(timesteps.begin(), timesteps.end());
    timesteps_ = ToTensor(t);
    int_timesteps_ = timesteps;
  }

 protected:
  float AlphaAt(int64_t t) const { return t >= 0 ? acp_[static_cast<size_t>(t)] : final_alpha_; }

  PredictionType prediction_;
  SamplerOptions options_;
  std::vector<float> acp_;
  float final_alpha_ = 1.0f;
  int64_t step_ratio_;
  std::vector<int64_t> int_timesteps_;
};

class DdimScheduler : public AlphaScheduler {
 public:
  using AlphaScheduler::AlphaScheduler;

  StepResult Step(const torch::Tensor& model_output, int64_t i, const torch::Tensor& x) override {
    const int64_t t = int_timesteps_[static_cast<size_t>(i)];
    const float alpha = AlphaAt(t);
    const float alpha_prev = AlphaAt(t - step_ratio_);
    const float beta = 1 - alpha;
    torch::Tensor pred_x0, pred_eps;
    if (prediction_ == PredictionType::kVPrediction) {
      pred_x0 = static_cast<double>(std::sqrt(alpha)) * x - static_cast<double>(std::sqrt(beta)) * model_output;
      pred_eps = static_cast<double>(std::sqrt(alpha)) * model_output + static_cast<double>(std::sqrt(beta)) * x;
    } else {
      pred_x0 = (x - static_cast<double>(std::sqrt(beta)) * model_output) / static_cast<double>(std::sqrt(alpha));
      pred_eps = model_output;
    }
    if (options_.clip_sample) pred_x0 = pred_x0.clamp(-options_.clip_sample_range, options_.clip_sample_range);
    // eta 0: no variance term.
    auto direction = static_cast<double>(std::sqrt(1 - alpha_prev)) * pred_eps;
    return {static_cast<double>(std::sqrt(alpha_prev)) * pred_x0 + direction, pred_x0};
  }
};

class PndmScheduler : public AlphaScheduler {
 public:
  PndmScheduler(const NoiseSchedule& schedule, int64_t steps, PredictionType prediction,
                const SamplerOptions& options, const std::vector<int64_t>& timesteps, size_t prk_count)
      : AlphaScheduler(schedule, steps, prediction, options, timesteps), prk_count_(prk_count) {}

  StepResult Step(const torch::Tensor& model_output, int64_t i, const torch::Tensor& x) override {
    const size_t counter = static_cast<size_t>(i);
    const int64_t t = int_timesteps_[counter];
    return {counter < prk_count_ ? StepPrk(model_output, counter, t, x) : StepPlms(model_output, counter, t, x),
            torch::Tensor()};
  }

 private:
  // Runge-Kutta: four model calls per step of one step_ratio, at t, t - r/2, t - r/2, t - r.
  torch::Tensor StepPrk(const torch::Tensor& model_output, size_t counter, int64_t timestep, const torch::Tensor& x) {
    const int64_t diff_to_prev = counter % 2 ? 0 : step_ratio_ / 2;
    const int64_t prev_timestep = timestep - diff_to_prev;
    const int64_t t = int_timesteps_[counter / 4 * 4];
    torch::Tensor out = model_output;
    switch (counter % 4) {
      case 0:
        rk_sum_ = model_output * (1.0 / 6);
        ets_.push_back(model_output);
        cur_sample_ = x;
        break;
      case 1:
      case 2:
        rk_sum_ = rk_sum_ + model_output * (1.0 / 3);
        break;
      default:
        out = rk_sum_ + model_output * (1.0 / 6);
        rk_sum_ = torch::Tensor();
        break;
    }
    return PrevSample(cur_sample_.defined() ? cur_sample_ : x, t, prev_timestep, out);
  }

  // Linear multistep over the last up-to-four model outputs.
  torch::Tensor StepPlms(const torch::Tensor& model_output, size_t counter, int64_t timestep, const torch::Tensor& x) {
    int64_t t = timestep;
    int64_t prev_timestep = t - step_ratio_;
    if (counter != 1) {
      if (ets_.size() > 3) ets_.erase(ets_.begin(), ets_.end() - 3);
      ets_.push_back(model_output);
    } else {
      prev_timestep = t;
      t = t + step_ratio_;
    }
    torch::Tensor out;
    torch::Tensor sample = x;
    const size_t n = ets_.size();
    if (n == 1 && counter == 0) {
      out = model_output;
      cur_sample_ = x;
    } else if (n == 1 && counter == 1) {
      out = (model_output + ets_[n - 1]) / 2;
      sample = cur_sample_;
      cur_sample_ = torch::Tensor();
    } else if (n == 2) {
      out = (3 * ets_[n - 1] - ets_[n - 2]) / 2;
    } else if (n == 3) {
      out = (23 * ets_[n - 1] - 16 * ets_[n - 2] + 5 * ets_[n - 3]) / 12;
    } else {
      out = (1.0 / 24) * (55 * ets_[n - 1] - 59 * ets_[n - 2] + 37 * ets_[n - 3] - 9 * ets_[n - 4]);
    }
    return PrevSample(sample, t, prev_timestep, out);
  }

  // The PNDM transfer x_t -> x_prev (formula 9 of the paper).
  torch::Tensor PrevSample(const torch::Tensor& sample, int64_t t, int64_t prev_t, torch::Tensor model_output) const {
    const float alpha = AlphaAt(t);
    const float alpha_prev = AlphaAt(prev_t);
    const float beta = 1 - alpha;
    const float beta_prev = 1 - alpha_prev;
    if (prediction_ == PredictionType::kVPrediction) {
      model_output = static_cast<double>(std::sqrt(alpha)) * model_output + static_cast<double>(std::sqrt(beta)) * sample;
    }
    const float sample_coeff = std::sqrt(alpha_prev / alpha);
    const float denom = alpha * std::sqrt(beta_prev) + std::sqrt(alpha * beta * alpha_prev);
    return static_cast<double>(sample_coeff) * sample -
           static_cast<double>(alpha_prev - alpha) * model_output / static_cast<double>(denom);
  }

  size_t prk_count_;
  std::vector<torch::Tensor> ets_;
  torch::Tensor rk_sum_, cur_sample_;
};

std::vector<int64_t> IntegerTimesteps(const NoiseSchedule& schedule, int64_t steps, const SamplerOptions& options) {
  std::vector<int64_t> out;
  for (double t : SpacedTimesteps(options.spacing, steps, schedule.num_train_timesteps(), options.steps_offset)) {
    out.push_back(static_cast<int64_t>(RoundHalfEven(t)));
  }
  return out;
}

}  // namespace

std::unique_ptr<Scheduler> MakeDdim(const NoiseSchedule& schedule, int64_t steps, PredictionType prediction,
                                    const SamplerOptions& options) {
  return std::make_unique<DdimScheduler>(schedule, steps, prediction, options,
                                         IntegerTimesteps(schedule, steps, options));
}

std::unique_ptr<Scheduler> MakePndm(const NoiseSchedule& schedule, int64_t steps, PredictionType prediction,
                                    const SamplerOptions& options) {
  // diffusers' PNDM set_timesteps with skip_prk_steps False: the ascending
  // spaced timesteps; the top four (fewer when steps < 4) each give an RK step
  // of four calls at t + r/2 offsets; the rest but the last three are PLMS steps.
  auto descending = IntegerTimesteps(schedule, steps, options);
  const std::vector<int64_t> ascending(descending.rbegin(), descending.rend());
  const int64_t half = schedule.num_train_timesteps() / steps / 2;
  const size_t order = std::min<size_t>(4, ascending.size());
  std::vector<int64_t> prk;  // (tail.repeat(2) + tile([0, half]))[:-1].repeat(2)[1:-1][::-1]
  {
    std::vector<int64_t> base;
    for (size_t i = ascending.size() - order; i < ascending.size(); ++i) {
      base.push_back(ascending[i]);
      base.push_back(ascending[i] + half);
    }
    base.pop_back();
    std::vector<int64_t> doubled;
    for (int64_t v : base) doubled.insert(doubled.end(), {v, v});
    if (doubled.size() >= 2) prk.assign(doubled.begin() + 1, doubled.end() - 1);
    std::reverse(prk.begin(), prk.end());
  }
  std::vector<int64_t> timesteps = prk;
  if (ascending.size() > 3) {
    for (size_t i = ascending.size() - 3; i-- > 0;) timesteps.push_back(ascending[i]);
  }
  return std::make_unique<PndmScheduler>(schedule, steps, prediction, options, timesteps, prk.size());
}

}  // namespace lorad::diffusion::sampler_internal
