// Parity of the U-Net, VAE and noise schedule with the reference outputs stored
// in tiny_{sdxl,sd15}_reference.safetensors (computed by diffusers in float32
// from exactly the stored checkpoint values). Nothing about sizes is hard-coded:
// configs are detected from the checkpoint, cases come from the reference file.
#include <cstdio>

#include <gtest/gtest.h>

#include "core/common/fixtures.h"
#include "core/io/safetensors.h"
#include "core/models/detect.h"
#include "core/models/unet.h"
#include "core/models/vae.h"
#include "core/models/weights.h"
#include "core/nn/layer.h"

namespace lorad::models {
namespace {

double RelL2(const torch::Tensor& got, const torch::Tensor& want) {
  auto g = got.to(torch::kFloat64), w = want.to(torch::kFloat64);
  return ((g - w).norm() / w.norm().clamp_min(1e-30)).item<double>();
}

torch::Tensor Ref(const io::SafetensorsFile& ref, const std::string& name) {
  auto t = ref.Get(name);
  EXPECT_TRUE(t.ok()) << t.status();
  return t.ok() ? *t : torch::Tensor();
}

struct Fixture {
  std::unique_ptr<io::SafetensorsFile> ckpt;  // read as checkpoints are: streamed
  std::unique_ptr<io::SafetensorsFile> ref;
  nlohmann::json config;
};

Fixture OpenFixture(const std::string& model, const std::string& reference) {
  Fixture f;
  auto ckpt = io::SafetensorsFile::Open(FixturePath(model), io::SafetensorsFile::Access::kStreamed);
  EXPECT_TRUE(ckpt.ok()) << ckpt.status();
  auto ref = io::SafetensorsFile::Open(FixturePath(reference));
  EXPECT_TRUE(ref.ok()) << ref.status();
  if (ckpt.ok()) f.ckpt = std::move(*ckpt);
  if (ref.ok()) f.ref = std::move(*ref);
  if (f.ckpt) f.config = FixtureConfig(f.ckpt->metadata());
  return f;
}

const nlohmann::json* Sub(const nlohmann::json& j, const char* key) {
  return j.is_object() && j.contains(key) ? &j[key] : nullptr;
}

class ParityTest : public ::testing::TestWithParam<std::string> {};

TEST_P(ParityTest, UNetEpsAndEveryBlockOutput) {
  const std::string arch = GetParam();
  auto f = OpenFixture("tiny_" + arch + ".safetensors", "tiny_" + arch + "_reference.safetensors");
  ASSERT_TRUE(f.ckpt && f.ref);
  const std::string prefix = "model.diffusion_model.";
  const bool sdxl = f.ckpt->Has(prefix + "label_emb.0.0.weight");
  auto config = DetectUNetConfig(*f.ckpt, prefix, sdxl, Sub(f.config, "original_unet_config"));
  ASSERT_TRUE(config.ok()) << config.status();
  UNet unet{nullptr};
  {
    nn::NoInitGuard no_init;
    unet = UNet(*config, torch::TensorOptions().dtype(torch::kFloat32));
  }
  ASSERT_TRUE(LoadModuleWeights(*unet, *f.ckpt, prefix).ok());
  unet->eval();
  torch::NoGradGuard no_grad;

  torch::Tensor y;
  if (config->adm_in_channels > 0) {
    // y rebuilt from its parts checks SdxlAddedConditioning too.
    auto time_ids = Ref(*f.ref, "unet.time_ids");
    y = SdxlAddedConditioning(Ref(*f.ref, "unet.text_embeds"), time_ids.slice(1, 0, 2), time_ids.slice(1, 2, 4),
                              time_ids.slice(1, 4, 6), config->addition_time_embed_dim);
    const double err = RelL2(y, Ref(*f.ref, "unet.y"));
    std::printf("[%s] unet.y rel L2 %.3g\n", arch.c_str(), err);
    EXPECT_LE(err, 1e-4);
  }
  std::map<std::string, torch::Tensor> debug;
  auto eps = unet->ForwardWithDebug(Ref(*f.ref, "unet.x"), Ref(*f.ref, "unet.timesteps"), Ref(*f.ref, "unet.context"),
                                    y, &debug);
  const double err = RelL2(eps, Ref(*f.ref, "unet.out"));
  std::printf("[%s] unet.out rel L2 %.3g\n", arch.c_str(), err);
  EXPECT_LE(err, 1e-4);
  int compared = 0;
  for (const auto& name : f.ref->Names()) {
    if (name.rfind("unet.dbg.", 0) != 0) continue;
    const std::string key = name.substr(9);
    ASSERT_TRUE(debug.count(key)) << "no debug output for " << name;
    const double e = RelL2(debug[key], Ref(*f.ref, name));
    std::printf("[%s] %s rel L2 %.3g\n", arch.c_str(), name.c_str(), e);
    EXPECT_LE(e, 1e-4) << name;
    ++compared;
  }
  EXPECT_GT(compared, 0);
}

TEST_P(ParityTest, VaePosteriorAndDecoder) {
  const std::string arch = GetParam();
  auto f = OpenFixture("tiny_" + arch + ".safetensors", "tiny_" + arch + "_reference.safetensors");
  ASSERT_TRUE(f.ckpt && f.ref);
  const std::string prefix = "first_stage_model.";
  auto config = DetectVaeConfig(*f.ckpt, prefix, 0.18215, Sub(f.config, "original_vae_config"));
  ASSERT_TRUE(config.ok()) << config.status();
  Vae vae(*config, torch::TensorOptions().dtype(torch::kFloat32));
  ASSERT_TRUE(LoadModuleWeights(*vae, *f.ckpt, prefix).ok());
  torch::NoGradGuard no_grad;
  auto image = Ref(*f.ref, "vae.image");
  std::vector<std::pair<std::string, torch::Tensor>> got;
  got.emplace_back("vae.encoder_out", vae->EncoderOut(image));
  auto posterior = vae->Encode(image);
  got.emplace_back("vae.posterior_mean", posterior.mean);
  got.emplace_back("vae.posterior_logvar", posterior.logvar);
  got.emplace_back("vae.decoded", vae->Decode(Ref(*f.ref, "vae.latent")));
  for (const auto& [name, t] : got) {
    const double e = RelL2(t, Ref(*f.ref, name));
    std::printf("[%s] %s rel L2 %.3g\n", arch.c_str(), name.c_str(), e);
    EXPECT_LE(e, 1e-4) << name;
  }
}

TEST_P(ParityTest, DdpmScheduleAlphasCumprod) {
  const std::string arch = GetParam();
  auto ref = io::SafetensorsFile::Open(FixturePath("tiny_" + arch + "_reference.safetensors"));
  ASSERT_TRUE(ref.ok()) << ref.status();
  auto want = Ref(**ref, "sched.alphas_cumprod");
  // scaled_linear: betas = linspace(sqrt(0.00085), sqrt(0.012), N)^2 in float32, then cumprod(1 - betas).
  auto betas = torch::linspace(std::sqrt(0.00085), std::sqrt(0.012), want.size(0), torch::kFloat32).pow(2);
  auto got = torch::cumprod(1.0 - betas, 0);
  const double e = RelL2(got, want);
  std::printf("[%s] sched.alphas_cumprod rel L2 %.3g\n", arch.c_str(), e);
  EXPECT_LE(e, 1e-4);
}

INSTANTIATE_TEST_SUITE_P(Tiny, ParityTest, ::testing::Values("sd15", "sdxl"));

}  // namespace
}  // namespace lorad::models
