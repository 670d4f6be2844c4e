// Previews on the tiny SDXL fixture (CPU): every kohya sampler renders through
// the real model and is recorded in the sample events; a preview's LoRA
// strength is the network multiplier for that preview only.
#include "core/train/previews.h"

#include <fcntl.h>
#include <unistd.h>

#include <fstream>
#include <iterator>

#include <gtest/gtest.h>

#include "core/diffusion/sampler.h"
#include "core/networks/network_config.h"
#include "core/train/events_observer.h"
#include "core/train/test_support.h"
#include "core/train/trainer.h"
#include "core/train/training_test_helpers.h"
#include "proto/event_stream.h"

namespace lorad::train {
namespace {

using testing::FreshDir;
using testing::TinySdxlConfig;

struct Recorder : TrainObserver {
  void OnSample(const SampleReport& r) override { reports.push_back(r); }
  std::vector<SampleReport> reports;
};

std::string FileBytes(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// The tiny SDXL model with an applied LoRA whose weights are all visibly non-zero
// (a fresh LoRA's up weights are zero, so it would not change a preview).
class PreviewTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = FreshDir(::testing::UnitTest::GetInstance()->current_test_info()->name());
    config_ = TinySdxlConfig(dir_);
    auto model = ModelBundle::Load(config_, ModelBundleOptions{});
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = std::move(model).value();
    auto net_config = networks::ParseNetworkConfig(networks::NetworkInputOf(config_));
    ASSERT_TRUE(net_config.ok()) << net_config.status();
    auto targets = model_->NetworkTargets(true, false, false);
    ASSERT_TRUE(targets.ok()) << targets.status();
    auto network = networks::LoraNetwork::Create(*net_config, *targets, at::detail::createCPUGenerator(1));
    ASSERT_TRUE(network.ok()) << network.status();
    network_ = std::move(network).value();
    torch::NoGradGuard no_grad;
    auto gen = at::detail::createCPUGenerator(2);
    for (auto& p : network_->UnetParameters()) p.normal_(0.0, 0.3, gen);
    network_->Apply();
    network_->Train(true);
  }

  absl::StatusOr<std::vector<std::filesystem::path>> Render(const std::string& prompt_text,
                                                            const PreviewSettings& settings, int64_t step,
                                                            TrainObserver& observer) {
    auto prompts = ParseSamplePrompts(prompt_text);
    if (!prompts.ok()) return prompts.status();
    return RenderPreviews(*prompts, settings, *model_, *network_, schedule_, CheckpointNames(dir_, "tiny"), step,
                          observer);
  }

