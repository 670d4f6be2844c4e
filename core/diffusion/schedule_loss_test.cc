// Schedule, zero-terminal SNR, loss weights and losses against kohya's numbers
// (train_reference.safetensors: sched/*, ztsnr/*, loss_weights/*, loss/*).
#include <gtest/gtest.h>

#include "absl/strings/str_split.h"
#include "core/diffusion/loss.h"
#include "core/diffusion/noise_schedule.h"
#include "core/common/test_fixtures.h"

namespace lorad::diffusion {
namespace {

using testing::AllClose;
using testing::Get;

class TrainReference : public ::testing::Test {
 protected:
  void SetUp() override {
    file_ = testing::OpenFixture("train_reference.safetensors");
    ASSERT_NE(file_, nullptr);
    cases_ = testing::MetadataJson(*file_, "cases");
  }
  std::shared_ptr<io::SafetensorsFile> file_;
  nlohmann::json cases_;
};

TEST_F(TrainReference, ScheduleMatchesKohya) {
  NoiseSchedule schedule;
  EXPECT_TRUE(AllClose(schedule.betas(), Get(*file_, "sched/betas")));
  EXPECT_TRUE(AllClose(schedule.alphas_cumprod(), Get(*file_, "sched/alphas_cumprod")));
  EXPECT_TRUE(AllClose(schedule.all_snr(), Get(*file_, "sched/all_snr")));
}

TEST_F(TrainReference, ZeroTerminalSnrKeepsAllSnr) {
  NoiseSchedule schedule({.zero_terminal_snr = true});
  EXPECT_TRUE(AllClose(schedule.betas(), Get(*file_, "ztsnr/betas")));
  EXPECT_TRUE(AllClose(schedule.alphas_cumprod(), Get(*file_, "ztsnr/alphas_cumprod")));
  EXPECT_TRUE(AllClose(schedule.alphas_cumprod(), Get(*file_, "ztsnr/diffusers_alphas_cumprod")));
  // kohya does not recompute all_snr after the fix.
  EXPECT_TRUE(AllClose(schedule.all_snr(), Get(*file_, "ztsnr/all_snr")));
  EXPECT_EQ(schedule.alphas_cumprod()[-1].item<float>(), 0.0f);
}

TEST_F(TrainReference, LossWeightsMatchKohya) {
  NoiseSchedule schedule;
  auto t = Get(*file_, "loss_weights/timesteps");
  auto ones = torch::ones({t.size(0)});
  EXPECT_TRUE(AllClose(ApplySnrWeight(ones, t, schedule, 5.0, false), Get(*file_, "loss_weights/min_snr_gamma5/eps")));
  EXPECT_TRUE(AllClose(ApplySnrWeight(ones, t, schedule, 5.0, true), Get(*file_, "loss_weights/min_snr_gamma5/v")));
  EXPECT_TRUE(AllClose(ApplySnrWeight(ones, t, schedule, 8.0, false), Get(*file_, "loss_weights/min_snr_gamma8/eps")));
  EXPECT_TRUE(AllClose(ApplySnrWeight(ones, t, schedule, 8.0, true), Get(*file_, "loss_weights/min_snr_gamma8/v")));
  EXPECT_TRUE(AllClose(ScaleVPredictionLossLikeNoisePrediction(ones, t, schedule),
                       Get(*file_, "loss_weights/scale_v_pred_loss_like_noise_pred")));
  EXPECT_TRUE(AllClose(ApplyDebiasedEstimation(ones, t, schedule, false), Get(*file_, "loss_weights/debiased/eps")));
  EXPECT_TRUE(AllClose(ApplyDebiasedEstimation(ones, t, schedule, true), Get(*file_, "loss_weights/debiased/v")));
  EXPECT_TRUE(AllClose(AddVPredictionLikeLoss(ones, t, schedule, 0.1), Get(*file_, "loss_weights/v_pred_like_loss_0.1")));
}

TEST_F(TrainReference, PostProcessLossChainsMatchKohya) {
  NoiseSchedule schedule;
  auto t = Get(*file_, "loss_weights/timesteps");
  auto loss_in = Get(*file_, "loss_weights/chain/loss_in");
  const auto& chains = cases_["loss_weights"]["chain_args"];
  ASSERT_FALSE(chains.empty());
  for (const auto& [name, args] : chains.items()) {
    LossWeighting w;
    w.prediction = args["v_parameterization"].get<bool>() ? PredictionType::kVPrediction : PredictionType::kEpsilon;
    if (!args["min_snr_gamma"].is_null()) w.min_snr_gamma = args["min_snr_gamma"].get<double>();
    w.scale_v_pred_loss_like_noise_pred = args["scale_v_pred_loss_like_noise_pred"].get<bool>();
    if (!args["v_pred_like_loss"].is_null()) w.v_pred_like_loss = args["v_pred_like_loss"].get<double>();
    w.debiased_estimation_loss = args["debiased_estimation_loss"].get<bool>();
    EXPECT_TRUE(AllClose(PostProcessLoss(loss_in, t, schedule, w), Get(*file_, "loss_weights/chain/" + name)))
        << name;
  }
}

TEST_F(TrainReference, HuberThresholdsMatchKohya) {
  NoiseSchedule schedule;
  auto t = Get(*file_, "loss/timesteps");
  const auto& args = cases_["conditional_loss"]["huber_c_args"];
  ASSERT_EQ(args.size(), 6u);
  for (const auto& [key, a] : args.items()) {
    HuberOptions o;
    auto schedule_kind = ParseHuberSchedule(a["huber_schedule"].get<std::string>());
    ASSERT_TRUE(schedule_kind.ok());
    o.schedule = *schedule_kind;
    o.huber_c = a["huber_c"].get<double>();
    o.huber_scale = a["huber_scale"].get<double>();
    EXPECT_TRUE(AllClose(HuberThreshold(schedule, o, t), Get(*file_, "loss/" + key))) << key;
  }
}

TEST_F(TrainReference, ConditionalLossesMatchKohya) {
  auto pred = Get(*file_, "loss/pred");
  auto target = Get(*file_, "loss/target");
  int checked = 0;
  for (const auto& [key, description] : cases_["conditional_loss"]["tensors"].items()) {
    std::vector<std::string> parts = absl::StrSplit(key, '/');
    if (parts.size() < 3 || parts[1] == "huber_c" || parts[1] == "pred" || parts[1] == "target") continue;
    auto type = ParseLossType(parts[1]);
    ASSERT_TRUE(type.ok()) << key;
    const std::string reduction_name = parts.back();
    Reduction reduction = reduction_name == "mean" ? Reduction::kMean
                          : reduction_name == "sum" ? Reduction::kSum
                                                    : Reduction::kNone;
    torch::Tensor huber_c;
    if (parts.size() == 4) huber_c = Get(*file_, "loss/huber_c/" + parts[2]);
    const double rtol = reduction == Reduction::kNone ? 1e-5 : 1e-5;
    EXPECT_TRUE(AllClose(ConditionalLoss(pred, target, *type, reduction, huber_c), Get(*file_, key), rtol, 1e-5))
        << key;
    ++checked;
  }
  EXPECT_EQ(checked, 24);
}

TEST(LossNames, BadValuesAreClearErrors) {
  auto bad = ParseLossType("mse");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("mse"), std::string::npos);
  EXPECT_FALSE(ParseHuberSchedule("linear").ok());
}

}  // namespace
}  // namespace lorad::diffusion
