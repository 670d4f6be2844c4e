// The k-diffusion samplers as diffusers implements them: Euler
// (scheduling_euler_discrete.py, no churn), Euler ancestral
// (scheduling_euler_ancestral_discrete.py), LMS (scheduling_lms_discrete.py,
// order 4), Heun (scheduling_heun_discrete.py), DPM2
// (scheduling_k_dpm_2_discrete.py) and DPM2 ancestral
// (scheduling_k_dpm_2_ancestral_discrete.py). All work on sigma = sqrt((1 - a) / a)
// interpolated at the spaced timesteps, with model input x / sqrt(sigma^2 + 1).
#include <algorithm>
#include <cmath>
#include <utility>

#include "core/diffusion/sampler_internal.h"

namespace lorad::diffusion::sampler_internal {
namespace {

// The spaced timesteps (float32, as diffusers casts them) and their sigmas plus a final 0.
struct SigmaTable {
  std::vector<float> timesteps;
  std::vector<float> sigmas;  // size n + 1
};

SigmaTable BuildSigmaTable(const NoiseSchedule& schedule, int64_t steps, const SamplerOptions& options) {
  SigmaTable table;
  const auto train = TrainSigmas(schedule);
  for (double t : SpacedTimesteps(options.spacing, steps, schedule.num_train_timesteps(), options.steps_offset)) {
    const float tf = static_cast<float>(t);
    table.timesteps.push_back(tf);
    table.sigmas.push_back(static_cast<float>(InterpolateSigma(train, tf)));
  }
  table.sigmas.push_back(0.0f);
  return table;
}

// diffusers' init_noise_sigma of the k-diffusion schedulers: the largest sigma
// for linspace / trailing spacing, sqrt(max^2 + 1) for leading.
double InitNoiseSigma(const std::vector<float>& sigmas, TimestepSpacing spacing) {
  const float max = *std::max_element(sigmas.begin(), sigmas.end());
  return spacing == TimestepSpacing::kLinspace ? max : InputScale(max);
}

std::vector<float> Log(const std::vector<float>& v) {
  std::vector<float> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = std::log(v[i]);
  return out;
}

// [a0, a1, a1, a2, a2, ..., a_last, a_last, a_last]: diffusers' layout of the
// two-stage schedulers' tables (cat(a[:1], a[1:].repeat_interleave(2), a[-1:])).
std::vector<float> Interleave(const std::vector<float>& a) {
  std::vector<float> out{a.front()};
  for (size_t i = 1; i < a.size(); ++i) out.insert(out.end(), {a[i], a[i]});
  out.push_back(a.back());
  return out;
}

class SigmaScheduler : public Scheduler {
 public:
  SigmaScheduler(PredictionType prediction, std::vector<float> call_sigmas, std::vector<float> timesteps,
                 std::vector<float> table, double init_noise_sigma)
      : prediction_(prediction), call_sigmas_(std::move(call_sigmas)) {
    timesteps_ = ToTensor(timesteps);
    sigmas_ = ToTensor(table);
    init_noise_sigma_ = init_noise_sigma;
  }

  torch::Tensor ScaleModelInput(const torch::Tensor& x, int64_t i) const override {
    return x / static_cast<double>(InputScale(call_sigmas_[static_cast<size_t>(i)]));
  }

 protected:
  PredictionType prediction_;
  std::vector<float> call_sigmas_;  // the sigma that scales the model input of each call
};

class EulerScheduler : public SigmaScheduler {
 public:
  EulerScheduler(PredictionType prediction, SigmaTable table, double init_noise_sigma, bool ancestral,
                 NoiseSource noise)
      : SigmaScheduler(prediction, table.sigmas, table.timesteps, table.sigmas, init_noise_sigma),
        sig_(std::move(table.sigmas)),
        ancestral_(ancestral),
        noise_(std::move(noise)) {}

  StepResult Step(const torch::Tensor& model_output, int64_t i, const torch::Tensor& x) override {
    const auto sample = x.to(torch::kFloat32);
    const float sigma = sig_[static_cast<size_t>(i)];
    const float sigma_next = sig_[static_cast<size_t>(i) + 1];
    auto pred = SigmaPredictedX0(prediction_, model_output, sample, sigma);
    auto derivative = (sample - pred) / static_cast<double>(sigma);
    if (!ancestral_) {
      auto prev = sample + derivative * static_cast<double>(sigma_next - sigma);
      return {prev.to(model_output.scalar_type()), pred};
    }
    // Ancestral: step down to sigma_down, then add fresh noise of sigma_up.
    const float up = std::sqrt(sigma_next * sigma_next * (sigma * sigma - sigma_next * sigma_next) / (sigma * sigma));
    const float down = std::sqrt(sigma_next * sigma_next - up * up);
    auto prev = sample + derivative * static_cast<double>(down - sigma);
    prev = prev + noise_(model_output) * static_cast<double>(up);
    return {prev.to(model_output.scalar_type()), pred};
  }

