// The preview samplers against diffusers: every kohya sampler on the
// trajectories of tests/fixtures/sampler_reference.safetensors (written by
// make_sampler_reference.py with the diffusers version kohya pins), Euler with
// the checkpoint scheduler config against the model fixtures' euler.* tensors,
// and consistency checks with an oracle denoiser.
#include <cmath>
#include <cstdio>
#include <map>
#include <set>

#include <gtest/gtest.h>

#include "core/common/test_fixtures.h"
#include "core/diffusion/sampler.h"

namespace lorad::diffusion {
namespace {

using testing::AllClose;
using testing::Get;

// The scheduler_config.json of SD checkpoints: leading spacing, steps_offset 1,
// no clipping, set_alpha_to_one False (what the model fixtures' euler.* used).
SamplerOptions CheckpointOptions() {
  SamplerOptions o;
  o.spacing = TimestepSpacing::kLeading;
  o.steps_offset = 1;
  o.clip_sample = false;
  o.set_alpha_to_one = false;
  return o;
}

std::vector<float> Floats(const torch::Tensor& t) {
  auto c = t.to(torch::kFloat32).contiguous();
  return std::vector<float>(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
}

class EulerReference : public ::testing::TestWithParam<std::string> {};

TEST_P(EulerReference, MatchesDiffusers) {
  auto file = testing::OpenFixture(GetParam());
  ASSERT_NE(file, nullptr);
  NoiseSchedule schedule;
  EXPECT_TRUE(AllClose(schedule.betas(), Get(*file, "sched.betas")));
  EXPECT_TRUE(AllClose(schedule.alphas_cumprod(), Get(*file, "sched.alphas_cumprod")));
  const int64_t steps = file->Shape("euler.timesteps")->at(0);
  auto euler = MakeScheduler(SamplerKind::kEuler, schedule, steps, PredictionType::kEpsilon, CheckpointOptions());
  EXPECT_TRUE(AllClose(euler->timesteps(), Get(*file, "euler.timesteps").to(torch::kFloat32), 0, 0));
  EXPECT_TRUE(AllClose(euler->sigmas(), Get(*file, "euler.sigmas")));
  EXPECT_NEAR(euler->init_noise_sigma(), Get(*file, "euler.init_noise_sigma").item<double>(), 1e-5);

  auto sample = Get(*file, "euler.sample");
  auto eps = Get(*file, "euler.model_output");
  EXPECT_TRUE(AllClose(euler->ScaleModelInput(sample, 0), Get(*file, "euler.scaled_model_input")));
  auto step = euler->Step(eps, 0, sample);
  EXPECT_TRUE(AllClose(step.pred_original_sample, Get(*file, "euler.pred_original_sample")));
  EXPECT_TRUE(AllClose(step.prev_sample, Get(*file, "euler.prev_sample")));

  // The full loop from the same noise with the fixed eps at every step.
  auto fresh = MakeScheduler(SamplerKind::kEuler, schedule, steps, PredictionType::kEpsilon, CheckpointOptions());
  auto noise = sample / fresh->init_noise_sigma();
  std::vector<double> seen;
  auto final = RunScheduler(*fresh, noise, [&](const torch::Tensor&, double t) {
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

// One case of sampler_reference.safetensors: "<sampler>.<prediction>.<steps>".
struct ReferenceCase {
  std::string key, sampler;
  PredictionType prediction;
  int64_t steps;
};

std::shared_ptr<io::SafetensorsFile> OpenSamplerReference() {
  auto file = io::SafetensorsFile::Open(std::string(LORAD_REPO_FIXTURES) + "/sampler_reference.safetensors");
  EXPECT_TRUE(file.ok()) << file.status();
  if (!file.ok()) return nullptr;
  return std::shared_ptr<io::SafetensorsFile>(std::move(file).value());
}

std::vector<ReferenceCase> ReferenceCases(const io::SafetensorsFile& file) {
  std::vector<ReferenceCase> cases;
  const nlohmann::json all = testing::MetadataJson(file, "cases");
  for (auto it = all.begin(); it != all.end(); ++it) {
    const std::string key = it.key();
    const size_t a = key.find('.');
    const size_t b = key.rfind('.');
    ReferenceCase c;
    c.key = key;
    c.sampler = key.substr(0, a);
    c.prediction = key.substr(a + 1, b - a - 1) == "v_prediction" ? PredictionType::kVPrediction
                                                                  : PredictionType::kEpsilon;
    c.steps = std::stoll(key.substr(b + 1));
    cases.push_back(c);
  }
  return cases;
}

// Every sampler with kohya's options, step by step against diffusers: the
// timestep of every model call, the sigma table, init_noise_sigma, every model
// input and every sample, with the noise diffusers drew injected. float32
// throughout; the worst element is within 1e-5 of the case's largest value.
TEST(SamplerReference, EverySamplerMatchesDiffusers) {
  auto file = OpenSamplerReference();
  ASSERT_NE(file, nullptr);
  const auto c = Get(*file, "c");
  const auto unit_noise = Get(*file, "noise");
  const auto cases = ReferenceCases(*file);
  std::set<std::string> covered;
  double worst_relative = 0;
  for (const ReferenceCase& rc : cases) {
    SCOPED_TRACE(rc.key);
    auto kind = ParseSamplerKind(rc.sampler);
    ASSERT_TRUE(kind.ok()) << kind.status();
    covered.insert(SamplerKindName(*kind));
    torch::Tensor recorded_noise;
    if (file->Shape(rc.key + ".step_noise").ok()) recorded_noise = Get(*file, rc.key + ".step_noise");
    int64_t draws = 0;
    NoiseSource noise = [&](const torch::Tensor& like) {
      EXPECT_TRUE(recorded_noise.defined() && draws < recorded_noise.size(0)) << "unexpected noise draw " << draws;
      if (!recorded_noise.defined() || draws >= recorded_noise.size(0)) return torch::zeros_like(like);
      return recorded_noise[draws++];
    };
    NoiseSchedule schedule;
    auto scheduler = MakeScheduler(*kind, schedule, rc.steps, rc.prediction, KohyaSamplerOptions(*kind), noise);
    const auto timesteps = Get(*file, rc.key + ".timesteps");
    ASSERT_EQ(scheduler->num_calls(), timesteps.size(0));
    EXPECT_TRUE(AllClose(scheduler->timesteps(), timesteps, 1e-5, 1e-4));
    if (file->Shape(rc.key + ".sigmas").ok()) {
      EXPECT_TRUE(AllClose(scheduler->sigmas(), Get(*file, rc.key + ".sigmas").nan_to_num(0), 1e-6, 1e-7));
    }
    EXPECT_NEAR(scheduler->init_noise_sigma(), Get(*file, rc.key + ".init_noise_sigma").item<double>(), 1e-5);

    const auto samples = Get(*file, rc.key + ".samples");
    const auto inputs = Get(*file, rc.key + ".model_inputs");
    const double scale = std::max(1.0, samples.abs().max().item<double>());
    const auto ts = Floats(scheduler->timesteps());
    auto x = unit_noise * scheduler->init_noise_sigma();
    double case_worst = (x - samples[0]).abs().max().item<double>();
    for (int64_t i = 0; i < scheduler->num_calls(); ++i) {
      auto input = scheduler->ScaleModelInput(x, i);
      case_worst = std::max(case_worst, (input - inputs[i]).abs().max().item<double>());
      // The analytic model of the generator: 0.1 x + c sin(t / 100).
      auto out = 0.1 * input + c * std::sin(static_cast<double>(ts[static_cast<size_t>(i)]) / 100.0);
      x = scheduler->Step(out, i, x).prev_sample;
      case_worst = std::max(case_worst, (x - samples[i + 1]).abs().max().item<double>());
    }
    if (recorded_noise.defined()) EXPECT_EQ(draws, recorded_noise.size(0));
    EXPECT_LT(case_worst / scale, 1e-5) << "max abs error " << case_worst << " of max |x| " << scale;
    worst_relative = std::max(worst_relative, case_worst / scale);
  }
  // Every sampler kohya offers has cases, for both predictions.
  EXPECT_EQ(covered.size(), 11u);
  EXPECT_GE(cases.size(), 22u);
  RecordProperty("worst_relative_error", std::to_string(worst_relative));
  std::printf("samplers vs diffusers: %zu cases, worst |error| / max |x| = %.3g\n", cases.size(), worst_relative);
}

TEST(Sampler, KohyaNamesAndAliases) {
  EXPECT_EQ(SamplerNames().size(), 16u);
  for (const std::string& name : SamplerNames()) EXPECT_TRUE(ParseSamplerKind(name).ok()) << name;
  const std::map<std::string, std::string> aliases = {
      {"k_lms", "lms"}, {"k_euler", "euler"}, {"k_euler_a", "euler_a"}, {"k_dpm_2", "dpm_2"}, {"k_dpm_2_a", "dpm_2_a"}};
  for (const auto& [alias, name] : aliases) {
    EXPECT_EQ(*ParseSamplerKind(alias), *ParseSamplerKind(name)) << alias;
    EXPECT_STREQ(SamplerKindName(*ParseSamplerKind(alias)), name.c_str());
  }
  // kohya's scheduler choices: clipping on DDIM and Heun only, leading spacing on DDIM and PNDM.
  EXPECT_TRUE(KohyaSamplerOptions(SamplerKind::kDdim).clip_sample);
  EXPECT_TRUE(KohyaSamplerOptions(SamplerKind::kHeun).clip_sample);
  EXPECT_FALSE(KohyaSamplerOptions(SamplerKind::kEuler).clip_sample);
  EXPECT_EQ(KohyaSamplerOptions(SamplerKind::kPndm).spacing, TimestepSpacing::kLeading);
  EXPECT_EQ(KohyaSamplerOptions(SamplerKind::kLms).spacing, TimestepSpacing::kLinspace);
}

TEST(Sampler, UnknownSamplerIsAClearError) {
  for (const std::string name : {"ddpm", "Euler", "unipc", ""}) {
    auto s = ParseSamplerKind(name);
    ASSERT_FALSE(s.ok()) << name;
    EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(s.status().message().find("'" + name + "'"), std::string::npos) << s.status();
    EXPECT_NE(s.status().message().find("dpmsolver++"), std::string::npos) << s.status();
    EXPECT_NE(s.status().message().find("k_dpm_2_a"), std::string::npos) << s.status();
  }
}

TEST(Sampler, LeadingTimestepsWithOffset) {
  NoiseSchedule schedule;
  auto ddim = MakeScheduler(SamplerKind::kDdim, schedule, 30, PredictionType::kEpsilon, CheckpointOptions());
  auto t = Floats(ddim->timesteps());
  ASSERT_EQ(t.size(), 30u);
  EXPECT_EQ(t[0], 958);
  EXPECT_EQ(t[1], 925);
  EXPECT_EQ(t.back(), 1);
  // kohya's DDIM: steps_offset 0.
  auto kohya = MakeScheduler(SamplerKind::kDdim, schedule, 30, PredictionType::kEpsilon,
                             KohyaSamplerOptions(SamplerKind::kDdim));
  EXPECT_EQ(Floats(kohya->timesteps()).front(), 957);
  EXPECT_EQ(Floats(kohya->timesteps()).back(), 0);
}

// numpy rounds linspace timesteps half to even: linspace(0, 999, 7) has 166.5 and 832.5.
TEST(Sampler, LinspaceTimestepsRoundHalfToEven) {
  NoiseSchedule schedule;
  SamplerOptions linspace;
  auto ddim = MakeScheduler(SamplerKind::kDdim, schedule, 7, PredictionType::kEpsilon, linspace);
  EXPECT_EQ(Floats(ddim->timesteps()), (std::vector<float>{999, 832, 666, 500, 333, 166, 0}));
  // DPM-Solver: n + 1 points, the last (0) dropped.
  auto dpm = MakeScheduler(SamplerKind::kDpmSolverPlusPlus, schedule, 6, PredictionType::kEpsilon,
                           KohyaSamplerOptions(SamplerKind::kDpmSolverPlusPlus));
  EXPECT_EQ(Floats(dpm->timesteps()), (std::vector<float>{999, 832, 666, 500, 333, 166}));
}

// A denoiser that knows x0: eps = (x - sqrt(a) x0) / sqrt(1 - a) at the model's
// input scale, with a from the train sigma table interpolated at t (the
// k-diffusion samplers call it at fractional timesteps).
Denoiser Oracle(const NoiseSchedule& schedule, const torch::Tensor& x0, PredictionType prediction) {
  auto sig = Floats(((1 - schedule.alphas_cumprod()) / schedule.alphas_cumprod()).sqrt());
  return [sig, x0, prediction](const torch::Tensor& x, double t) {
    const size_t j = std::min<size_t>(static_cast<size_t>(std::floor(t)), sig.size() - 2);
    const double sigma = sig[j] + (sig[j + 1] - sig[j]) * (t - static_cast<double>(j));
    const double a = 1.0 / (1.0 + sigma * sigma);
    auto eps = (x - std::sqrt(a) * x0) / std::sqrt(1 - a);
    return prediction == PredictionType::kEpsilon ? eps : std::sqrt(a) * eps - std::sqrt(1 - a) * x0;
  };
}

TEST(Sampler, DdimRecoversKnownCleanSample) {
  NoiseSchedule schedule;
  auto x0 = torch::randn({1, 4, 8, 8}, at::detail::createCPUGenerator(3), torch::kFloat32) * 0.5;
  const auto& acp = schedule.alphas_cumprod();
  for (auto prediction : {PredictionType::kEpsilon, PredictionType::kVPrediction}) {
    const Denoiser oracle = Oracle(schedule, x0, prediction);
    auto noise = torch::randn({1, 4, 8, 8}, at::detail::createCPUGenerator(4), torch::kFloat32);
    auto ddim = MakeScheduler(SamplerKind::kDdim, schedule, 25, prediction, CheckpointOptions());
    auto x = noise;
    torch::Tensor pred_x0;
    const auto ts = Floats(ddim->timesteps());
    for (int64_t i = 0; i < ddim->num_calls(); ++i) {
      auto step = ddim->Step(oracle(x, ts[static_cast<size_t>(i)]), i, x);
      x = step.prev_sample;
      pred_x0 = step.pred_original_sample;
    }
    // An exact oracle makes every x0 prediction exact, and the loop equals RunScheduler().
    EXPECT_TRUE(AllClose(pred_x0, x0, 1e-4, 1e-4));
    auto again = MakeScheduler(SamplerKind::kDdim, schedule, 25, prediction, CheckpointOptions());
    EXPECT_TRUE(AllClose(RunScheduler(*again, noise, oracle), x, 0, 0));
    // The last step lands on alphas_cumprod[0] (set_alpha_to_one=False): x = sqrt(a0) x0 + sqrt(1-a0) eps.
    EXPECT_LT((x - acp[0].sqrt() * x0).abs().max().item<float>(), 0.2f);
  }
}

// Every sampler, both predictions, kohya's options: with an oracle denoiser
// the result is the clean sample (the final sigma is 0, or sigma_min for
// dpmsolver and alphas_cumprod[0] for PNDM). x0 stays inside [-1, 1] so the
// x0 clipping of DDIM and Heun changes nothing.
TEST(Sampler, EverySamplerRecoversKnownCleanSample) {
  NoiseSchedule schedule;
  auto x0 = torch::randn({1, 4, 8, 8}, at::detail::createCPUGenerator(5), torch::kFloat32).tanh() * 0.8;
  auto noise = torch::randn({1, 4, 8, 8}, at::detail::createCPUGenerator(6), torch::kFloat32);
  for (const std::string name : {"ddim", "pndm", "lms", "euler", "euler_a", "heun", "dpm_2", "dpm_2_a", "dpmsolver",
                                 "dpmsolver++", "dpmsingle"}) {
    for (auto prediction : {PredictionType::kEpsilon, PredictionType::kVPrediction}) {
      SCOPED_TRACE(name + (prediction == PredictionType::kEpsilon ? " eps" : " v"));
      auto gen = at::detail::createCPUGenerator(7);
      int64_t draws = 0;
      NoiseSource step_noise = [&](const torch::Tensor& like) {
        ++draws;
        return torch::randn(like.sizes(), gen, torch::kFloat32);
      };
      auto out = SampleLatents(*ParseSamplerKind(name), schedule, 20, prediction, noise,
                               Oracle(schedule, x0, prediction), step_noise);
      // PNDM and dpmsolver stop at sigma_min = 0.029: up to ~3 sigma_min of noise is left.
      const bool stops_at_sigma_min = name == "pndm" || name == "dpmsolver";
      EXPECT_LT((out - x0).abs().max().item<float>(), stops_at_sigma_min ? 0.12f : 0.06f);
      EXPECT_LT((out - x0).abs().mean().item<float>(), stops_at_sigma_min ? 0.03f : 0.01f);
      const bool ancestral = name == "euler_a" || name == "dpm_2_a";
      EXPECT_EQ(draws > 0, ancestral) << draws;
    }
  }
}

TEST(Sampler, AncestralSamplersFollowTheirNoise) {
  NoiseSchedule schedule;
  auto noise = torch::randn({1, 4, 8, 8}, at::detail::createCPUGenerator(8), torch::kFloat32);
  Denoiser model = [](const torch::Tensor& x, double t) { return 0.1 * x + std::sin(t / 100.0); };
  for (auto kind : {SamplerKind::kEulerAncestral, SamplerKind::kDpm2Ancestral}) {
    auto run = [&](uint64_t seed) {
      auto gen = at::detail::createCPUGenerator(seed);
      return SampleLatents(kind, schedule, 10, PredictionType::kEpsilon, noise, model,
                           [&](const torch::Tensor& like) { return torch::randn(like.sizes(), gen, torch::kFloat32); });
    };
    EXPECT_TRUE(AllClose(run(1), run(1), 0, 0));           // same generator, same image
    EXPECT_GT((run(1) - run(2)).abs().max().item<float>(), 1e-3f);  // another seed, another one
  }
}

TEST(Sampler, ClassifierFreeGuidanceCombinesHalves) {
  Denoiser model = [](const torch::Tensor& x, double) {
    auto halves = x.chunk(2, 0);
    return torch::cat({halves[0] * 0 + 1, halves[1] * 0 + 3});
  };
  auto guided = ClassifierFreeGuidance(model, 7.5);
  auto out = guided(torch::zeros({2, 4, 2, 2}), 10);
  EXPECT_EQ(out.size(0), 2);
  EXPECT_FLOAT_EQ(out[0][0][0][0].item<float>(), 1 + 7.5f * 2);
}

}  // namespace
}  // namespace lorad::diffusion
