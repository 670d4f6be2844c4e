// The step pipeline around the training step (CPU): the graph-capturable step
// body against the eager step, loss read-back at the log interval, and the
// batch read ahead of the step.
#include <cmath>
#include <map>
#include <vector>

#include <gtest/gtest.h>

#include "core/train/batch_prefetch.h"
#include "core/train/test_support.h"
#include "core/train/trainer.h"
#include "core/train/training_test_helpers.h"

namespace lorad::train {
namespace {

using testing::CaptionedImages;
using testing::ExpectBitIdentical;
using testing::FreshDir;
using testing::MemoryBatchSource;
using testing::ReadLora;
using testing::TinySdxlConfig;

struct LossLog : TrainObserver {
  void OnStep(const StepReport& r) override {
    steps.push_back(r.step);
    losses.push_back(r.loss);
    grad_norms.push_back(r.grad_norm);
  }
  std::vector<int64_t> steps;
  std::vector<double> losses;
  std::vector<double> grad_norms;
};

// The largest, over the LoRA's tensors, of |a - b| / |b| (Frobenius norms).
// Not element by element: AdamW turns the last-bit rounding of a near-zero
// gradient (the two paths' optimizer kernels and CPU threads round
// differently) into a whole lr-sized step of that one element.
double WorstRelativeNormDifference(const std::map<std::string, torch::Tensor>& a,
                                   const std::map<std::string, torch::Tensor>& b) {
  double worst = 0;
  for (const auto& [k, v] : a) {
    const torch::Tensor w = b.at(k).to(torch::kFloat64);
    const double norm = std::max(1e-12, w.norm().item<double>());
    worst = std::max(worst, (v.to(torch::kFloat64) - w).norm().item<double>() / norm);
  }
  return worst;
}

// What a CUDA graph replays is the graph step's body: static input buffers,
// the optimizer's graph-safe step (lr and step counters in tensors), clipping
// without a read-back. Run eagerly on the CPU it must train as the eager step.
TEST(StepPipelineTest, GraphStepBodyTrainsAsTheEagerStep) {
  CaptionedImages data = testing::MakeShapesDataset(4, 64);
  for (const char* optimizer : {"AdamW", "Lion"}) {
    SCOPED_TRACE(optimizer);
    TrainConfig config = TinySdxlConfig(FreshDir(std::string("graph_eager_") + optimizer));
    config.optimizer_type = optimizer;
    if (std::string(optimizer) == "Lion") config.learning_rate = 3e-4;
    config.max_train_steps = 12;
    config.lr_scheduler = "cosine";  // the lr changes every step: the graph step must read it each time
    MemoryBatchSource eager_source(data, 4, 3), graph_source(data, 4, 3);
    LossLog eager_log, graph_log;
    auto eager = Train(config, {&eager_source, {}, {}}, &eager_log);
    ASSERT_TRUE(eager.ok()) << eager.status();
    EXPECT_EQ(eager->graph_steps, 0);

    config.output_dir = FreshDir(std::string("graph_body_") + optimizer).string();
    TrainOptions options;
    options.graph_step_without_capture = true;
    auto graph = Train(config, {&graph_source, {}, {}}, &graph_log, nullptr, options);
    ASSERT_TRUE(graph.ok()) << graph.status();
    EXPECT_EQ(graph->graph_steps, 12);
    EXPECT_EQ(graph->cuda_graphs_captured, 0);  // nothing to capture on the CPU

    ASSERT_EQ(graph_log.losses.size(), eager_log.losses.size());
    for (size_t i = 0; i < eager_log.losses.size(); ++i) {
      EXPECT_NEAR(graph_log.losses[i], eager_log.losses[i], 1e-5 * std::abs(eager_log.losses[i])) << "step " << i + 1;
      EXPECT_NEAR(graph_log.grad_norms[i], eager_log.grad_norms[i], 1e-4 * eager_log.grad_norms[i]) << "step " << i + 1;
    }
    const double worst = WorstRelativeNormDifference(ReadLora(graph->final_lora), ReadLora(eager->final_lora));
    std::printf("[ %s ] graph-step body vs eager step after 12 steps: worst relative LoRA difference (norm) %.3g\n",
                optimizer, worst);
    EXPECT_LT(worst, 1e-4);
  }
}

// Steps the graph step cannot take run eagerly, and say nothing on the CPU.
TEST(StepPipelineTest, StepsTheGraphCannotTakeRunEagerly) {
  CaptionedImages data = testing::MakeShapesDataset(4, 64);
  TrainOptions options;
  options.graph_step_without_capture = true;
  struct Case {
    const char* name;
    std::function<void(TrainConfig&)> set;
  };
  const std::vector<Case> cases = {
      {"accumulation", [](TrainConfig& c) { c.gradient_accumulation_steps = 2; }},
      {"prodigy", [](TrainConfig& c) {
         c.optimizer_type = "Prodigy";
         c.learning_rate = 1;
       }},
      {"dropout", [](TrainConfig& c) { c.network_dropout = 0.1; }},
      {"off", [](TrainConfig& c) { c.cuda_graphs = false; }},
  };
  for (const Case& k : cases) {
    SCOPED_TRACE(k.name);
    TrainConfig config = TinySdxlConfig(FreshDir(std::string("graph_obstacle_") + k.name));
    config.max_train_steps = 3;
    k.set(config);
    MemoryBatchSource source(data, 4, 3);
    auto result = Train(config, {&source, {}, {}}, nullptr, nullptr, options);
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_EQ(result->graph_steps, 0);
    EXPECT_EQ(result->steps, 3);
  }
}

// log_every_n_steps = 4: every step is still reported, in order, with its own
// loss; the read-back only comes later. The LoRA is the same bit for bit.
TEST(StepPipelineTest, LogIntervalReportsEveryStepWithItsOwnLoss) {
  CaptionedImages data = testing::MakeShapesDataset(4, 64);
  TrainConfig config = TinySdxlConfig(FreshDir("log_every_1"));
  config.max_train_steps = 10;  // not a multiple of 4: the last two are read at the end
  config.log_every_n_steps = 1;
  MemoryBatchSource source(data, 4, 3);
  LossLog every_step, every_fourth;
  auto a = Train(config, {&source, {}, {}}, &every_step);
  ASSERT_TRUE(a.ok()) << a.status();
  config.output_dir = FreshDir("log_every_4").string();
  config.log_every_n_steps = 4;
  auto b = Train(config, {&source, {}, {}}, &every_fourth);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(every_fourth.steps, every_step.steps);
  EXPECT_EQ(every_fourth.losses, every_step.losses);
  EXPECT_EQ(every_fourth.grad_norms, every_step.grad_norms);
  EXPECT_DOUBLE_EQ(b->final_loss_avg, a->final_loss_avg);
  ExpectBitIdentical(ReadLora(a->final_lora), ReadLora(b->final_lora));
}

// A divergence found at a later read-back names the step it happened at, and
// no checkpoint after it is written: the checks run before every save.
TEST(StepPipelineTest, DivergenceFoundAtTheLogIntervalNamesItsStep) {
  CaptionedImages data = testing::MakeShapesDataset(4, 64);
  std::vector<std::string> messages;
  std::vector<std::vector<std::string>> saved;
  for (int64_t every : {1, 5}) {
    TrainConfig config = TinySdxlConfig(FreshDir("diverge_every_" + std::to_string(every)));
    config.learning_rate = 1e30;
    config.max_grad_norm = 0;
    config.save_every_n_steps = 2;
    config.max_train_steps = 20;
    config.log_every_n_steps = every;
    MemoryBatchSource source(data, 4, 3);
    auto result = Train(config, {&source, {}, {}});
    ASSERT_EQ(result.status().code(), absl::StatusCode::kDataLoss) << result.status();
    std::string message(result.status().message());
    // Folder names differ; the step and the reason must not.
    messages.push_back(message.substr(0, message.find("; the last good LoRA")));
    std::vector<std::string> files;
    for (const auto& e : std::filesystem::directory_iterator(config.output_dir)) {
      files.push_back(e.path().filename().string());
    }
    std::sort(files.begin(), files.end());
    saved.push_back(files);
  }
  EXPECT_EQ(messages[0], messages[1]);
  EXPECT_EQ(saved[0], saved[1]);
}

// A scripted inner iterator: batches of one sample, then an error or the end.
class ScriptedIterator : public data::BatchIterator {
 public:
  ScriptedIterator(int good, bool fail_after) : good_(good), fail_after_(fail_after) {}
  absl::StatusOr<std::optional<data::Batch>> Next() override {
    ++calls;
    if (index_ < good_) {
      data::Batch b;
      b.latents = torch::full({1, 4, 2, 2}, static_cast<float>(index_));
      b.captions = {"c" + std::to_string(index_)};
      b.position = {1, index_};
      ++index_;
      return std::optional<data::Batch>(std::move(b));
    }
    if (fail_after_) return absl::DataLossError("image 3 vanished");
    return std::optional<data::Batch>();
  }
  data::DataPosition position() const override { return {1, index_}; }
  int calls = 0;