 private:
  std::vector<float> sig_;
  bool ancestral_;
  NoiseSource noise_;
};

// Linear multistep: x += sum_k c_k d_{i-k}, c_k the integral over [sigma_i,
// sigma_{i+1}] of the Lagrange basis polynomial through the last `order` sigmas.
class LmsScheduler : public SigmaScheduler {
 public:
  static constexpr int kOrder = 4;

  LmsScheduler(PredictionType prediction, SigmaTable table, double init_noise_sigma)
      : SigmaScheduler(prediction, table.sigmas, table.timesteps, table.sigmas, init_noise_sigma),
        sig_(std::move(table.sigmas)) {}

  StepResult Step(const torch::Tensor& model_output, int64_t i, const torch::Tensor& x) override {
    const float sigma = sig_[static_cast<size_t>(i)];
    auto pred = SigmaPredictedX0(prediction_, model_output, x, sigma);
    derivatives_.push_back((x - pred) / static_cast<double>(sigma));
    if (derivatives_.size() > kOrder) derivatives_.erase(derivatives_.begin());
    const int order = static_cast<int>(std::min<int64_t>(i + 1, kOrder));
    torch::Tensor sum;
    for (int k = 0; k < order; ++k) {
      auto term = derivatives_[derivatives_.size() - 1 - static_cast<size_t>(k)] * Coefficient(order, i, k);
      sum = k == 0 ? term : sum + term;
    }
    return {x + sum, pred};
  }

 private:
  // diffusers integrates with scipy quad; the integrand is a polynomial of
  // degree < 4, which 4-point Gauss-Legendre integrates exactly.
  double Coefficient(int order, int64_t t, int current) const {
    auto basis = [&](double tau) {
      double prod = 1.0;
      for (int k = 0; k < order; ++k) {
        if (k == current) continue;
        const double s_k = sig_[static_cast<size_t>(t - k)];
        prod *= (tau - s_k) / (static_cast<double>(sig_[static_cast<size_t>(t - current)]) - s_k);
      }
      return prod;
    };
    static constexpr double kNodes[4] = {-0.8611363115940526, -0.3399810435848563, 0.3399810435848563,
                                         0.8611363115940526};
    static constexpr double kWeights[4] = {0.3478548451374538, 0.6521451548625461, 0.6521451548625461,
                                           0.3478548451374538};
    const double a = sig_[static_cast<size_t>(t)];
    const double b = sig_[static_cast<size_t>(t) + 1];
    double integral = 0;
    for (int q = 0; q < 4; ++q) integral += kWeights[q] * basis(0.5 * (b - a) * kNodes[q] + 0.5 * (a + b));
    return 0.5 * (b - a) * integral;
  }

  std::vector<float> sig_;
  std::vector<torch::Tensor> derivatives_;
};

// Heun: even calls take an Euler step to the next sigma; odd calls evaluate
// the model there and redo the step with the average slope. Both read the
// interleaved table [s0, s1, s1, ..., s_{n-1}, s_{n-1}, 0].
class HeunScheduler : public SigmaScheduler {
 public:
  HeunScheduler(PredictionType prediction, std::vector<float> full_sigmas, std::vector<float> timesteps,
                double init_noise_sigma, const SamplerOptions& options)
      : SigmaScheduler(prediction, full_sigmas, std::move(timesteps), full_sigmas, init_noise_sigma),
        full_(std::move(full_sigmas)),
        options_(options) {}

  StepResult Step(const torch::Tensor& model_output, int64_t i, const torch::Tensor& x) override {
    const bool first = i % 2 == 0;
    const size_t k = static_cast<size_t>(i);
    const float sigma = first ? full_[k] : full_[k - 1];
    const float sigma_next = first ? full_[k + 1] : full_[k];
    auto pred = SigmaPredictedX0(prediction_, model_output, x, first ? sigma : sigma_next);
    if (options_.clip_sample) pred = pred.clamp(-options_.clip_sample_range, options_.clip_sample_range);
    if (first) {
      auto derivative = (x - pred) / static_cast<double>(sigma);
      dt_ = sigma_next - sigma;
      prev_derivative_ = derivative;
      sample_ = x;
      return {x + derivative * static_cast<double>(dt_), pred};
    }
    auto derivative = (prev_derivative_ + (x - pred) / static_cast<double>(sigma_next)) / 2;
    auto prev = sample_ + derivative * static_cast<double>(dt_);
    prev_derivative_ = sample_ = torch::Tensor();
    return {prev, pred};
  }

