// The training loop on the tiny SDXL fixture (CPU).
#include "core/train/trainer.h"

#include <fcntl.h>
#include <unistd.h>

#include <fstream>

#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "core/common/fixtures.h"
#include "core/io/safetensors.h"
#include "core/networks/lora_network.h"
#include "core/train/events_observer.h"
#include "core/train/model_bundle.h"
#include "core/train/test_support.h"
#include "core/train/training_test_helpers.h"
#include "proto/event_stream.h"
#include "core/base/testing/scoped_temp_dir.h"

namespace lorad::train {
namespace {

using testing::CaptionedImages;
using testing::MemoryBatchSource;
using testing::CancelAt;
using testing::ExpectBitIdentical;
using testing::FreshDir;
using testing::ReadLora;
using testing::LossWithLora;
using testing::TinySdxlConfig;

// Decodes every event written to a file.
std::vector<lorad::v1::Event> ReadEvents(const std::filesystem::path& path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  events::EventReader reader(fd);
  std::vector<lorad::v1::Event> out;
  while (true) {
    auto next = reader.Next();
    if (!next.ok() || !next->has_value()) break;
    out.push_back(**next);
  }
  ::close(fd);
  return out;
}

TEST(TrainerTest, EndToEndTinySdxlLossDropsAndLoraLoadsBack) {
  const auto dir = FreshDir("e2e");
  CaptionedImages data = testing::MakeShapesDataset(16, 64);
  MemoryBatchSource source(data, 4, 1234);
  TrainConfig config = TinySdxlConfig(dir);
  config.cache_text_encoder_outputs = true;
  // LoCon (3x3 convs too): a random tiny U-Net needs the ResBlocks' capacity to
  // fit in 60 steps (attention-only LoRA reaches about a 20% drop).
  config.network_dim = 16;
  config.network_alpha = 16;
  config.network_args = {"conv_dim=8", "conv_alpha=8"};
  config.learning_rate = 3e-3;
  config.save_every_n_steps = 30;
  config.sample_every_n_steps = 30;
  config.sample_prompts = (dir / "prompts.txt").string();
  std::ofstream(config.sample_prompts) << "# preview\na red square on green --n blurry --w 64 --h 64 --s 4 --d 5\n";
  const auto events_path = dir / "events.bin";
  int fd = ::open(events_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  ASSERT_GE(fd, 0);
  EventsObserver events(fd);
  TrainInputs inputs{&source, {}, {}};
  auto result = Train(config, inputs, &events);
  ::close(fd);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->steps, 60);
  EXPECT_EQ(result->epochs, 15);  // 4 batches per epoch
  ASSERT_TRUE(std::filesystem::exists(result->final_lora));
  EXPECT_TRUE(std::filesystem::exists(dir / "tiny-step00000030.safetensors"));
  ASSERT_EQ(result->samples.size(), 2u);  // step 30 and the end
  EXPECT_TRUE(std::filesystem::exists(result->samples[0]));

  const double before = LossWithLora(config, data, "");
  const double after = LossWithLora(config, data, result->final_lora);
  const double drop = 1.0 - after / before;
  std::printf("[ e2e ] tiny SDXL, 16 images, 60 steps: training-set loss at fixed t/noise %.5f -> %.5f (%.1f%% drop)\n",
              before, after, 100 * drop);
  EXPECT_GE(drop, 0.30);

  io::Metadata metadata;
  auto tensors = ReadLora(result->final_lora, &metadata);
  ASSERT_FALSE(tensors.empty());
  for (const auto& [key, t] : tensors) {
    EXPECT_TRUE(key.rfind("lora_unet_", 0) == 0) << key;
    EXPECT_TRUE(absl::EndsWith(key, ".lora_down.weight") || absl::EndsWith(key, ".lora_up.weight") ||
                absl::EndsWith(key, ".alpha"))
        << key;
  }
  EXPECT_TRUE(tensors.count("lora_unet_input_blocks_4_1_proj_in.lora_down.weight"));
  EXPECT_EQ(metadata["ss_network_dim"], "16");
  EXPECT_NE(metadata["ss_network_args"].find("conv_dim"), std::string::npos);
  EXPECT_EQ(metadata["ss_base_model_version"], "sdxl_base_v1-0");
  EXPECT_EQ(metadata["ss_steps"], "60");
  EXPECT_EQ(metadata["ss_seed"], "1234");
  EXPECT_EQ(metadata["modelspec.architecture"], "stable-diffusion-xl-v1-base/lora");
  EXPECT_FALSE(metadata["sshs_model_hash"].empty());
  EXPECT_NE(metadata["ss_optimizer"].find("AdamW"), std::string::npos);

  auto all = ReadEvents(events_path);
  ASSERT_GE(all.size(), 3u);
  EXPECT_TRUE(all.front().has_job_started());
  EXPECT_EQ(all.front().job_started().total_steps(), 60);
  EXPECT_EQ(all.front().job_started().model_arch(), "sdxl");
  int progress = 0, loras = 0, samples = 0;
  for (const auto& e : all) {
    progress += e.has_progress();
    loras += e.has_checkpoint() && e.checkpoint().kind() == lorad::v1::ARTIFACT_KIND_LORA;
    samples += e.has_sample();
  }
  EXPECT_EQ(progress, 60);
  EXPECT_EQ(loras, 2);
  EXPECT_EQ(samples, 2);
  ASSERT_TRUE(all.back().has_finished());
  EXPECT_EQ(all.back().finished().status(), lorad::v1::Finished::SUCCEEDED);
}

TEST(TrainerTest, InterruptedAt30AndResumedEqualsUninterrupted60BitForBit) {
  CaptionedImages data = testing::MakeShapesDataset(8, 64);
  const auto dir_a = FreshDir("resume_a");
  const auto dir_b = FreshDir("resume_b");
  TrainConfig config = TinySdxlConfig(dir_a);
  config.train_batch_size = 3;  // a short last batch per epoch
  config.gradient_accumulation_steps = 2;
  config.network_dropout = 0.1;  // dropout draws must resume too
  config.noise_offset = 0.05;
  config.lr_scheduler = "cosine";
  config.lr_warmup_steps = 5;
  {
    MemoryBatchSource source(data, 3, 7);
    auto full = Train(config, {&source, {}, {}});
    ASSERT_TRUE(full.ok()) << full.status();
    EXPECT_EQ(full->steps, 60);
  }
  config.output_dir = dir_b.string();
  CancellationToken token;
  CancelAt cancel_at(&token, 30);
  {
    MemoryBatchSource source(data, 3, 7);
    auto first = Train(config, {&source, {}, {}}, &cancel_at, &token);
    ASSERT_EQ(first.status().code(), absl::StatusCode::kCancelled) << first.status();
    EXPECT_NE(first.status().message().find("state saved"), std::string::npos);
  }
  config.resume = (dir_b / "tiny-state").string();
  {
    MemoryBatchSource source(data, 3, 7);
    auto second = Train(config, {&source, {}, {}});
    ASSERT_TRUE(second.ok()) << second.status();
    EXPECT_EQ(second->steps, 60);
  }
  ExpectBitIdentical(ReadLora(dir_a / "tiny.safetensors"), ReadLora(dir_b / "tiny.safetensors"));
}

TEST(TrainerTest, EveryNetworkTypeTrainsAndRoundTrips) {
  CaptionedImages data = testing::MakeShapesDataset(4, 64);
  struct Case {
    std::string name, module;
    std::vector<std::string> args;
  };
  const std::vector<Case> cases = {
      {"lora", "networks.lora", {}},
      {"locon", "networks.lora", {"conv_dim=4", "conv_alpha=2"}},
      {"lycoris_locon", "lycoris.kohya", {"algo=locon", "conv_dim=4", "conv_alpha=2"}},
      {"dora", "lycoris.kohya", {"algo=lora", "dora_wd=True"}},
      {"loha", "lycoris.kohya", {"algo=loha", "conv_dim=4", "conv_alpha=2"}},
      {"lokr", "lycoris.kohya", {"algo=lokr", "factor=4"}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const auto dir = FreshDir("net_" + c.name);
    TrainConfig config = TinySdxlConfig(dir);
    config.network_module = c.module;
    config.network_args = c.args;
    config.network_dim = 4;
    config.network_alpha = 4;
    config.max_train_steps = 12;
    config.network_train_unet_only = c.name != "lora";  // plain LoRA also trains both text encoders
    config.text_encoder_lr = 1e-3;
    MemoryBatchSource source(data, 4, 3);
    auto result = Train(config, {&source, {}, {}});
    ASSERT_TRUE(result.ok()) << result.status();
    const double before = LossWithLora(config, data, "");
    const double after = LossWithLora(config, data, result->final_lora);
    std::printf("[ net ] %-14s loss %.5f -> %.5f\n", c.name.c_str(), before, after);
    EXPECT_LT(after, before);
    if (c.name == "lora") {
      auto tensors = ReadLora(result->final_lora);
      EXPECT_TRUE(std::any_of(tensors.begin(), tensors.end(), [](auto& kv) { return kv.first.rfind("lora_te1_", 0) == 0; }));
      EXPECT_TRUE(std::any_of(tensors.begin(), tensors.end(), [](auto& kv) { return kv.first.rfind("lora_te2_", 0) == 0; }));
    }
  }
}

TEST(TrainerTest, SameSeedSameLoraAndFp16ScalerSkipsInfSteps) {
  CaptionedImages data = testing::MakeShapesDataset(4, 64);
  const auto dir = FreshDir("fp16");
  TrainConfig config = TinySdxlConfig(dir);
  config.max_train_steps = 30;
  config.mixed_precision = "fp16";
  TrainOptions options;
  options.loss_scale_init = 1e39;  // the scaled loss overflows float32: the first steps must be skipped
  MemoryBatchSource source(data, 4, 3);
  auto run1 = Train(config, {&source, {}, {}}, nullptr, nullptr, options);
  ASSERT_TRUE(run1.ok()) << run1.status();
  std::printf("[ fp16 ] loss scaler skipped %lld of 30 steps\n", static_cast<long long>(run1->skipped_steps));
  EXPECT_GE(run1->skipped_steps, 2);
  EXPECT_LT(run1->skipped_steps, 30);
  auto first = ReadLora(run1->final_lora);
  // Some up weights moved (later steps were taken).
  bool moved = false;
  for (auto& [k, v] : first) moved |= absl::EndsWith(k, "lora_up.weight") && v.abs().sum().item<double>() > 0;
  EXPECT_TRUE(moved);
  auto run2 = Train(config, {&source, {}, {}}, nullptr, nullptr, options);
  ASSERT_TRUE(run2.ok());
  ExpectBitIdentical(first, ReadLora(run2->final_lora));
}

TEST(TrainerTest, DivergenceStopsWithReasonAndKeepsLastGoodLora) {
  CaptionedImages data = testing::MakeShapesDataset(4, 64);
  const auto dir = FreshDir("nan");
  TrainConfig config = TinySdxlConfig(dir);
  config.learning_rate = 1e30;
  config.max_grad_norm = 0;
  config.save_every_n_steps = 1;
  config.max_train_steps = 20;
  MemoryBatchSource source(data, 4, 3);
  auto result = Train(config, {&source, {}, {}});
  ASSERT_EQ(result.status().code(), absl::StatusCode::kDataLoss) << result.status();
  EXPECT_NE(result.status().message().find("diverged"), std::string::npos) << result.status();
  EXPECT_NE(result.status().message().find("last good LoRA"), std::string::npos) << result.status();
}

TEST(TrainerTest, ClearErrors) {
  CaptionedImages data = testing::MakeShapesDataset(4, 64);
  MemoryBatchSource source(data, 4, 3);
  TrainConfig config = TinySdxlConfig(FreshDir("errors"));
  config.pretrained_model_name_or_path = "/nonexistent/model.safetensors";
  auto missing = Train(config, {&source, {}, {}});
  ASSERT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("/nonexistent/model.safetensors"), std::string::npos);

  config = TinySdxlConfig(FreshDir("errors"));
  config.optimizer_type = "SGD9000";
  auto bad_optimizer = Train(config, {&source, {}, {}});
  ASSERT_FALSE(bad_optimizer.ok());
  EXPECT_NE(bad_optimizer.status().message().find("optimizer_type"), std::string::npos);

  config = TinySdxlConfig(FreshDir("errors"));
  config.resume = "/nonexistent/state";
  auto bad_resume = Train(config, {&source, {}, {}});
  ASSERT_EQ(bad_resume.status().code(), absl::StatusCode::kNotFound);
}

// Records every step report and warning of a run.
struct Recorder : TrainObserver {
  void OnStep(const StepReport& r) override { steps.push_back(r); }
  void OnWarning(const std::string& code, const std::string& message) override {
    warnings.emplace_back(code, message);
  }
  std::vector<StepReport> steps;
  std::vector<std::pair<std::string, std::string>> warnings;
};

double GroupLrOf(const StepReport& r, const std::string& group) {
  for (const GroupLr& g : r.lrs) {
    if (g.group == group) return g.lr;
  }
  ADD_FAILURE() << "no lr group " << group;
  return std::nan("");
}

TEST(TrainerTest, LoraPlusGivesUpWeightsRatioTimesTheScheduledLr) {
  CaptionedImages data = testing::MakeShapesDataset(4, 64);
  MemoryBatchSource source(data, 4, 3);
  TrainConfig config = TinySdxlConfig(FreshDir("loraplus"));
  config.max_train_steps = 4;
  config.network_train_unet_only = false;
  config.learning_rate = 1e-3;
  config.text_encoder_lr = 1e-4;
  config.lr_scheduler = "cosine";
  config.lr_warmup_steps = 2;
  config.network_args = {"loraplus_lr_ratio=16", "loraplus_text_encoder_lr_ratio=4"};
  Recorder recorder;
  auto result = Train(config, {&source, {}, {}}, &recorder);
  ASSERT_TRUE(result.ok()) << result.status();
  ASSERT_EQ(recorder.steps.size(), 4u);
  for (const StepReport& r : recorder.steps) {
    SCOPED_TRACE(r.step);
    ASSERT_EQ(r.lrs.size(), 4u);
    EXPECT_EQ(r.lrs[0].group, "text_encoder");
    EXPECT_EQ(r.lrs[1].group, "text_encoder_plus");
    EXPECT_EQ(r.lrs[2].group, "unet");
    EXPECT_EQ(r.lrs[3].group, "unet_plus");
    const double unet = GroupLrOf(r, "unet");
    const double te = GroupLrOf(r, "text_encoder");
    EXPECT_NEAR(GroupLrOf(r, "unet_plus"), 16 * unet, 1e-12);
    EXPECT_NEAR(GroupLrOf(r, "text_encoder_plus"), 4 * te, 1e-12);
    if (r.step > 1) {  // the first warmup step runs at lr 0
      EXPECT_GT(unet, 0);
      EXPECT_NEAR(unet / te, 10.0, 1e-9);
    }
  }
  // The scheduler moved the lrs (warmup then cosine), the ratio held throughout.
  EXPECT_LT(GroupLrOf(recorder.steps[0], "unet"), 1e-3);
  EXPECT_NE(GroupLrOf(recorder.steps[0], "unet_plus"), GroupLrOf(recorder.steps[1], "unet_plus"));

  // Without LoRA+ the groups stay whole.
  config.output_dir = FreshDir("loraplus_off").string();
  config.network_args = {};
  Recorder plain;
  ASSERT_TRUE(Train(config, {&source, {}, {}}, &plain).ok());
  ASSERT_FALSE(plain.steps.empty());
  ASSERT_EQ(plain.steps[0].lrs.size(), 2u);
  EXPECT_EQ(plain.steps[0].lrs[1].group, "unet");
}

// Largest ||scale * up @ down|| over the modules of a saved LoRA.
double MaxDeltaNorm(const std::map<std::string, torch::Tensor>& lora) {
  double max_norm = 0;
  for (const auto& [key, down] : lora) {
    if (!absl::EndsWith(key, ".lora_down.weight")) continue;
    const std::string name = key.substr(0, key.size() - std::string(".lora_down.weight").size());
    const torch::Tensor up = lora.at(name + ".lora_up.weight").to(torch::kFloat64);
    const double scale = lora.at(name + ".alpha").item<double>() / static_cast<double>(down.size(0));
    const torch::Tensor delta = up.flatten(1).matmul(down.to(torch::kFloat64).flatten(1)) * scale;
    max_norm = std::max(max_norm, delta.norm().item<double>());
  }
  return max_norm;
}

TEST(TrainerTest, ScaleWeightNormsCapsEveryModuleAndReportsIt) {
  CaptionedImages data = testing::MakeShapesDataset(4, 64);
  MemoryBatchSource source(data, 4, 3);
  TrainConfig config = TinySdxlConfig(FreshDir("maxnorm_off"));
  config.max_train_steps = 6;
  config.network_args = {"conv_dim=4", "conv_alpha=4"};  // LoCon modules too
  auto free_run = Train(config, {&source, {}, {}});
  ASSERT_TRUE(free_run.ok()) << free_run.status();
  const double free_max = MaxDeltaNorm(ReadLora(free_run->final_lora));
  const double limit = free_max / 4;  // well below what training reaches unconstrained
  ASSERT_GT(limit, 0);

  config.output_dir = FreshDir("maxnorm_on").string();
  config.scale_weight_norms = limit;
  Recorder recorder;
  auto capped = Train(config, {&source, {}, {}}, &recorder);
  ASSERT_TRUE(capped.ok()) << capped.status();
  const double capped_max = MaxDeltaNorm(ReadLora(capped->final_lora));
  std::printf("[ max-norm ] free max delta norm %.5f, limit %.5f, capped %.5f\n", free_max, limit, capped_max);
  EXPECT_LE(capped_max, limit * (1 + 1e-5));
  EXPECT_GT(capped_max, limit * 0.5);
  ASSERT_EQ(recorder.steps.size(), 6u);
  int64_t scaled = 0;
  for (const StepReport& r : recorder.steps) {
    ASSERT_TRUE(r.max_norm.has_value());
    scaled += r.max_norm->keys_scaled;
    EXPECT_LE(r.max_norm->max_key_norm, limit * (1 + 1e-6));
    EXPECT_LE(r.max_norm->average_key_norm, r.max_norm->max_key_norm + 1e-12);
  }
  EXPECT_GT(scaled, 0);
  EXPECT_NEAR(recorder.steps.back().max_norm->max_key_norm, capped_max, limit * 1e-4);
}

bool HasKeyPrefix(const std::map<std::string, torch::Tensor>& tensors, const std::string& prefix) {
  return std::any_of(tensors.begin(), tensors.end(), [&](auto& kv) { return kv.first.rfind(prefix, 0) == 0; });
}

// kohya drops parameter groups whose lr is 0 ("NO LR skipping!"): with
// text_encoder_lr = 0 and the text encoder not frozen, CAME, Adafactor and
// AdamW train the U-Net alone, and no text-encoder module is saved. A continued
// LoRA keeps its text-encoder modules as loaded.
TEST(TrainerTest, ZeroLearningRateGroupsAreDroppedAsKohyaDoes) {
  CaptionedImages data = testing::MakeShapesDataset(4, 64);
  std::filesystem::path full_lora;
  {
    TrainConfig config = TinySdxlConfig(FreshDir("te_lr_seed"));
    config.max_train_steps = 2;
    config.network_train_unet_only = false;
    config.text_encoder_lr = 1e-3;
    MemoryBatchSource source(data, 4, 3);
    auto result = Train(config, {&source, {}, {}});
    ASSERT_TRUE(result.ok()) << result.status();
    full_lora = result->final_lora;
    ASSERT_TRUE(HasKeyPrefix(ReadLora(full_lora), "lora_te1_"));
  }
  for (const std::string optimizer : {"AdamW", "CAME", "Adafactor"}) {
    SCOPED_TRACE(optimizer);
    TrainConfig config = TinySdxlConfig(FreshDir("te_lr_zero_" + optimizer));
    config.max_train_steps = 3;
    config.network_train_unet_only = false;
    config.text_encoder_lr = 0;
    config.unet_lr = 1e-4;
    config.optimizer_type = optimizer;
    if (optimizer == "Adafactor") config.optimizer_args = {"relative_step=False", "scale_parameter=False"};
    MemoryBatchSource source(data, 4, 3);
    Recorder recorder;
    auto result = Train(config, {&source, {}, {}}, &recorder);
    ASSERT_TRUE(result.ok()) << result.status();
    ASSERT_EQ(recorder.steps.size(), 3u);
    ASSERT_EQ(recorder.steps[0].lrs.size(), 1u);
    EXPECT_EQ(recorder.steps[0].lrs[0].group, "unet");
    EXPECT_TRUE(std::any_of(recorder.warnings.begin(), recorder.warnings.end(),
                            [](const auto& w) { return w.second.find("text_encoder_lr is 0") != std::string::npos; }));
    auto tensors = ReadLora(result->final_lora);
    EXPECT_FALSE(HasKeyPrefix(tensors, "lora_te")) << "text-encoder modules were saved";
    EXPECT_TRUE(HasKeyPrefix(tensors, "lora_unet_"));
  }
  {
    // Continued from a LoRA with text-encoder modules: they are kept, unchanged.
    TrainConfig config = TinySdxlConfig(FreshDir("te_lr_zero_continued"));
    config.max_train_steps = 2;
    config.network_train_unet_only = false;
    config.text_encoder_lr = 0;
    config.network_weights = full_lora.string();
    MemoryBatchSource source(data, 4, 3);
    auto result = Train(config, {&source, {}, {}});
    ASSERT_TRUE(result.ok()) << result.status();
    auto before = ReadLora(full_lora), after = ReadLora(result->final_lora);
    int64_t te_keys = 0;
    for (const auto& [key, value] : before) {
      if (key.rfind("lora_te", 0) != 0) continue;
      ++te_keys;
      ASSERT_TRUE(after.count(key)) << key;
      EXPECT_TRUE(torch::equal(after.at(key), value)) << key;
    }
    EXPECT_GT(te_keys, 0);
  }
  {
    TrainConfig config = TinySdxlConfig(FreshDir("all_lr_zero"));
    config.learning_rate = 0;
    MemoryBatchSource source(data, 4, 3);
    auto result = Train(config, {&source, {}, {}});
    ASSERT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument) << result.status();
    EXPECT_NE(result.status().message().find("nothing to train"), std::string::npos) << result.status();
  }
}

// A v-prediction checkpoint (NoobAI-XL v-pred carries a `v_pred` tensor, some
// a `ztsnr` one) trains with v_parameterization and zero_terminal_snr, says so,
// and records it in the LoRA; v_parameterization = false on it is refused.
TEST(TrainerTest, VPredictionCheckpointSetsVParameterization) {
  auto fixture = io::SafetensorsFile::Open(lorad::FixturePath("tiny_sdxl.safetensors"));
  ASSERT_TRUE(fixture.ok()) << fixture.status();
  io::NamedTensors tensors;
  for (const std::string& name : (*fixture)->Names()) tensors.emplace_back(name, *(*fixture)->Get(name));
  tensors.emplace_back("v_pred", torch::empty({0}));
  tensors.emplace_back("ztsnr", torch::empty({0}));
  io::Metadata metadata = (*fixture)->metadata();
  metadata["modelspec.title"] = "NoobAI-XL V-Pred (tiny test copy)";
  const auto dir = FreshDir("vpred");
  const std::filesystem::path checkpoint = dir / "vpred.safetensors";
  ASSERT_TRUE(io::WriteSafetensors(checkpoint, tensors, metadata).ok());

  CaptionedImages data = testing::MakeShapesDataset(4, 64);
  MemoryBatchSource source(data, 4, 3);
  TrainConfig config = TinySdxlConfig(dir / "out");
  config.pretrained_model_name_or_path = checkpoint.string();
  config.max_train_steps = 2;
  Recorder recorder;
  auto result = Train(config, {&source, {}, {}}, &recorder);
  ASSERT_TRUE(result.ok()) << result.status();
  auto warned = [&](const std::string& text) {
    return std::any_of(recorder.warnings.begin(), recorder.warnings.end(),
                       [&](const auto& w) { return w.second.find(text) != std::string::npos; });
  };
  EXPECT_TRUE(warned("v_parameterization = true"));
  EXPECT_TRUE(warned("zero_terminal_snr = true"));
  io::Metadata lora_metadata;
  ReadLora(result->final_lora, &lora_metadata);
  EXPECT_EQ(lora_metadata["ss_v_parameterization"], "True");
  EXPECT_EQ(lora_metadata["ss_zero_terminal_snr"], "True");
  EXPECT_EQ(lora_metadata["modelspec.prediction_type"], "v");

  config.output_dir = (dir / "refused").string();
  config.explicitly_set["v_parameterization"] = "false";
  auto refused = Train(config, {&source, {}, {}});
  ASSERT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument) << refused.status();
  EXPECT_NE(refused.status().message().find("v_pred"), std::string::npos) << refused.status();
}

