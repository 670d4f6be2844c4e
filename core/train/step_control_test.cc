#include "core/train/step_control.h"

#include <cmath>
#include <limits>

#include <gtest/gtest.h>

namespace lorad::train {
namespace {

TEST(StepControl, NonFiniteLossIsDataLossNamingStepAndEpoch) {
  EXPECT_TRUE(CheckLossFinite(0.25, 3, 1).ok());
  absl::Status nan = CheckLossFinite(std::nan(""), 7, 2);
  EXPECT_EQ(nan.code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(nan.message().find("loss became NaN at step 7 (epoch 2)"), std::string::npos) << nan;
  absl::Status inf = CheckLossFinite(std::numeric_limits<double>::infinity(), 1, 1);
  EXPECT_NE(inf.message().find("loss became inf"), std::string::npos) << inf;
}

TEST(StepControl, SkipStreakStopsAfterFiftySkipsInARow) {
  SkipStreak streak;
  for (int i = 1; i <= 50; ++i) ASSERT_TRUE(streak.Record(true, 1.0, i).ok()) << i;
  EXPECT_TRUE(streak.Record(false, 1.0, 51).ok());  // a clean step resets the streak
  for (int i = 52; i <= 101; ++i) ASSERT_TRUE(streak.Record(true, 1.0, i).ok()) << i;
  absl::Status diverged = streak.Record(true, 0.5, 102);
  EXPECT_EQ(diverged.code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(diverged.message().find("skipped 50 steps in a row (scale 0.5) at step 102"), std::string::npos)
      << diverged;
}

TEST(StepControl, ThroughputCountsThisProcess) {
  const Throughput t = ComputeThroughput(10, 40, 5.0, 90);
  EXPECT_DOUBLE_EQ(t.it_per_s, 2.0);
  EXPECT_DOUBLE_EQ(t.images_per_s, 8.0);
  EXPECT_DOUBLE_EQ(t.eta_s, 45.0);
  const Throughput none = ComputeThroughput(0, 0, 0.0, 90);
  EXPECT_EQ(none.it_per_s, 0);
  EXPECT_EQ(none.eta_s, 0);
}

TEST(StepControl, StopDecisions) {
  EXPECT_EQ(StopAfterStep(false, nullptr, std::nullopt, 5), StopAction::kContinue);
  // A simulated interrupt saves a state; never after the last step.
  EXPECT_EQ(StopAfterStep(false, nullptr, 5, 5), StopAction::kStopSaveState);
  EXPECT_EQ(StopAfterStep(false, nullptr, 5, 4), StopAction::kContinue);
  EXPECT_EQ(StopAfterStep(true, nullptr, 5, 5), StopAction::kContinue);
  CancellationToken token;
  EXPECT_EQ(StopAfterStep(false, &token, std::nullopt, 1), StopAction::kContinue);
  token.Cancel(/*save_state=*/false);
  EXPECT_EQ(StopAfterStep(false, &token, std::nullopt, 1), StopAction::kStop);
  EXPECT_EQ(StopAfterStep(true, &token, std::nullopt, 1), StopAction::kContinue);
  CancellationToken saving;
  saving.Cancel(/*save_state=*/true);
  EXPECT_EQ(StopAfterStep(false, &saving, std::nullopt, 1), StopAction::kStopSaveState);
}

}  // namespace
}  // namespace lorad::train