  std::filesystem::path dir_;
  TrainConfig config_;
  std::unique_ptr<ModelBundle> model_;
  std::unique_ptr<networks::LoraNetwork> network_;
  diffusion::NoiseSchedule schedule_;
};

TEST_F(PreviewTest, LoraStrengthIsTheMultiplierForThatPreviewOnly) {
  const std::string p = "a red square on green --n blurry --w 64 --h 64 --s 3 --d 5 --l 4";
  PreviewSettings settings;
  settings.default_sampler = "euler";
  network_->SetMultiplier(0.7);  // whatever the network was at, it is again after
  Recorder recorder;
  auto paths = Render(p + " --lora_strength 0\n" + p + "\n" + p + " --lora_strength 1\n" + p +
                          " --lora_strength 0.5\n",
                      settings, 10, recorder);
  ASSERT_TRUE(paths.ok()) << paths.status();
  ASSERT_EQ(paths->size(), 4u);
  EXPECT_DOUBLE_EQ(network_->modules().front().adapter->multiplier(), 0.7);
  for (const auto& m : network_->modules()) ASSERT_DOUBLE_EQ(m.adapter->multiplier(), 0.7);
  EXPECT_TRUE(network_->modules().front().adapter->is_training());

  // The base model alone: the network removed.
  network_->Remove();
  Recorder base_recorder;
  auto base = Render(p + "\n", settings, 11, base_recorder);
  ASSERT_TRUE(base.ok()) << base.status();
  network_->Apply();

  const std::string at0 = FileBytes((*paths)[0]), at_default = FileBytes((*paths)[1]);
  const std::string at1 = FileBytes((*paths)[2]), at_half = FileBytes((*paths)[3]);
  ASSERT_FALSE(at0.empty());
  EXPECT_EQ(at0, FileBytes(base->front()));  // strength 0 = the base model
  EXPECT_EQ(at1, at_default);                // strength 1 = the default preview
  EXPECT_NE(at0, at1);                       // and the LoRA does change it
  EXPECT_NE(at_half, at0);
  EXPECT_NE(at_half, at1);

  ASSERT_EQ(recorder.reports.size(), 4u);
  EXPECT_DOUBLE_EQ(recorder.reports[0].lora_strength, 0.0);
  EXPECT_DOUBLE_EQ(recorder.reports[1].lora_strength, 1.0);  // settings.default_lora_strength
  EXPECT_DOUBLE_EQ(recorder.reports[3].lora_strength, 0.5);

  // The config default (sample_lora_strength) applies to prompts without the option.
  settings.default_lora_strength = 0.0;
  Recorder zero_recorder;
  auto by_default = Render(p + "\n", settings, 12, zero_recorder);
  ASSERT_TRUE(by_default.ok()) << by_default.status();
  EXPECT_EQ(FileBytes(by_default->front()), at0);
  EXPECT_DOUBLE_EQ(zero_recorder.reports.front().lora_strength, 0.0);
}

// Every name kohya accepts renders on the SDXL fixture, per prompt (--ss) or
// from the config default, and the sampler is recorded in the sample event.
TEST_F(PreviewTest, EveryKohyaSamplerRendersAndIsRecorded) {
  std::string text;
  for (const std::string& name : diffusion::SamplerNames()) {
    text += "a blue circle --w 64 --h 64 --s 4 --d 3 --ss " + name + "\n";
  }
  text += "a blue circle --w 64 --h 64 --s 4 --d 3\n";  // the config's sample_sampler
  PreviewSettings settings;
  settings.default_sampler = "dpm_2_a";
  const auto events_path = dir_ / "events.bin";
  int fd = ::open(events_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  ASSERT_GE(fd, 0);
  absl::StatusOr<std::vector<std::filesystem::path>> paths;
  {
    EventsObserver events(fd);
    paths = Render(text, settings, 20, events);
  }
  ::close(fd);
  ASSERT_TRUE(paths.ok()) << paths.status();
  const size_t n = diffusion::SamplerNames().size();
  ASSERT_EQ(paths->size(), n + 1);

  std::map<std::string, std::string> image;  // sampler name -> PNG bytes
  for (size_t i = 0; i < n; ++i) image[diffusion::SamplerNames()[i]] = FileBytes((*paths)[i]);
  for (const auto& [name, bytes] : image) EXPECT_FALSE(bytes.empty()) << name;
  // The k_ names are aliases; the samplers themselves differ.
  EXPECT_EQ(image["k_euler_a"], image["euler_a"]);
  EXPECT_EQ(image["k_dpm_2"], image["dpm_2"]);
  EXPECT_EQ(FileBytes((*paths)[n]), image["dpm_2_a"]);
  EXPECT_NE(image["euler"], image["euler_a"]);
  EXPECT_NE(image["euler"], image["heun"]);
  EXPECT_NE(image["ddim"], image["dpmsolver++"]);

  int fd_in = ::open(events_path.c_str(), O_RDONLY);
  ASSERT_GE(fd_in, 0);
  events::EventReader reader(fd_in);
  std::vector<lorad::v1::Sample> samples;
  while (true) {
    auto next = reader.Next();
    if (!next.ok() || !next->has_value()) break;
    if ((*next)->has_sample()) samples.push_back((*next)->sample());
  }
  ::close(fd_in);
  ASSERT_EQ(samples.size(), n + 1);
  for (size_t i = 0; i < n; ++i) EXPECT_EQ(samples[i].sampler(), diffusion::SamplerNames()[i]);
  EXPECT_EQ(samples[n].sampler(), "dpm_2_a");
  EXPECT_DOUBLE_EQ(samples[n].lora_strength(), 1.0);
}

TEST(PreviewSamplers, UnknownNamesAreRefusedWithTheirSource) {
  auto prompts = ParseSamplePrompts("a cat\na dog --ss euler_a\na fox --ss ddpm\n");
  ASSERT_TRUE(prompts.ok());
  EXPECT_TRUE(CheckPreviewSamplers("k_dpm_2", {(*prompts)[0], (*prompts)[1]}).ok());
  auto bad_line = CheckPreviewSamplers("ddim", *prompts);
  ASSERT_FALSE(bad_line.ok());
  EXPECT_EQ(bad_line.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad_line.message().find("line 3"), std::string::npos) << bad_line;
  EXPECT_NE(bad_line.message().find("'ddpm'"), std::string::npos) << bad_line;
  EXPECT_NE(bad_line.message().find("dpmsingle"), std::string::npos) << bad_line;
  auto bad_key = CheckPreviewSamplers("unipc", {});
  ASSERT_FALSE(bad_key.ok());
  EXPECT_NE(bad_key.message().find("sample_sampler"), std::string::npos) << bad_key;
  EXPECT_NE(bad_key.message().find("euler_a"), std::string::npos) << bad_key;
}

// A run refuses an unknown sample_sampler before loading the model (kohya's
// argparse refuses it too), instead of sampling with something else.
TEST(PreviewSamplers, TrainRefusesAnUnknownSampleSampler) {
  const auto dir = FreshDir("bad_sampler");
  TrainConfig config = TinySdxlConfig(dir);
  config.sample_sampler = "ddpm";
  testing::MemoryBatchSource source(testing::MakeShapesDataset(4, 64), 4, 1);
  TrainInputs inputs{&source, {}, {}};
  auto result = Train(config, inputs, nullptr);
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(result.status().message().find("sample_sampler"), std::string::npos) << result.status();
}

}  // namespace
}  // namespace lorad::train