// LyCORIS applies max-norm to every algorithm (apply_max_norm of LoCon, LoHa,
// LoKr; DoRA through LoCon): LoHa, LoKr and DoRA train under a tight limit and
// every step's pass keeps every module at or below it.
TEST(TrainerTest, ScaleWeightNormsCapsLohaLokrAndDora) {
  CaptionedImages data = testing::MakeShapesDataset(4, 64);
  MemoryBatchSource source(data, 4, 3);
  for (const std::vector<std::string>& args : std::vector<std::vector<std::string>>{
           {"algo=loha"}, {"algo=lokr", "factor=4"}, {"algo=locon", "dora_wd=True"}}) {
    SCOPED_TRACE(args[0]);
    TrainConfig config = TinySdxlConfig(FreshDir("maxnorm_" + args[0].substr(5)));
    config.max_train_steps = 3;
    config.network_module = "lycoris.kohya";
    config.network_args = args;
    config.scale_weight_norms = 1e-4;
    Recorder recorder;
    auto result = Train(config, {&source, {}, {}}, &recorder);
    ASSERT_TRUE(result.ok()) << result.status();
    ASSERT_EQ(recorder.steps.size(), 3u);
    int64_t scaled = 0;
    for (const StepReport& r : recorder.steps) {
      ASSERT_TRUE(r.max_norm.has_value());
      scaled += r.max_norm->keys_scaled;
      EXPECT_LE(r.max_norm->max_key_norm, 1e-4 * (1 + 1e-5));
    }
    EXPECT_GT(scaled, 0);
  }
}

TEST(TrainerTest, TextEncoderDiskCacheWithoutAHookWarnsThatItStaysInMemory) {
  CaptionedImages data = testing::MakeShapesDataset(4, 64);
  MemoryBatchSource source(data, 4, 3);
  TrainConfig config = TinySdxlConfig(FreshDir("te_disk_nohook"));
  config.max_train_steps = 1;
  config.cache_text_encoder_outputs_to_disk = true;
  Recorder recorder;
  ASSERT_TRUE(Train(config, {&source, {}, {}}, &recorder).ok());
  bool warned = false;
  for (const auto& [code, message] : recorder.warnings) {
    warned |= code == "cache_text_encoder_outputs_to_disk" &&
              absl::StrContains(message, "cache_text_encoder_outputs_to_disk") &&
              absl::StrContains(message, "memory only");
  }
  EXPECT_TRUE(warned);
}

}  // namespace
}  // namespace lorad::train
