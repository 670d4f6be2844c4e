// kohya's noise functions reproduced from the same seeds (train_reference noise/*).
#include <gtest/gtest.h>

#include "core/diffusion/noise.h"
#include "core/common/test_fixtures.h"

namespace lorad::diffusion {
namespace {

using testing::AllClose;
using testing::Get;

UniformSource Replay(std::vector<double> values) {
  auto state = std::make_shared<std::pair<std::vector<double>, size_t>>(std::move(values), 0);
  return [state]() {
    EXPECT_LT(state->second, state->first.size()) << "more python random draws than recorded";
    return state->second < state->first.size() ? state->first[state->second++] : 0.5;
  };
}

std::vector<double> PythonRandomDraws(const nlohmann::json& rng_calls) {
  std::vector<double> values;
  for (const auto& call : rng_calls) {
    if (call["call"] == "random.random") values.push_back(call["value"].get<double>());
  }
  return values;
}

class NoiseReference : public ::testing::Test {
 protected:
  void SetUp() override {
    file_ = testing::OpenFixture("train_reference.safetensors");
    ASSERT_NE(file_, nullptr);
    calls_ = testing::MetadataJson(*file_, "cases")["noise"]["calls"];
  }
  std::shared_ptr<io::SafetensorsFile> file_;
  nlohmann::json calls_;
};

TEST_F(NoiseReference, ApplyNoiseOffset) {
  auto latents = Get(*file_, "noise/latents");
  auto noise_in = Get(*file_, "noise/noise_in");
  int checked = 0;
  for (const auto& [name, call] : calls_.items()) {
    if (name.rfind("apply_noise_offset/", 0) != 0) continue;
    auto gen = at::detail::createCPUGenerator(call["seed"].get<uint64_t>());
    std::optional<double> adaptive;
    if (!call["adaptive_noise_scale"].is_null()) adaptive = call["adaptive_noise_scale"].get<double>();
    auto out = ApplyNoiseOffset(latents, noise_in, torch::tensor(call["noise_offset"].get<double>(), torch::kFloat32),
                                adaptive, gen);
    EXPECT_TRUE(AllClose(out, Get(*file_, "noise/" + name))) << name;
    ++checked;
  }
  EXPECT_EQ(checked, 3);
}

TEST_F(NoiseReference, PyramidNoiseWithInjectedPythonDraws) {
  int checked = 0;
  for (const auto& [name, call] : calls_.items()) {
    if (name.rfind("pyramid/", 0) != 0) continue;
    const std::string base = "noise/" + name + "/";
    auto noise = file_->Has(base + "noise_in") ? Get(*file_, base + "noise_in") : Get(*file_, "noise/noise_in");
    auto gen = at::detail::createCPUGenerator(call["seed"].get<uint64_t>());
    auto out = PyramidNoiseLike(noise, call["iterations"].get<int64_t>(), call["discount"].get<double>(), gen,
                                Replay(call["python_random_values"].get<std::vector<double>>()));
    EXPECT_TRUE(AllClose(noise, Get(*file_, base + "noise_after"))) << name;
    EXPECT_TRUE(AllClose(out, Get(*file_, base + "out"))) << name;
    ++checked;
  }
  EXPECT_EQ(checked, 3);
}

TEST_F(NoiseReference, NoisePipelineConfigurations) {
  auto latents = Get(*file_, "noise/latents");
  int checked = 0;
  for (const auto& [name, call] : calls_.items()) {
    if (name.rfind("pipeline/", 0) != 0) continue;
    const auto& a = call["args"];
    NoiseOptions o;
    if (!a["noise_offset"].is_null()) o.noise_offset = a["noise_offset"].get<double>();
    o.noise_offset_random_strength = a["noise_offset_random_strength"].get<bool>();
    if (!a["adaptive_noise_scale"].is_null()) o.adaptive_noise_scale = a["adaptive_noise_scale"].get<double>();
    if (!a["multires_noise_iterations"].is_null()) o.multires_noise_iterations = a["multires_noise_iterations"];
    o.multires_noise_discount = a["multires_noise_discount"].get<double>();
    if (!a["min_timestep"].is_null()) o.min_timestep = a["min_timestep"].get<int64_t>();
    if (!a["max_timestep"].is_null()) o.max_timestep = a["max_timestep"].get<int64_t>();
    if (!a["ip_noise_gamma"].is_null()) o.ip_noise_gamma = a["ip_noise_gamma"].get<double>();
    o.ip_noise_gamma_random_strength = a["ip_noise_gamma_random_strength"].get<bool>();
    NoiseSchedule schedule({.zero_terminal_snr = call["scheduler"] == "zero_terminal_snr"});
    ASSERT_TRUE(o.Validate(schedule.num_train_timesteps()).ok()) << name;
    auto gen = at::detail::createCPUGenerator(call["seed"].get<uint64_t>());
    auto out = SampleNoisyLatents(latents, schedule, o, gen, Replay(PythonRandomDraws(call["rng_calls"])));
    const std::string base = "noise/" + name + "/";
    EXPECT_TRUE(torch::equal(out.timesteps, Get(*file_, base + "timesteps"))) << name << " " << out.timesteps;
    EXPECT_TRUE(AllClose(out.noise, Get(*file_, base + "noise"))) << name;
    EXPECT_TRUE(AllClose(out.noisy_latents, Get(*file_, base + "noisy_latents"))) << name;
    EXPECT_TRUE(AllClose(schedule.Velocity(latents, out.noise, out.timesteps), Get(*file_, base + "target_v")))
        << name;
    ++checked;
  }
  EXPECT_EQ(checked, 9);
}

TEST(NoiseOptions, RejectsBadRanges) {
  NoiseOptions o;
  o.min_timestep = 900;
  o.max_timestep = 100;
  auto s = o.Validate(1000);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("min_timestep"), std::string::npos);
  o = NoiseOptions();
  o.max_timestep = 1001;
  EXPECT_FALSE(o.Validate(1000).ok());
  o = NoiseOptions();
  o.multires_noise_iterations = -1;
  EXPECT_FALSE(o.Validate(1000).ok());
}

}  // namespace
}  // namespace lorad::diffusion
