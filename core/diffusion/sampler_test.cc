// Euler / DDIM against diffusers (the model fixtures' euler.* tensors) and
// consistency checks of guidance and v-prediction.
#include <gtest/gtest.h>

#include "core/diffusion/sampler.h"
#include "core/common/test_fixtures.h"

namespace lorad::diffusion {
namespace {

using testing::AllClose;
using testing::Get;

class EulerReference : public ::testing::TestWithParam<std::string> {};

TEST_P(EulerReference, MatchesDiffusers) {
  auto file = testing::OpenFixture(GetParam());
  ASSERT_NE(file, nullptr);
  NoiseSchedule schedule;
  EXPECT_TRUE(AllClose(schedule.betas(), Get(*file, "sched.betas")));
  EXPECT_TRUE(AllClose(schedule.alphas_cumprod(), Get(*file, "sched.alphas_cumprod")));
  const int64_t steps = file->Shape("euler.timesteps")->at(0);
  EulerSampler euler(schedule, steps, PredictionType::kEpsilon);
  EXPECT_TRUE(AllClose(euler.timesteps(), Get(*file, "euler.timesteps"), 0, 0));
  EXPECT_TRUE(AllClose(euler.sigmas(), Get(*file, "euler.sigmas")));
  EXPECT_NEAR(euler.init_noise_sigma(), Get(*file, "euler.init_noise_sigma").item<double>(), 1e-5);

  auto sample = Get(*file, "euler.sample");
  auto eps = Get(*file, "euler.model_output");
  EXPECT_TRUE(AllClose(euler.ScaleModelInput(sample, 0), Get(*file, "euler.scaled_model_input")));
  auto step = euler.Step(eps, 0, sample);
  EXPECT_TRUE(AllClose(step.pred_original_sample, Get(*file, "euler.pred_original_sample")));
  EXPECT_TRUE(AllClose(step.prev_sample, Get(*file, "euler.prev_sample")));

  // The full loop from the same noise with the fixed eps at every step.
  auto noise = sample / euler.init_noise_sigma();
  std::vector<int64_t> seen;
  auto final = euler.Sample(noise, [&](const torch::Tensor& x, int64_t t) {
    seen.push_back(t);
    return eps;
  });
  EXPECT_TRUE(AllClose(final, Get(*file, "euler.loop_final"), 1e-5, 1e-4));
  ASSERT_EQ(static_cast<int64_t>(seen.size()), steps);
  EXPECT_EQ(seen.front(), 951);
  EXPECT_EQ(seen.back(), 1);
}

INSTANTIATE_TEST_SUITE_P(Models, EulerReference,
                         ::testing::Values("tiny_sdxl_reference.safetensors", "tiny_sd15_reference.safetensors"));

TEST(Sampler, LeadingTimesteps) {
  auto t = LeadingTimesteps(30);
  EXPECT_EQ(t[0].item<int64_t>(), 958);
  EXPECT_EQ(t[1].item<int64_t>(), 925);
  EXPECT_EQ(t[-1].item<int64_t>(), 1);
}

// A denoiser that knows x0: eps = (x - sqrt(a) x0) / sqrt(1 - a) at the model's input scale.
TEST(Sampler, DdimRecoversKnownCleanSample) {
  NoiseSchedule schedule;
  auto x0 = torch::randn({1, 4, 8, 8}, at::detail::createCPUGenerator(3), torch::kFloat32) * 0.5;
  const auto& acp = schedule.alphas_cumprod();
  for (auto prediction : {PredictionType::kEpsilon, PredictionType::kVPrediction}) {
    Denoiser oracle = [&](const torch::Tensor& x, int64_t t) {
      auto a = acp[t];
      auto eps = (x - a.sqrt() * x0) / (1 - a).sqrt();
      return prediction == PredictionType::kEpsilon ? eps : schedule.Velocity(x0, eps, torch::tensor({t}));
    };
    auto noise = torch::randn({1, 4, 8, 8}, at::detail::createCPUGenerator(4), torch::kFloat32);
    DdimSampler ddim(schedule, 25, prediction);
    auto x = noise;
    torch::Tensor pred_x0;
    for (int64_t i = 0; i < ddim.steps(); ++i) {
      auto step = ddim.Step(oracle(x, ddim.timesteps()[i].item<int64_t>()), i, x);
      x = step.prev_sample;
      pred_x0 = step.pred_original_sample;
    }
    // An exact oracle makes every x0 prediction exact, and the loop equals Sample().
    EXPECT_TRUE(AllClose(pred_x0, x0, 1e-4, 1e-4));
    EXPECT_TRUE(AllClose(SampleLatents(SamplerKind::kDdim, schedule, 25, prediction, noise, oracle), x, 0, 0));
    // The last step lands on alphas_cumprod[0] (set_alpha_to_one=False): x = sqrt(a0) x0 + sqrt(1-a0) eps.
    EXPECT_LT((x - acp[0].sqrt() * x0).abs().max().item<float>(), 0.2f);
  }
}

TEST(Sampler, EulerVPredictionMatchesEpsilonOnOracle) {
  NoiseSchedule schedule;
  auto x0 = torch::randn({1, 4, 8, 8}, at::detail::createCPUGenerator(5), torch::kFloat32) * 0.5;
  const auto& acp = schedule.alphas_cumprod();
  auto run = [&](PredictionType prediction) {
    Denoiser oracle = [&](const torch::Tensor& scaled, int64_t t) {
      auto a = acp[t];
      // Model input is x_t * sqrt(a) (Euler's scaling of x = x_t / sqrt(a)).
      auto eps = (scaled - a.sqrt() * x0) / (1 - a).sqrt();
      return prediction == PredictionType::kEpsilon ? eps : schedule.Velocity(x0, eps, torch::tensor({t}));
    };
    auto noise = torch::randn({1, 4, 8, 8}, at::detail::createCPUGenerator(6), torch::kFloat32);
    return SampleLatents(SamplerKind::kEuler, schedule, 20, prediction, noise, oracle);
  };
  auto eps_out = run(PredictionType::kEpsilon);
  auto v_out = run(PredictionType::kVPrediction);
  EXPECT_TRUE(AllClose(v_out, eps_out, 1e-4, 1e-4));
  EXPECT_LT((eps_out - x0).abs().max().item<float>(), 0.05f);
}

TEST(Sampler, ClassifierFreeGuidanceCombinesHalves) {
  Denoiser model = [](const torch::Tensor& x, int64_t) {
    auto halves = x.chunk(2, 0);
    return torch::cat({halves[0] * 0 + 1, halves[1] * 0 + 3});
  };
  auto guided = ClassifierFreeGuidance(model, 7.5);
  auto out = guided(torch::zeros({2, 4, 2, 2}), 10);
  EXPECT_EQ(out.size(0), 2);
  EXPECT_FLOAT_EQ(out[0][0][0][0].item<float>(), 1 + 7.5f * 2);
}

TEST(Sampler, UnknownSamplerIsAClearError) {
  auto s = ParseSamplerKind("dpmsolver++");
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("dpmsolver++"), std::string::npos);
}

}  // namespace
}  // namespace lorad::diffusion
