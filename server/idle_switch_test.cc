// The idle switch's decision on a fake clock, and the charge of a slot (issue 13).
#include "server/idle_switch.h"

#include <gtest/gtest.h>

#include "server/scheduler.h"

namespace lorad::server {
namespace {

constexpr int64_t kMinute = 60'000;

TEST(IdleTimerTest, FiresOnceAfterAFullIdleWindow) {
  IdleTimer timer(20 * kMinute, 0, 0);
  EXPECT_FALSE(timer.Observe(false, 0, 19 * kMinute));
  EXPECT_EQ(timer.idle_for_ms(19 * kMinute), 19 * kMinute);
  EXPECT_TRUE(timer.Observe(false, 0, 20 * kMinute));
  // Once: not again while nothing happens, however long.
  EXPECT_FALSE(timer.Observe(false, 0, 45 * kMinute));
  EXPECT_FALSE(timer.Observe(false, 0, 600 * kMinute));
}

TEST(IdleTimerTest, AJobInsideTheWindowPostponesIt) {
  IdleTimer timer(20 * kMinute, 0, 0);
  EXPECT_FALSE(timer.Observe(false, 0, 10 * kMinute));
  // A job arrives and ends between two looks: only the activity counter shows it.
  EXPECT_FALSE(timer.Observe(false, 2, 11 * kMinute));
  EXPECT_FALSE(timer.Observe(false, 2, 25 * kMinute));  // 14 min since: not yet
  EXPECT_TRUE(timer.Observe(false, 2, 31 * kMinute));   // 20 min after the job
}

TEST(IdleTimerTest, RunsAgainOnlyAfterANewJobDrains) {
  IdleTimer timer(20 * kMinute, 0, 0);
  EXPECT_TRUE(timer.Observe(false, 0, 20 * kMinute));
  // A job arrives and runs for an hour: busy, never due.
  EXPECT_FALSE(timer.Observe(true, 1, 30 * kMinute));
  EXPECT_EQ(timer.idle_for_ms(30 * kMinute), 0);
  EXPECT_FALSE(timer.Observe(true, 1, 90 * kMinute));
  // It ends at 90: due again 20 minutes later, once.
  EXPECT_FALSE(timer.Observe(false, 2, 91 * kMinute));
  EXPECT_FALSE(timer.Observe(false, 2, 110 * kMinute));
  EXPECT_TRUE(timer.Observe(false, 2, 111 * kMinute));
  EXPECT_FALSE(timer.Observe(false, 2, 200 * kMinute));
}

TEST(IdleTimerTest, AQueueThatStaysBusyNeverFires) {
  IdleTimer timer(kMinute, 0, 5);
  for (int64_t t = 0; t < 100 * kMinute; t += kMinute) EXPECT_FALSE(timer.Observe(true, 5, t));
  EXPECT_FALSE(timer.Observe(false, 5, 100 * kMinute));
  EXPECT_TRUE(timer.Observe(false, 5, 101 * kMinute));
}

TEST(ChargeForSlotTest, SharesTheBoxPriceAmongItsGpus) {
  SchedulerOptions options;
  options.slots = 2;
  options.slot_gpus = {"0", "1,2,3"};
  options.price_per_hour = 8.0;
  const storage::SlotCharge first = ChargeForSlot(options, 0);
  const storage::SlotCharge second = ChargeForSlot(options, 1);
  EXPECT_EQ(first.gpus, 1);
  EXPECT_EQ(second.gpus, 3);
  EXPECT_DOUBLE_EQ(first.price_per_gpu_hour, 2.0);   // 8 an hour over 4 GPUs
  EXPECT_DOUBLE_EQ(second.price_per_gpu_hour, 2.0);
  // CPU slots (no GPU list) count one each.
  options.slot_gpus.clear();
  options.price_per_hour = 1.0;
  EXPECT_EQ(ChargeForSlot(options, 1).gpus, 1);
  EXPECT_DOUBLE_EQ(ChargeForSlot(options, 1).price_per_gpu_hour, 0.5);
}

}  // namespace
}  // namespace lorad::server