 private:
  std::vector<float> full_;
  SamplerOptions options_;
  torch::Tensor prev_derivative_, sample_;
  float dt_ = 0;
};

// DPM2 (ancestral or not): even calls step to an intermediate sigma; odd
// calls evaluate the model there and take the whole step from the saved
// sample with that slope (ancestral: down to sigma_down, plus sigma_up noise).
// Tables in diffusers' interleaved layout.
class Dpm2Scheduler : public SigmaScheduler {
 public:
  struct Tables {
    std::vector<float> sigmas, interpol, up, down;  // interleaved; up / down only when ancestral
    std::vector<float> timesteps;
  };

  Dpm2Scheduler(PredictionType prediction, Tables tables, double init_noise_sigma, bool ancestral, NoiseSource noise)
      : SigmaScheduler(prediction, CallSigmas(tables, ancestral), tables.timesteps, tables.sigmas, init_noise_sigma),
        t_(std::move(tables)),
        ancestral_(ancestral),
        noise_(std::move(noise)) {}

  StepResult Step(const torch::Tensor& model_output, int64_t i, const torch::Tensor& x) override {
    const bool first = i % 2 == 0;
    const size_t k = static_cast<size_t>(i);
    float sigma, sigma_interpol, sigma_next = 0, sigma_up = 0, sigma_down = 0;
    if (!ancestral_) {
      sigma = first ? t_.sigmas[k] : t_.sigmas[k - 1];
      sigma_interpol = first ? t_.interpol[k + 1] : t_.interpol[k];
      sigma_next = first ? t_.sigmas[k + 1] : t_.sigmas[k];
    } else {
      const size_t j = first ? k : k - 1;
      sigma = t_.sigmas[j];
      sigma_interpol = t_.interpol[j];
      sigma_up = t_.up[j];
      sigma_down = first ? 0.0f : t_.down[j];  // unused in the first stage
    }
    auto pred = SigmaPredictedX0(prediction_, model_output, x, first ? sigma : sigma_interpol);
    if (first) {
      auto derivative = (x - pred) / static_cast<double>(sigma);
      sample_ = x;
      return {x + derivative * static_cast<double>(sigma_interpol - sigma), pred};
    }
    auto derivative = (x - pred) / static_cast<double>(sigma_interpol);
    const float dt = (ancestral_ ? sigma_down : sigma_next) - sigma;
    auto prev = sample_ + derivative * static_cast<double>(dt);
    sample_ = torch::Tensor();
    if (ancestral_) prev = prev + noise_(model_output) * static_cast<double>(sigma_up);
    return {prev, pred};
  }

 private:
  // Model input scale per call: the step's sigma on even calls, the
  // intermediate sigma on odd ones (ancestral reads it one slot earlier).
  static std::vector<float> CallSigmas(const Tables& t, bool ancestral) {
    std::vector<float> out(t.timesteps.size());
    for (size_t i = 0; i < out.size(); ++i) {
      out[i] = i % 2 == 0 ? t.sigmas[i] : (ancestral ? t.interpol[i - 1] : t.interpol[i]);
    }
    return out;
  }

