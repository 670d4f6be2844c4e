// The training loop on a GPU (tiny SDXL fixture, device "cuda"): the loss falls
// in 30 steps in float32 and in bf16 mixed precision, and a run interrupted
// with a saved state resumes on the GPU to what an uninterrupted run trains;
// the LoRA it writes loads back into a network on the GPU bit for bit.
#include <cmath>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/base/testing/scoped_temp_dir.h"
#include "core/io/safetensors.h"
#include "core/networks/lora_network.h"
#include "core/train/model_bundle.h"
#include "core/train/test_support.h"
#include "core/train/training_test_helpers.h"
#include "core/train/trainer.h"
#include "tests/cuda/cuda_test_support.h"

namespace lorad::train {
namespace {

using testing::CaptionedImages;
using testing::MemoryBatchSource;
using testing::CancelAt;
using testing::FreshDir;
using testing::LossWithLora;
using testing::ReadLora;
TrainConfig GpuConfig(const std::filesystem::path& dir) {
  TrainConfig config = testing::TinySdxlConfig(dir);
  config.device = "cuda";
  // LoCon, as the CPU end-to-end test: the random tiny U-Net needs the ResBlocks' capacity to fit quickly.
  config.network_dim = 16;
  config.network_alpha = 16;
  config.network_args = {"conv_dim=8", "conv_alpha=8"};
  config.max_train_steps = 30;
  return config;
}
// How far two LoRAs' lora_up weights (zero at init, so all of it trained)
// are apart: ||a - b|| / ||a|| over every up weight. GPU kernels need not be
// bit-reproducible (cuDNN's benchmark picks algorithms per run, atomics in
// backward kernels), and AdamW turns a near-zero gradient's rounding into a
// whole lr step for that element, so single elements can differ by an lr step;
// the norm over all of them shows whether two runs trained the same.
double UpWeightsRelativeDifference(const std::filesystem::path& a_path, const std::filesystem::path& b_path) {
  const auto a = ReadLora(a_path);
  const auto b = ReadLora(b_path);
  double diff = 0, norm = 0;
  for (const auto& [key, value] : a) {
    if (!absl::StrContains(key, "lora_up")) continue;
    EXPECT_TRUE(b.count(key)) << key;
    if (!b.count(key)) return INFINITY;
    const torch::Tensor x = value.to(torch::kFloat64), y = b.at(key).to(torch::kFloat64);
    diff += (x - y).pow(2).sum().item<double>();
    norm += x.pow(2).sum().item<double>();
  }
  return std::sqrt(diff) / std::max(std::sqrt(norm), 1e-12);
}

// Every step's loss.
struct LossRecorder : TrainObserver {
  void OnStep(const StepReport& report) override { losses.push_back(report.loss); }
  std::vector<double> losses;
};

void TrainsAndLossFalls(const std::string& name, const std::string& mixed_precision) {
  const auto dir = FreshDir(name);
  CaptionedImages data = testing::MakeShapesDataset(16, 64);
  MemoryBatchSource source(data, 4, 1234);
  TrainConfig config = GpuConfig(dir);
  config.mixed_precision = mixed_precision;
  LossRecorder recorder;
  auto result = Train(config, {&source, {}, {}}, &recorder);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->steps, 30);
  ASSERT_EQ(recorder.losses.size(), 30u);
  for (double loss : recorder.losses) EXPECT_TRUE(std::isfinite(loss)) << loss;
  for (const auto& [key, value] : ReadLora(result->final_lora)) {
    EXPECT_TRUE(torch::isfinite(value).all().item<bool>()) << key;
  }
  // Evaluated in float32 on the CPU, so the GPU-trained LoRA also loads there.
  const double before = LossWithLora(config, data, "");
  const double after = LossWithLora(config, data, result->final_lora);
  std::printf("[ gpu %s ] tiny SDXL, 30 steps: fixed-noise loss %.5f -> %.5f\n", mixed_precision.c_str(), before,
              after);
  EXPECT_LT(after, before * 0.95);
}

TEST(GpuTrainingTest, ThirtyFloat32StepsLowerTheLoss) {
  LORAD_SKIP_WITHOUT_CUDA();
  TrainsAndLossFalls("f32", "no");
}

TEST(GpuTrainingTest, ThirtyBf16MixedPrecisionStepsAreFiniteAndLowerTheLoss) {
  LORAD_SKIP_WITHOUT_CUDA();
  TrainsAndLossFalls("bf16", "bf16");
}

TEST(GpuTrainingTest, SaveResumeAndLoadOnTheGpu) {
  LORAD_SKIP_WITHOUT_CUDA();
  CaptionedImages data = testing::MakeShapesDataset(8, 64);
  const auto dir_a = FreshDir("resume_a");
  const auto dir_b = FreshDir("resume_b");
  TrainConfig config = GpuConfig(dir_a);
  config.max_train_steps = 20;
  config.train_batch_size = 3;
  config.lr_scheduler = "cosine";
  config.lr_warmup_steps = 3;
  {
    MemoryBatchSource source(data, 3, 7);
    auto full = Train(config, {&source, {}, {}});
    ASSERT_TRUE(full.ok()) << full.status();
  }
  config.output_dir = dir_b.string();
  CancellationToken token;
  CancelAt cancel_at(&token, 10);
  {
    MemoryBatchSource source(data, 3, 7);
    auto first = Train(config, {&source, {}, {}}, &cancel_at, &token);
    ASSERT_EQ(first.status().code(), absl::StatusCode::kCancelled) << first.status();
  }
  config.resume = (dir_b / "tiny-state").string();
  {
    MemoryBatchSource source(data, 3, 7);
    auto second = Train(config, {&source, {}, {}});
    ASSERT_TRUE(second.ok()) << second.status();
    EXPECT_EQ(second->steps, 20);
  }
  // Within the GPU's run-to-run noise (see UpWeightsRelativeDifference); a
  // resume that lost the optimizer state or the data position trains visibly
  // differently from step 13 on.
  const double apart = UpWeightsRelativeDifference(dir_a / "tiny.safetensors", dir_b / "tiny.safetensors");
  std::printf("[ gpu resume ] resumed vs uninterrupted: lora_up relative difference %.3g\n", apart);
  EXPECT_LT(apart, 2e-2);
  // The resumed LoRA loads into a network on the GPU bit for bit and evaluates there.
  const double loss = LossWithLora(config, data, dir_b / "tiny.safetensors", torch::Device(torch::kCUDA, 0));
  EXPECT_TRUE(std::isfinite(loss)) << loss;
}

// Every kind of step moves the LoRA: a first eager step, the capture step and
// the replays, in float32 and bf16, graphs on and off. Runs of 1, 2, 3, 4 and 6
// steps from the same seed: the lora_up weights (zero at init) grow with the
// steps, and the step losses and norms are finite and printed per step.
TEST(GpuTrainingTest, EveryKindOfStepMovesTheWeights) {
  LORAD_SKIP_WITHOUT_CUDA();
  CaptionedImages data = testing::MakeShapesDataset(16, 64);
  for (const bool graphs : {false, true}) {
    for (const std::string mixed_precision : {"no", "bf16"}) {
      std::vector<double> up_sums;
      for (const int64_t steps : {1, 2, 3, 4, 6}) {
        TrainConfig config = GpuConfig(FreshDir(absl::StrCat("moves_", graphs, mixed_precision, steps)));
        config.mixed_precision = mixed_precision;
        config.cuda_graphs = graphs;
        config.max_train_steps = steps;
        config.log_every_n_steps = 1;
        MemoryBatchSource source(data, 4, 1234);
        struct Recorder : TrainObserver {
          void OnStep(const StepReport& r) override {
            absl::StrAppendFormat(&line, " [%d loss %.5f norm %.4g lr %.3g]", static_cast<int>(r.step), r.loss,
                                  r.grad_norm, r.lrs.empty() ? 0.0 : r.lrs[0].lr);
          }
          std::string line;
        } recorder;
        auto result = Train(config, {&source, {}, {}}, &recorder);
        ASSERT_TRUE(result.ok()) << result.status();
        double up_sum = 0, down_sum = 0;
        for (const auto& [key, value] : ReadLora(result->final_lora)) {
          const double sum = value.to(torch::kFloat64).abs().sum().item<double>();
          if (absl::StrContains(key, "lora_up")) up_sum += sum;
          if (absl::StrContains(key, "lora_down")) down_sum += sum;
        }
        std::printf("[ moves graphs=%d %s ] %lld steps (%lld graph steps, %lld captured): sum|up| %.6g sum|down| %.6g%s\n",
                    graphs, mixed_precision.c_str(), static_cast<long long>(steps),
                    static_cast<long long>(result->graph_steps), static_cast<long long>(result->cuda_graphs_captured),
                    up_sum, down_sum, recorder.line.c_str());
        std::fflush(stdout);
        up_sums.push_back(up_sum);
      }
      for (size_t i = 1; i < up_sums.size(); ++i) {
        EXPECT_GT(up_sums[i], up_sums[i - 1]) << "graphs " << graphs << " " << mixed_precision << " run " << i;
      }
    }
  }
}

// A run that fails after its model is on the GPU returns the error (and the
// process exits cleanly: a crash at exit shows in ctest as SEGFAULT).
TEST(GpuTrainingTest, ARunFailingOnTheGpuReturnsItsError) {
  LORAD_SKIP_WITHOUT_CUDA();
  CaptionedImages data = testing::MakeShapesDataset(4, 64);
  const auto dir = FreshDir("fails_on_gpu");
  TrainConfig config = GpuConfig(dir);
  config.resume = (dir / "no-such-state").string();
  MemoryBatchSource source(data, 4, 1234);
  auto result = Train(config, {&source, {}, {}});
  ASSERT_FALSE(result.ok());
  EXPECT_TRUE(absl::StrContains(result.status().message(), "no-such-state")) << result.status();
}

// cuda_graphs: after two eager warm-up steps the step is captured once (one
// bucket shape) and replayed; every step computes what the eager step computes
// (the same draws, the lr of its step, the same optimizer state), within the
// rounding of the graph-safe optimizer's device-side lr and bias corrections
// and of non-deterministic convolution backward kernels.
void GraphStepsEqualEagerSteps(const std::string& name, const std::string& mixed_precision, double loss_tolerance,
                               double weight_tolerance) {
  CaptionedImages data = testing::MakeShapesDataset(16, 64);
  TrainConfig config = GpuConfig(FreshDir(name + "_eager"));
  config.mixed_precision = mixed_precision;
  config.max_train_steps = 12;
  config.lr_scheduler = "cosine";  // a new lr every step: each replay must read its own
  config.log_every_n_steps = 5;
  config.cuda_graphs = false;
  LossRecorder eager_losses, graph_losses;
  MemoryBatchSource eager_source(data, 4, 1234), graph_source(data, 4, 1234);
  auto eager = Train(config, {&eager_source, {}, {}}, &eager_losses);
  ASSERT_TRUE(eager.ok()) << eager.status();
  EXPECT_EQ(eager->graph_steps, 0);
  config.output_dir = FreshDir(name + "_graph").string();
  config.cuda_graphs = true;
  auto graph = Train(config, {&graph_source, {}, {}}, &graph_losses);
  ASSERT_TRUE(graph.ok()) << graph.status();
  EXPECT_EQ(graph->graph_steps, 12);
  EXPECT_EQ(graph->cuda_graphs_captured, 1);
  ASSERT_EQ(graph_losses.losses.size(), eager_losses.losses.size());
  double worst_loss = 0;
  for (size_t i = 0; i < eager_losses.losses.size(); ++i) {
    worst_loss = std::max(worst_loss, std::abs(graph_losses.losses[i] - eager_losses.losses[i]) /
                                          std::abs(eager_losses.losses[i]));
  }
  const double worst_weight = UpWeightsRelativeDifference(eager->final_lora, graph->final_lora);
  std::printf("[ gpu %s ] 12 steps, graph vs eager: worst relative loss difference %.3g, lora_up relative difference %.3g\n",
              mixed_precision.c_str(), worst_loss, worst_weight);
  EXPECT_LT(worst_loss, loss_tolerance);
  EXPECT_LT(worst_weight, weight_tolerance);
}

TEST(GpuTrainingTest, GraphStepsEqualEagerStepsFloat32) {
  LORAD_SKIP_WITHOUT_CUDA();
  GraphStepsEqualEagerSteps("graph_f32", "no", 1e-4, 1e-2);
}

TEST(GpuTrainingTest, GraphStepsEqualEagerStepsBf16) {
  LORAD_SKIP_WITHOUT_CUDA();
  GraphStepsEqualEagerSteps("graph_bf16", "bf16", 2e-2, 3e-2);
}

}  // namespace
}  // namespace lorad::train
