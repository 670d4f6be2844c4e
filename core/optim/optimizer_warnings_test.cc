// kohya's optimizer advice (library/train_util.py get_optimizer), reworded.
#include "core/optim/optimizer_warnings.h"

#include <gtest/gtest.h>

namespace lorad::optim {
namespace {

std::vector<std::string> Codes(const OptimizerWarningInputs& in) {
  std::vector<std::string> out;
  for (const OptimizerWarning& w : OptimizerWarnings(in)) out.push_back(w.code);
  return out;
}

bool Has(const OptimizerWarningInputs& in, const std::string& code) {
  for (const std::string& c : Codes(in)) {
    if (c == code) return true;
  }
  return false;
}

OptimizerWarningInputs Base(const std::string& optimizer, double lr) {
  OptimizerWarningInputs in;
  in.optimizer = optimizer;
  in.learning_rate = lr;
  in.group_lrs = {lr, lr};
  in.lr_scheduler = "constant";
  in.max_grad_norm = 1.0;
  return in;
}

TEST(OptimizerWarnings, DAdaptAndProdigyWantLrNearOne) {
  for (const std::string& name : {"DAdaptAdam", "DAdaptAdamPreprint", "DAdaptLion", "DAdaptSGD", "DAdaptAdaGrad",
                                  "DAdaptAdan", "Prodigy"}) {
    EXPECT_TRUE(Has(Base(name, 1e-4), "dadapt_lr_low")) << name;
    EXPECT_TRUE(Has(Base(name, 0.1), "dadapt_lr_low")) << name;  // kohya: lr <= 0.1
    EXPECT_TRUE(Codes(Base(name, 1.0)).empty()) << name;
  }
  EXPECT_FALSE(Has(Base("AdamW", 1e-4), "dadapt_lr_low"));
  // kohya looks at the first group (the text encoder's when trained).
  OptimizerWarningInputs in = Base("DAdaptAdam", 1.0);
  in.group_lrs = {0.05, 1.0};
  EXPECT_TRUE(Has(in, "dadapt_lr_low"));
  auto w = OptimizerWarnings(Base("Prodigy", 1e-4));
  ASSERT_FALSE(w.empty());
  EXPECT_NE(w[0].message.find("1.0"), std::string::npos) << w[0].message;
}

TEST(OptimizerWarnings, DAdaptWithSeveralGroupLrs) {
  OptimizerWarningInputs in = Base("DAdaptAdaGrad", 1.0);
  in.group_lrs = {1.0, 0.5};
  auto w = OptimizerWarnings(in);
  ASSERT_EQ(w.size(), 1u);
  EXPECT_EQ(w[0].code, "dadapt_group_lrs");
  EXPECT_NE(w[0].message.find("only the first group"), std::string::npos) << w[0].message;
  in.optimizer = "DAdaptLion";
  w = OptimizerWarnings(in);
  ASSERT_EQ(w.size(), 1u);
  EXPECT_NE(w[0].message.find("rejects"), std::string::npos) << w[0].message;
  in.group_lrs = {1.0, 1.0};
  EXPECT_TRUE(OptimizerWarnings(in).empty());
}

TEST(OptimizerWarnings, AdafactorRelativeStep) {
  OptimizerWarningInputs in = Base("Adafactor", 1e-4);  // relative_step defaults to True (kohya)
  EXPECT_TRUE(Has(in, "adafactor_relative_step_lr"));
  EXPECT_FALSE(Has(in, "adafactor_group_lrs_ignored"));
  EXPECT_FALSE(Has(in, "adafactor_warmup_ignored"));
  in.unet_lr = 1e-4;
  EXPECT_TRUE(Has(in, "adafactor_group_lrs_ignored"));
  in.lr_warmup_steps = 100;
  EXPECT_TRUE(Has(in, "adafactor_warmup_ignored"));
  in = Base("Adafactor", 0.0);
  EXPECT_FALSE(Has(in, "adafactor_relative_step_lr"));
  // Fixed-lr advice does not apply with relative_step.
  EXPECT_FALSE(Has(in, "adafactor_clip_grad_norm"));
  EXPECT_FALSE(Has(in, "adafactor_scheduler"));
  // warmup_init turns relative_step on.
  in = Base("Adafactor", 1e-3);
  in.optimizer_args = {"relative_step=False", "warmup_init=True"};
  EXPECT_TRUE(Has(in, "adafactor_warmup_init"));
  EXPECT_TRUE(Has(in, "adafactor_relative_step_lr"));
}

TEST(OptimizerWarnings, AdafactorFixedLr) {
  OptimizerWarningInputs in = Base("Adafactor", 1e-4);
  in.optimizer_args = {"relative_step=False", "scale_parameter=False", "clip_threshold=2.0"};
  std::vector<std::string> codes = Codes(in);
  EXPECT_EQ(codes, (std::vector<std::string>{"adafactor_clip_grad_norm", "adafactor_scheduler",
                                             "adafactor_clip_threshold"}));
  in.max_grad_norm = 0;
  in.lr_scheduler = "constant_with_warmup";
  in.optimizer_args = {"relative_step=False"};
  EXPECT_TRUE(Codes(in).empty());
}

TEST(OptimizerWarnings, SgdNesterov8bitAndLoraEasyCame) {
  OptimizerWarningInputs in = Base("SGDNesterov8bit", 1e-2);
  EXPECT_EQ(Codes(in), (std::vector<std::string>{"sgd8bit_momentum", "sgd8bit_not_nesterov"}));
  in.optimizer_args = {"momentum=0.8"};
  EXPECT_EQ(Codes(in), (std::vector<std::string>{"sgd8bit_not_nesterov"}));
  EXPECT_TRUE(Codes(Base("SGDNesterov", 1e-2)).empty());
  in = Base("LoraEasyCAME", 1e-4);
  in.optimizer_args = {"weight_decay=0.04", "weight_decouple=False"};
  EXPECT_EQ(Codes(in), (std::vector<std::string>{"came_weight_decay_no_effect"}));
  in.optimizer_args = {"weight_decay=0.04"};
  EXPECT_TRUE(Codes(in).empty());
}

TEST(OptimizerWarnings, BadArgsGiveNoWarnings) {
  OptimizerWarningInputs in = Base("Adafactor", 1e-4);
  in.optimizer_args = {"relative_step"};
  EXPECT_TRUE(Codes(in).empty());
}

}  // namespace
}  // namespace lorad::optim