  Tables t_;
  bool ancestral_;
  NoiseSource noise_;
  torch::Tensor sample_;
};

}  // namespace

std::unique_ptr<Scheduler> MakeEuler(const NoiseSchedule& schedule, int64_t steps, PredictionType prediction,
                                     const SamplerOptions& options) {
  auto table = BuildSigmaTable(schedule, steps, options);
  const double init = InitNoiseSigma(table.sigmas, options.spacing);
  return std::make_unique<EulerScheduler>(prediction, std::move(table), init, false, NoiseSource());
}

std::unique_ptr<Scheduler> MakeEulerAncestral(const NoiseSchedule& schedule, int64_t steps,
                                              PredictionType prediction, const SamplerOptions& options,
                                              NoiseSource noise) {
  auto table = BuildSigmaTable(schedule, steps, options);
  const double init = InitNoiseSigma(table.sigmas, options.spacing);
  return std::make_unique<EulerScheduler>(prediction, std::move(table), init, true, std::move(noise));
}

std::unique_ptr<Scheduler> MakeLms(const NoiseSchedule& schedule, int64_t steps, PredictionType prediction,
                                   const SamplerOptions& options) {
  auto table = BuildSigmaTable(schedule, steps, options);
  const double init = InitNoiseSigma(table.sigmas, options.spacing);
  return std::make_unique<LmsScheduler>(prediction, std::move(table), init);
}

std::unique_ptr<Scheduler> MakeHeun(const NoiseSchedule& schedule, int64_t steps, PredictionType prediction,
                                    const SamplerOptions& options) {
  auto table = BuildSigmaTable(schedule, steps, options);
  // sigmas: [s0, s1, s1, ..., s_{n-1}, s_{n-1}, 0]; timesteps: [t0, t1, t1, ..., t_{n-1}, t_{n-1}].
  std::vector<float> full{table.sigmas.front()};
  for (size_t i = 1; i + 1 < table.sigmas.size(); ++i) full.insert(full.end(), {table.sigmas[i], table.sigmas[i]});
  full.push_back(0.0f);
  std::vector<float> timesteps{table.timesteps.front()};
  for (size_t i = 1; i < table.timesteps.size(); ++i) {
    timesteps.insert(timesteps.end(), {table.timesteps[i], table.timesteps[i]});
  }
  const double init = InitNoiseSigma(full, options.spacing);
  return std::make_unique<HeunScheduler>(prediction, std::move(full), std::move(timesteps), init, options);
}

std::unique_ptr<Scheduler> MakeDpm2(const NoiseSchedule& schedule, int64_t steps, PredictionType prediction,
                                    const SamplerOptions& options) {
  auto table = BuildSigmaTable(schedule, steps, options);
  const auto log_sigmas = Log(TrainSigmas(schedule));
  // Intermediate sigmas: the geometric mean of each sigma and the one before
  // (diffusers: sigmas.log().lerp(sigmas.roll(1).log(), 0.5).exp(), in float32).
  auto s = ToTensor(table.sigmas);
  auto interpol = ToVector(s.log().lerp(s.roll(1).log(), 0.5).exp());
  Dpm2Scheduler::Tables t;
  t.sigmas = Interleave(table.sigmas);
  t.interpol = Interleave(interpol);
  // Timesteps: [t0, ti1, t1, ti2, t2, ..., ti_{n-1}, t_{n-1}], ti = sigma_to_t(interpol).
  t.timesteps.push_back(table.timesteps.front());
  for (size_t i = 1; i < table.timesteps.size(); ++i) {
    t.timesteps.push_back(SigmaToTimestep(interpol[i], log_sigmas));
    t.timesteps.push_back(table.timesteps[i]);
  }
  const double init = InitNoiseSigma(t.sigmas, options.spacing);
  return std::make_unique<Dpm2Scheduler>(prediction, std::move(t), init, false, NoiseSource());
}

std::unique_ptr<Scheduler> MakeDpm2Ancestral(const NoiseSchedule& schedule, int64_t steps, PredictionType prediction,
                                             const SamplerOptions& options, NoiseSource noise) {
  auto table = BuildSigmaTable(schedule, steps, options);
  const auto log_sigmas = Log(TrainSigmas(schedule));
  // diffusers' float32 construction: up/down split of each step, the
  // intermediate sigma between sigma and sigma_down, the last two 0.
  auto s = ToTensor(table.sigmas);
  auto next = s.roll(-1);
  next[-1] = 0.0;
  auto up = (next.pow(2) * (s.pow(2) - next.pow(2)) / s.pow(2)).pow(0.5);
  auto down = (next.pow(2) - up.pow(2)).pow(0.5);
  down[-1] = 0.0;
  auto interpol_t = s.log().lerp(down.log(), 0.5).exp();
  interpol_t.slice(0, -2) = 0.0;
  const auto interpol = ToVector(interpol_t);
  Dpm2Scheduler::Tables t;
  t.sigmas = Interleave(table.sigmas);
  t.interpol = Interleave(interpol);
  t.up = Interleave(ToVector(up));
  t.down = Interleave(ToVector(down));
  // Timesteps: [t0, ti0, t1, ti1, t2, ..., ti_{n-2}, t_{n-1}].
  t.timesteps.push_back(table.timesteps.front());
  for (size_t i = 1; i < table.timesteps.size(); ++i) {
    t.timesteps.push_back(SigmaToTimestep(interpol[i - 1], log_sigmas));
    t.timesteps.push_back(table.timesteps[i]);
  }
  const double init = InitNoiseSigma(t.sigmas, options.spacing);
  return std::make_unique<Dpm2Scheduler>(prediction, std::move(t), init, true, std::move(noise));
}

}  // namespace lorad::diffusion::sampler_internal