 private:
  int64_t index_ = 0;
  int good_;
  bool fail_after_;
};

TEST(BatchPrefetchTest, ReadsOneAheadAndReportsThePositionOfWhatItReturned) {
  auto inner = std::make_unique<ScriptedIterator>(3, /*fail_after=*/false);
  ScriptedIterator* raw = inner.get();
  PrefetchingIterator it(std::move(inner), torch::kCPU);
  EXPECT_EQ(it.position(), (data::DataPosition{1, 0}));
  for (int64_t i = 0; i < 3; ++i) {
    auto b = it.Next();
    ASSERT_TRUE(b.ok() && b->has_value());
    EXPECT_EQ((*b)->captions[0], "c" + std::to_string(i));
    EXPECT_EQ((*b)->latents[0][0][0][0].item<float>(), static_cast<float>(i));
    // The inner iterator is one batch further; the position is the returned batch's.
    EXPECT_EQ(it.position(), (data::DataPosition{1, i + 1}));
    EXPECT_EQ(raw->calls, static_cast<int>(i) + 2);
  }
  auto end = it.Next();
  ASSERT_TRUE(end.ok());
  EXPECT_FALSE(end->has_value());
  EXPECT_EQ(it.position(), (data::DataPosition{1, 3}));
}

TEST(BatchPrefetchTest, AnErrorReadAheadSurfacesOnlyWhenItsBatchIsAskedFor) {
  PrefetchingIterator it(std::make_unique<ScriptedIterator>(2, /*fail_after=*/true), torch::kCPU);
  for (int i = 0; i < 2; ++i) {
    auto b = it.Next();
    ASSERT_TRUE(b.ok()) << "batch " << i << ": " << b.status();
    ASSERT_TRUE(b->has_value());
  }
  auto failed = it.Next();
  EXPECT_EQ(failed.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(failed.status().message(), "image 3 vanished");
  EXPECT_EQ(it.position(), (data::DataPosition{1, 2}));
}

}  // namespace
}  // namespace lorad::train
