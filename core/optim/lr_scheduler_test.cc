// Schedules against the sched/* multipliers of optim_reference.safetensors.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "core/common/fixtures.h"
#include "core/io/safetensors.h"
#include "core/optim/lr_scheduler.h"
#include "core/optim/optimizer.h"

namespace lorad::optim {
namespace {

using json = nlohmann::json;

TEST(LrScheduler, ReproducesReferenceMultipliers) {
  auto file = io::SafetensorsFile::Open(FixturePath("optim_reference.safetensors"));
  ASSERT_TRUE(file.ok()) << file.status();
  const json cases = json::parse((*file)->metadata().at("cases"));
  int checked = 0;
  for (const json& c : cases) {
    if (c["kind"] != "lr_scheduler") continue;
    const std::string id = c["id"];
    const json& a = c["call_args"];
    SchedulerOptions o;
    o.name = a["name"];
    o.warmup_steps = a["num_warmup_steps"];
    o.total_steps = a["num_training_steps"];
    o.num_cycles = a["num_cycles"];
    o.power = a["power"];
    o.lr_init = c["base_lr"];
    if (c.contains("lr_end")) o.lr_end = c["lr_end"];
    auto sched = LrScheduler::Create(o);
    if (o.name == "constant" && o.warmup_steps != 0) {
      // kohya refuses warmup for constant; diffusers ignores it, so the stored values are the warmup-0 ones.
      ASSERT_FALSE(sched.ok()) << id;
      EXPECT_NE(sched.status().message().find("warmup"), std::string::npos);
      o.warmup_steps = 0;
      sched = LrScheduler::Create(o);
    }
    ASSERT_TRUE(sched.ok()) << id << ": " << sched.status();
    for (const std::string& key : {id, "sched_kohya/" + id.substr(6)}) {
      if (!(*file)->Has(key)) continue;
      torch::Tensor ref = *(*file)->Get(key, torch::kDouble);
      double worst = 0;
      for (int64_t i = 0; i < ref.numel(); ++i) {
        worst = std::max(worst, std::fabs(sched->Multiplier(i) - ref[i].item<double>()));
      }
      std::printf("[sched] %-42s %lld steps, worst |diff| %.3e\n", key.c_str(), static_cast<long long>(ref.numel()),
                  worst);
      EXPECT_LE(worst, 1e-9) << key;
      ++checked;
    }
    // The lr a group gets: base lr x multiplier (sched_lr/*).
    const std::string lr_key = "sched_lr/" + id.substr(6);
    if ((*file)->Has(lr_key)) {
      torch::Tensor ref = *(*file)->Get(lr_key, torch::kDouble);
      torch::Tensor p = torch::zeros({2}, torch::requires_grad());
      auto opt = CreateOptimizer("AdamW", {}, {ParamGroup{"unet", {p}, o.lr_init}});
      ASSERT_TRUE(opt.ok());
      for (int64_t i = 0; i < ref.numel(); i += 37) {
        ASSERT_TRUE(sched->Apply(i, **opt).ok());
        EXPECT_NEAR((*opt)->lr(0), ref[i].item<double>(), 1e-15) << lr_key << " step " << i;
      }
    }
  }
  EXPECT_GE(checked, 12);
}

TEST(LrScheduler, WarmupRatioAndNames) {
  auto s = LrScheduler::Create({.name = "Cosine_With_Restarts", .warmup_steps = 0.05, .total_steps = 1000});
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->warmup_steps(), 50);
  EXPECT_EQ(s->Multiplier(0), 0.0);  // the first warmup update uses lr 0
  EXPECT_DOUBLE_EQ(s->Multiplier(25), 0.5);
  EXPECT_DOUBLE_EQ(s->Multiplier(50), 1.0);

  auto bad = LrScheduler::Create({.name = "cosine_annealing", .total_steps = 10});
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("cosine_with_restarts"), std::string::npos) << bad.status();
  EXPECT_FALSE(LrScheduler::Create({.name = "linear", .warmup_steps = 2.5, .total_steps = 10}).ok());
  EXPECT_FALSE(LrScheduler::Create({.name = "polynomial", .total_steps = 10, .lr_init = 1e-8}).ok());

  auto min_lr = LrScheduler::Create({.name = "cosine_with_min_lr", .total_steps = 100, .num_cycles = 1,
                                     .min_lr_ratio = 0.1});
  ASSERT_TRUE(min_lr.ok());
  EXPECT_NEAR(min_lr->Multiplier(100), 0.1, 1e-12);
  EXPECT_NEAR(min_lr->Multiplier(0), 1.0, 1e-12);
}

TEST(LrScheduler, AdafactorScheduleNeedsRelativeStepAdafactor) {
  auto sched = LrScheduler::Create({.name = "adafactor:1e-3", .total_steps = 10});
  ASSERT_TRUE(sched.ok());
  torch::Tensor p = torch::ones({4, 4}, torch::requires_grad());
  auto adamw = CreateOptimizer("AdamW", {}, {ParamGroup{"unet", {p}, 1e-3}});
  ASSERT_TRUE(adamw.ok());
  EXPECT_FALSE(sched->Apply(0, **adamw).ok());
  auto ada = CreateOptimizer("Adafactor", {}, {ParamGroup{"unet", {p}, 1e-3}});
  ASSERT_TRUE(ada.ok());
  EXPECT_TRUE((*ada)->UsesInternalLr());
  EXPECT_TRUE(sched->Apply(3, **ada).ok());
}

}  // namespace
}  // namespace lorad::optim
