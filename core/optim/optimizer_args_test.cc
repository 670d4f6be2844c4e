// optimizer_type / optimizer_args handling, Describe(), ClipGradNorm.
#include <gtest/gtest.h>

#include "core/optim/optimizer.h"

namespace lorad::optim {
namespace {

std::vector<ParamGroup> Groups(double lr = 1e-3) {
  return {ParamGroup{"unet", {torch::ones({8, 4}, torch::requires_grad())}, lr},
          ParamGroup{"text_encoder", {torch::ones({4}, torch::requires_grad())}, lr / 2}};
}

std::string ErrorOf(const std::string& type, const std::vector<std::string>& args, double lr = 1e-3) {
  auto opt = CreateOptimizer(type, args, Groups(lr));
  return opt.ok() ? std::string() : std::string(opt.status().message());
}

TEST(OptimizerArgs, AcceptsKohyaNamesCaseInsensitively) {
  for (const std::string& type : {"adamw", "AdamW8bit", "bitsandbytes.optim.AdamW8bit", "LION", "lion_pytorch.Lion",
                                  "transformers.optimization.Adafactor", "prodigyopt.Prodigy", "came_pytorch.CAME",
                                  "LoraEasyCustomOptimizer.came.CAME"}) {
    std::vector<ParamGroup> groups = Groups();
    if (type == "prodigyopt.Prodigy") groups[1].lr = groups[0].lr;
    auto opt = CreateOptimizer(type, {}, std::move(groups));
    EXPECT_TRUE(opt.ok()) << type << ": " << opt.status();
  }
}

TEST(OptimizerArgs, ErrorsNameTheCause) {
  std::string e = ErrorOf("AdamW9bit", {});
  EXPECT_NE(e.find("AdamW9bit"), std::string::npos) << e;
  EXPECT_NE(e.find("prodigyopt.Prodigy"), std::string::npos) << e;  // lists accepted types

  e = ErrorOf("AdamW", {"weight_decy=0.1"});
  EXPECT_NE(e.find("weight_decy"), std::string::npos) << e;
  EXPECT_NE(e.find("weight_decay"), std::string::npos) << e;  // lists accepted args

  e = ErrorOf("AdamW", {"weight_decay=abc"});
  EXPECT_NE(e.find("weight_decay=abc"), std::string::npos) << e;
  e = ErrorOf("AdamW", {"weight_decay"});
  EXPECT_NE(e.find("key=value"), std::string::npos) << e;
  e = ErrorOf("AdamW", {"betas=0.9,1.0"});
  EXPECT_NE(e.find("betas[1]"), std::string::npos) << e;
  e = ErrorOf("AdamW", {"betas=0.9"});
  EXPECT_NE(e.find("betas"), std::string::npos) << e;
  e = ErrorOf("AdamW", {"eps=0"});
  EXPECT_NE(e.find("eps"), std::string::npos) << e;
  e = ErrorOf("AdamW", {}, -1e-4);
  EXPECT_NE(e.find("learning rate"), std::string::npos) << e;
  e = ErrorOf("Prodigy", {"decouple=maybe"});
  EXPECT_NE(e.find("decouple"), std::string::npos) << e;
  e = ErrorOf("Prodigy", {"d_coef=-2"});
  EXPECT_NE(e.find("d_coef"), std::string::npos) << e;
  e = ErrorOf("CAME", {"betas=0.9,0.999"});
  EXPECT_NE(e.find("3"), std::string::npos) << e;
  e = ErrorOf("Lion", {"lr=1e-4"});
  EXPECT_NE(e.find("lr"), std::string::npos) << e;
  e = ErrorOf("AdamW", {"amsgrad=True", "amsgrad=False"});
  EXPECT_NE(e.find("twice"), std::string::npos) << e;
}

// kohya turns relative_step on when warmup_init=True (transformers alone would raise).
TEST(OptimizerArgs, AdafactorWarmupInitForcesRelativeStep) {
  auto opt = CreateOptimizer("Adafactor", {"relative_step=False", "warmup_init=True"}, Groups());
  ASSERT_TRUE(opt.ok()) << opt.status();
  EXPECT_TRUE((*opt)->UsesInternalLr());
}

TEST(OptimizerArgs, ParsesPythonLiterals) {
  auto opt = CreateOptimizer("Prodigy",
                             {"betas=(0.9, 0.99)", "beta3=None", "decouple=true", "use_bias_correction=1",
                              "growth_rate=inf", "d_coef=2", "weight_decay=1e-2"},
                             {ParamGroup{"unet", {torch::ones({3}, torch::requires_grad())}, 1.0}});
  ASSERT_TRUE(opt.ok()) << opt.status();
  EXPECT_EQ((*opt)->Describe(),
            "prodigyopt.prodigy.Prodigy(betas=(0.9, 0.99),beta3=None,decouple=True,use_bias_correction=1,"
            "growth_rate=inf,d_coef=2,weight_decay=1e-2)");
  auto plain = CreateOptimizer("adamw", {}, Groups());
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ((*plain)->Describe(), "torch.optim.adamw.AdamW");
  auto ada = CreateOptimizer("Adafactor", {"scale_parameter=False"}, Groups());
  ASSERT_TRUE(ada.ok());
  EXPECT_EQ((*ada)->Describe(), "transformers.optimization.Adafactor(scale_parameter=False,relative_step=True)");
}

TEST(OptimizerArgs, ProdigyRejectsDifferentGroupLrs) {
  auto opt = CreateOptimizer("Prodigy", {}, Groups(1.0));
  ASSERT_TRUE(opt.ok());
  for (int g = 0; g < 2; ++g) (*opt)->group(g).params[0].mutable_grad() = torch::ones_like((*opt)->group(g).params[0]);
  absl::Status st = (*opt)->Step();
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.message().find("same lr"), std::string::npos) << st;
}

TEST(OptimizerArgs, GroupLrsAndZeroGrad) {
  auto opt = CreateOptimizer("AdamW", {}, Groups(1e-3));
  ASSERT_TRUE(opt.ok());
  EXPECT_EQ((*opt)->lr(1), 5e-4);
  EXPECT_EQ((*opt)->group(1).name, "text_encoder");
  EXPECT_TRUE((*opt)->SetLr(1, 2e-4).ok());
  EXPECT_EQ((*opt)->lr(1), 2e-4);
  EXPECT_EQ((*opt)->base_lr(1), 5e-4);
  EXPECT_FALSE((*opt)->SetLr(0, -1).ok());
  EXPECT_FALSE((*opt)->SetLr(5, 1).ok());
  torch::Tensor p = (*opt)->group(0).params[0];
  p.mutable_grad() = torch::ones_like(p);
  ASSERT_TRUE((*opt)->Step().ok());  // group 1 has no grad: skipped
  EXPECT_EQ((*opt)->step_count(), 1);
  (*opt)->ZeroGrad();
  EXPECT_FALSE(p.grad().defined());
}

TEST(ClipGradNorm, MatchesTorchDefinition) {
  torch::Tensor a = torch::tensor({3.0f, 0.0f}).requires_grad_(), b = torch::tensor({4.0f}).requires_grad_();
  a.mutable_grad() = torch::tensor({3.0f, 0.0f});
  b.mutable_grad() = torch::tensor({4.0f});
  auto norm = ClipGradNorm({a, b}, 1.0);
  ASSERT_TRUE(norm.ok());
  EXPECT_NEAR(*norm, 5.0, 1e-6);
  const float coef = static_cast<float>(1.0 / (5.0 + 1e-6));
  EXPECT_NEAR(a.grad()[0].item<float>(), 3.0f * coef, 1e-7);
  EXPECT_NEAR(b.grad()[0].item<float>(), 4.0f * coef, 1e-7);
  auto again = ClipGradNorm({a, b}, 0.0);  // 0 disables clipping but reports the norm
  ASSERT_TRUE(again.ok());
  EXPECT_NEAR(*again, 1.0, 1e-5);
  EXPECT_NEAR(b.grad()[0].item<float>(), 4.0f * coef, 1e-7);
  EXPECT_FALSE(ClipGradNorm({a}, -1).ok());
}

}  // namespace
}  // namespace lorad::optim
