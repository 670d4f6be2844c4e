#include <gtest/gtest.h>

#include "core/networks/metadata.h"

namespace lorad::networks {
namespace {

TEST(Sha256, KnownVectors) {
  EXPECT_EQ(Sha256Hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(Sha256Hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(Sha256Hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  EXPECT_EQ(Sha256Hex(std::string(1000000, 'a')), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(PythonFloat, MatchesPythonRepr) {
  EXPECT_EQ(PythonFloat(1.0), "1.0");
  EXPECT_EQ(PythonFloat(0.0001), "0.0001");
  EXPECT_EQ(PythonFloat(1e-05), "1e-05");
  EXPECT_EQ(PythonFloat(0.1), "0.1");
  EXPECT_EQ(PythonFloat(16.0), "16.0");
  EXPECT_EQ(PythonFloat(123456.5), "123456.5");
  EXPECT_EQ(PythonFloat(1e16), "1e+16");
  EXPECT_EQ(PythonFloat(-2.5e-7), "-2.5e-07");
  EXPECT_EQ(PythonFloat(0.00012), "0.00012");
}

TEST(Metadata, BuilderRejectsUnknownKeys) {
  LoraMetadataBuilder b;
  EXPECT_TRUE(b.SetFloat("ss_learning_rate", 1e-4).ok());
  EXPECT_TRUE(b.SetInt("ss_clip_skip", std::nullopt).ok());
  EXPECT_TRUE(b.SetBool("ss_cache_latents", true).ok());
  auto bad = b.Set("ss_lerning_rate", "1");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.message().find("ss_lerning_rate"), std::string::npos);
  NetworkConfig c;
  c.dim = 32;
  c.alpha = 16;
  b.SetNetwork(c);
  b.SetBaseModel(BaseModel::kSdxl, false);
  const auto& m = b.metadata();
  EXPECT_EQ(m.at("ss_learning_rate"), "0.0001");
  EXPECT_EQ(m.at("ss_clip_skip"), "None");
  EXPECT_EQ(m.at("ss_cache_latents"), "True");
  EXPECT_EQ(m.at("ss_network_module"), "networks.lora");
  EXPECT_EQ(m.at("ss_network_dim"), "32");
  EXPECT_EQ(m.at("ss_network_alpha"), "16.0");
  EXPECT_EQ(m.at("ss_base_model_version"), "sdxl_base_v1-0");
  EXPECT_EQ(b.MinimalMetadata().size(), 4u);
}

TEST(Metadata, ModelSpec) {
  ModelSpecInput in;
  in.base = BaseModel::kSd15;
  in.date = "2024-01-01T00:00:00";
  in.min_timestep = 100;
  in.clip_skip = 2;
  auto m = BuildModelSpec(in);
  EXPECT_EQ(m.at("modelspec.sai_model_spec"), "1.0.1");
  EXPECT_EQ(m.at("modelspec.architecture"), "stable-diffusion-v1/lora");
  EXPECT_EQ(m.at("modelspec.implementation"), "diffusers");
  EXPECT_EQ(m.at("modelspec.title"), "LoRA@2024-01-01T00:00:00");
  EXPECT_EQ(m.at("modelspec.resolution"), "512x512");
  EXPECT_EQ(m.at("modelspec.timestep_range"), "100,1000");
  EXPECT_EQ(m.at("modelspec.encoder_layer"), "2");
  in.base = BaseModel::kSdxl;
  EXPECT_EQ(BuildModelSpec(in).at("modelspec.architecture"), "stable-diffusion-xl-v1-base/lora");
}

TEST(Metadata, HashesCoverDataAndOnlySsKeys) {
  io::NamedTensors t = {{"a.alpha", torch::tensor(1.0f)}, {"a.lora_down.weight", torch::ones({2, 3})}};
  auto h1 = ComputeSafetensorsHashes(t, {{"ss_x", "1"}, {"modelspec.title", "one"}});
  auto h2 = ComputeSafetensorsHashes(t, {{"ss_x", "1"}, {"modelspec.title", "two"}});
  ASSERT_TRUE(h1.ok() && h2.ok());
  EXPECT_EQ(h1->model_hash, h2->model_hash);
  EXPECT_EQ(h1->model_hash.size(), 64u);
  // Small file: the legacy window is empty -> sha256("")[:8].
  EXPECT_EQ(h1->legacy_hash, "e3b0c442");
}

}  // namespace
}  // namespace lorad::networks
