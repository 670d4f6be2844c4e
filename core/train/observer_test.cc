#include "core/train/observer.h"

#include <unistd.h>

#include <gtest/gtest.h>

namespace lorad::train {
namespace {

TEST(ProgressBarTest, FormatsStepEpochLossLrAndEta) {
  StepReport r;
  r.step = 30;
  r.total_steps = 60;
  r.epoch = 2;
  r.total_epochs = 4;
  r.loss = 0.12345;
  r.loss_avg = 0.2;
  r.lrs = {{"unet", 1e-4}, {"text_encoder", 5e-5}};
  r.it_per_s = 2.5;
  r.eta_s = 75;
  const std::string line = ProgressBarObserver::FormatBar(r, 10);
  EXPECT_EQ(line,
            "steps 30/60 [=====>    ]  50% epoch 2/4 loss 0.1235 avg 0.2000 lr 1.0e-04/5.0e-05 2.50 it/s ETA 1:15");
}

TEST(ProgressBarTest, ShowsMaxNormPostfixWhenScaleWeightNormsIsOn) {
  StepReport r;
  r.step = 1;
  r.total_steps = 2;
  r.epoch = 1;
  r.total_epochs = 1;
  r.max_norm = MaxNormReport{3, 0.5, 1.0};
  const std::string line = ProgressBarObserver::FormatBar(r, 4);
  EXPECT_NE(line.find(" keys scaled 3 avg key norm 0.5000 max 1.0000"), std::string::npos) << line;
  r.max_norm.reset();
  EXPECT_EQ(ProgressBarObserver::FormatBar(r, 4).find("keys scaled"), std::string::npos);
}

TEST(ProgressBarTest, WritesLinesToANonTerminal) {
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  {
    ProgressBarObserver bar(fds[1], 0);
    StepReport r;
    r.step = 1;
    r.total_steps = 1;
    bar.OnStep(r);
    bar.OnWarning("nan_loss", "loss is NaN");
    bar.OnFinish({RunOutcome::kFailed, "loss became NaN", "/out/last.safetensors", 1});
  }
  ::close(fds[1]);
  std::string text(4096, '\0');
  const ssize_t n = ::read(fds[0], text.data(), text.size());
  ::close(fds[0]);
  ASSERT_GT(n, 0);
  text.resize(static_cast<size_t>(n));
  EXPECT_NE(text.find("steps 1/1"), std::string::npos) << text;
  EXPECT_NE(text.find("warning [nan_loss]: loss is NaN"), std::string::npos) << text;
  EXPECT_NE(text.find("FAILED at step 1: loss became NaN (last good LoRA: /out/last.safetensors)"),
            std::string::npos)
      << text;
}

struct Counting : TrainObserver {
  int steps = 0;
  int warnings = 0;
  void OnStep(const StepReport&) override { ++steps; }
  void OnWarning(const std::string&, const std::string&) override { ++warnings; }
};

TEST(ObserverListTest, ForwardsToAll) {
  Counting a, b;
  ObserverList list;
  list.Add(&a);
  list.Add(&b);
  list.OnStep({});
  list.OnWarning("x", "y");
  EXPECT_EQ(a.steps + b.steps, 2);
  EXPECT_EQ(a.warnings + b.warnings, 2);
}

TEST(CancellationTokenTest, CarriesSaveStateRequest) {
  CancellationToken token;
  EXPECT_FALSE(token.cancelled());
  token.Cancel(false);
  EXPECT_TRUE(token.cancelled());
  EXPECT_FALSE(token.save_state_requested());
}

}  // namespace
}  // namespace lorad::train
