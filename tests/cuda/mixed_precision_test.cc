// The tiny SDXL fixture's U-Net on the GPU with frozen weights in bf16 / fp16
// under autocast (as lorad-train runs mixed_precision=bf16 / fp16 on CUDA),
// against the float32 reference outputs computed by diffusers.
#include <cstdio>
#include <ostream>
#include <string>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "core/common/fixtures.h"
#include "core/common/torch_compat.h"
#include "core/io/safetensors.h"
#include "core/models/detect.h"
#include "core/models/unet.h"
#include "core/models/weights.h"
#include "core/nn/layer.h"
#include "tests/cuda/cuda_test_support.h"

namespace lorad {
namespace {

double RelL2(const torch::Tensor& got, const torch::Tensor& want) {
  auto g = got.detach().cpu().to(torch::kFloat64), w = want.detach().cpu().to(torch::kFloat64);
  return ((g - w).norm() / w.norm().clamp_min(1e-30)).item<double>();
}

struct Case {
  std::string name;
  torch::ScalarType dtype;
  double max_rel_l2;  // relative L2 error of eps against the float32 reference
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

class MixedPrecisionTest : public ::testing::TestWithParam<Case> {};

// Tolerances: the unit roundoff of bf16 is 2^-8 and of fp16 2^-11; a few dozen
// layers deep the U-Net's relative error stays within a few units of it. f32
// on the GPU (TF32 convolutions by default) stays within 1e-2.
INSTANTIATE_TEST_SUITE_P(Dtypes, MixedPrecisionTest,
                         ::testing::Values(Case{"f32", torch::kFloat32, 1e-2}, Case{"bf16", torch::kBFloat16, 5e-2},
                                           Case{"fp16", torch::kFloat16, 1e-2}),
                         [](const ::testing::TestParamInfo<Case>& info) { return info.param.name; });

TEST_P(MixedPrecisionTest, TinySdxlUNetMatchesFloat32Reference) {
  LORAD_SKIP_WITHOUT_CUDA();
  const Case& c = GetParam();
  const torch::Device cuda(torch::kCUDA, 0);
  auto ckpt = io::SafetensorsFile::Open(FixturePath("tiny_sdxl.safetensors"), io::SafetensorsFile::Access::kStreamed);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  auto ref = io::SafetensorsFile::Open(FixturePath("tiny_sdxl_reference.safetensors"));
  ASSERT_TRUE(ref.ok()) << ref.status();
  const nlohmann::json fixture = models::FixtureConfig((*ckpt)->metadata());
  const std::string prefix = "model.diffusion_model.";
  auto config = models::DetectUNetConfig(**ckpt, prefix, /*sdxl=*/true,
                                         fixture.contains("original_unet_config") ? &fixture["original_unet_config"]
                                                                                  : nullptr);
  ASSERT_TRUE(config.ok()) << config.status();
  models::UNet unet{nullptr};
  {
    nn::NoInitGuard no_init;
    unet = models::UNet(*config, torch::TensorOptions().dtype(torch::kFloat32));
  }
  ASSERT_TRUE(models::LoadModuleWeights(*unet, **ckpt, prefix).ok());
  unet->to(cuda, c.dtype);
  unet->eval();

  const auto get = [&](const std::string& name) {
    auto t = (*ref)->Get(name);
    EXPECT_TRUE(t.ok()) << t.status();
    return t.ok() ? t->to(cuda) : torch::Tensor();
  };
  const torch::Tensor x = get("unet.x"), timesteps = get("unet.timesteps"), context = get("unet.context");
  const torch::Tensor time_ids = get("unet.time_ids"), text_embeds = get("unet.text_embeds");
  const torch::Tensor want = get("unet.out");
  ASSERT_TRUE(x.defined() && want.defined());

  torch::NoGradGuard no_grad;
  compat::AutocastState saved = compat::CaptureAutocast();
  if (c.dtype != torch::kFloat32) {
    compat::AutocastState on = saved;
    on.gpu_enabled = true;
    on.gpu_dtype = c.dtype;
    compat::RestoreAutocast(on);
  }
  const torch::Tensor y =
      models::SdxlAddedConditioning(text_embeds.to(c.dtype), time_ids.slice(1, 0, 2), time_ids.slice(1, 2, 4),
                                    time_ids.slice(1, 4, 6), config->addition_time_embed_dim);
  const torch::Tensor eps = unet->forward(x.to(c.dtype), timesteps, context.to(c.dtype), y);
  compat::RestoreAutocast(saved);
  at::autocast::clear_cache();

  EXPECT_TRUE(eps.is_cuda());
  EXPECT_TRUE(torch::isfinite(eps).all().item<bool>()) << c.name << " forward produced NaN/inf";
  const double err = RelL2(eps, want);
  std::printf("[%s] tiny SDXL U-Net eps rel L2 vs float32 reference: %.3g (limit %.3g)\n", c.name.c_str(), err,
              c.max_rel_l2);
  EXPECT_LE(err, c.max_rel_l2) << c.name;
}

}  // namespace
}  // namespace lorad
