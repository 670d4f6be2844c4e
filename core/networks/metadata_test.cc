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

TEST(Metadata, BuilderSetsKeysInPythonForm) {
  LoraMetadataBuilder b;
  b.SetFloat("ss_learning_rate", 1e-4);
  b.SetInt("ss_clip_skip", std::nullopt);
  b.SetBool("ss_cache_latents", true);
  NetworkConfig c;
  c.dim = 32;
  c.alpha = 16;
  b.SetNetwork(c);
  b.SetBaseModel(BaseModel::kSdxl, false);
  auto m = b.Build();
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->at("ss_learning_rate"), "0.0001");
  EXPECT_EQ(m->at("ss_clip_skip"), "None");
  EXPECT_EQ(m->at("ss_cache_latents"), "True");
  EXPECT_EQ(m->at("ss_network_module"), "networks.lora");
  EXPECT_EQ(m->at("ss_network_dim"), "32");
  EXPECT_EQ(m->at("ss_network_alpha"), "16.0");
  EXPECT_EQ(m->at("ss_network_dropout"), "None");
  EXPECT_EQ(m->at("ss_base_model_version"), "sdxl_base_v1-0");
  EXPECT_EQ(m->at("ss_v2"), "False");
  auto minimal = b.BuildMinimal();
  ASSERT_TRUE(minimal.ok());
  EXPECT_EQ(minimal->size(), 4u);
}

TEST(Metadata, BuilderKeepsTheFirstError) {
  LoraMetadataBuilder b;
  b.SetFloat("ss_learning_rate", 1e-4);
  b.Set("ss_lerning_rate", "1");       // the typo: first error
  b.Set("ss_learning_rate", "0.1");    // set twice: not reported, the first error stays
  b.Set("ss_output_name", "fine");
  ASSERT_FALSE(b.status().ok());
  EXPECT_EQ(b.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(b.status().message().find("ss_lerning_rate"), std::string::npos) << b.status();
  auto m = b.Build();
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status(), b.status());
  EXPECT_FALSE(b.BuildMinimal().ok());
}

TEST(Metadata, BuilderRefusesDuplicatesAndBadValues) {
  LoraMetadataBuilder twice;
  twice.Set("ss_output_name", "a");
  twice.Set("ss_output_name", "b");
  ASSERT_FALSE(twice.status().ok());
  EXPECT_NE(twice.status().message().find("set twice"), std::string::npos) << twice.status();

  LoraMetadataBuilder latin1;
  latin1.Set("ss_training_comment", "caf\xe9");
  ASSERT_FALSE(latin1.status().ok());
  EXPECT_NE(latin1.status().message().find("ss_training_comment"), std::string::npos) << latin1.status();

  LoraMetadataBuilder json;
  json.SetJson("ss_tag_frequency", {{"dir", {{"caf\xe9", 1}}}});
  ASSERT_FALSE(json.status().ok());
  EXPECT_NE(json.status().message().find("ss_tag_frequency"), std::string::npos) << json.status();

  LoraMetadataBuilder utf8;
  utf8.Set("ss_training_comment", "caf\xc3\xa9 \xe2\x9c\x93");
  EXPECT_TRUE(utf8.status().ok()) << utf8.status();
}

// A known config and run: the ss_* and modelspec.* values a LoRA file gets.
TEST(Metadata, BuildLoraMetadataFromConfigAndFacts) {
  train::TrainConfig config;
  config.pretrained_model_name_or_path = "/models/sd_xl_base_1.0.safetensors";
  config.output_name = "mylora";
  config.learning_rate = 1e-4;
  config.unet_lr = 2e-4;
  config.optimizer_type = "AdamW";
  config.lr_scheduler = "cosine";
  config.mixed_precision = "bf16";
  config.train_batch_size = 2;
  config.gradient_accumulation_steps = 3;
  config.clip_skip = 2;
  config.metadata_author = "me";
  NetworkConfig network;
  network.dim = 16;
  network.alpha = 8;

  TrainingFacts facts;
  facts.base = BaseModel::kSdxl;
  facts.network = network;
  facts.optimizer = "AdamW(weight_decay=0.01)";
  facts.seed = 1234;
  facts.started_at = 1700000000;
  facts.finished_at = 1700000600;
  facts.date = "2024-01-01T00:00:00";
  facts.resolution = {1024, 768};
  facts.num_train_images = 40;
  facts.num_batches_per_epoch = 20;
  facts.num_epochs = 3;
  facts.epoch = 2;
  facts.steps = 14;
  facts.max_train_steps = 21;
  facts.lr_warmup_steps = 2;
  facts.implementation_version = "lorad/1.2.3";

  auto m = BuildLoraMetadata(config, facts);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->at("ss_network_module"), "networks.lora");
  EXPECT_EQ(m->at("ss_network_dim"), "16");
  EXPECT_EQ(m->at("ss_network_alpha"), "8.0");
  EXPECT_EQ(m->at("ss_optimizer"), "AdamW(weight_decay=0.01)");
  EXPECT_EQ(m->at("ss_learning_rate"), "0.0001");
  EXPECT_EQ(m->at("ss_unet_lr"), "0.0002");
  EXPECT_EQ(m->at("ss_text_encoder_lr"), "None");
  EXPECT_EQ(m->at("ss_lr_scheduler"), "cosine");
  EXPECT_EQ(m->at("ss_mixed_precision"), "bf16");
  EXPECT_EQ(m->at("ss_resolution"), "(1024, 768)");
  EXPECT_EQ(m->at("ss_steps"), "14");
  EXPECT_EQ(m->at("ss_epoch"), "2");
  EXPECT_EQ(m->at("ss_max_train_steps"), "21");
  EXPECT_EQ(m->at("ss_seed"), "1234");
  EXPECT_EQ(m->at("ss_session_id"), "1234");
  EXPECT_EQ(m->at("ss_training_started_at"), "1700000000");
  EXPECT_EQ(m->at("ss_training_finished_at"), "1700000600");
  EXPECT_EQ(m->at("ss_total_batch_size"), "6");
  EXPECT_EQ(m->at("ss_batch_size_per_device"), "2");
  EXPECT_EQ(m->at("ss_clip_skip"), "2");
  EXPECT_EQ(m->at("ss_sd_model_name"), "sd_xl_base_1.0.safetensors");
  EXPECT_EQ(m->at("ss_vae_name"), "None");
  EXPECT_EQ(m->at("ss_training_comment"), "None");
  EXPECT_EQ(m->at("ss_base_model_version"), "sdxl_base_v1-0");
  EXPECT_EQ(m->at("modelspec.architecture"), "stable-diffusion-xl-v1-base/lora");
  EXPECT_EQ(m->at("modelspec.title"), "mylora");
  EXPECT_EQ(m->at("modelspec.resolution"), "1024x768");
  EXPECT_EQ(m->at("modelspec.date"), "2024-01-01T00:00:00");
  EXPECT_EQ(m->at("modelspec.author"), "me");
  EXPECT_EQ(m->at("modelspec.encoder_layer"), "2");
  EXPECT_EQ(m->at("modelspec.implementation_version"), "lorad/1.2.3");
  // No dataset facts: the dataset keys are left out.
  EXPECT_EQ(m->count("ss_tag_frequency"), 0u);
  EXPECT_EQ(m->count("ss_num_reg_images"), 0u);
  // Pure: the same inputs give the same map.
  EXPECT_EQ(*m, *BuildLoraMetadata(config, facts));

  // The dataset's facts, in kohya's JSON layout.
  DatasetFacts d;
  d.num_reg_images = 4;
  d.tag_frequency = {{"2_sks dog", {{"red", 1}, {"sks dog", 2}}}, {"1_dog", {{"dog", 1}}}};
  DatasetGroupFacts g;
  g.batch_size = 2;
  g.num_train_images = 4;
  g.num_reg_images = 4;
  g.resolution_width = g.resolution_height = 64;
  g.subsets.push_back({.image_dir = "2_sks dog", .is_reg = false, .img_count = 2, .num_repeats = 2});
  g.subsets.push_back({.image_dir = "1_dog", .is_reg = true, .img_count = 1, .num_repeats = 4, .class_tokens = "dog"});
  g.buckets = {{64, 64, 8}};
  g.mean_img_ar_error = 0.25;
  d.groups = {g};
  d.buckets = {{64, 64, 8}};
  d.mean_img_ar_error = 0.25;
  facts.dataset = d;
  m = BuildLoraMetadata(config, facts);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->at("ss_num_reg_images"), "4");
  EXPECT_EQ(m->at("ss_num_train_images"), "40");
  EXPECT_EQ(m->at("ss_tag_frequency"), R"({"1_dog":{"dog":1},"2_sks dog":{"red":1,"sks dog":2}})");
  EXPECT_EQ(m->at("ss_dataset_dirs"), R"({"2_sks dog":{"img_count":2,"n_repeats":2}})");
  EXPECT_EQ(m->at("ss_reg_dataset_dirs"), R"({"1_dog":{"img_count":1,"n_repeats":4}})");
  EXPECT_EQ(m->at("ss_bucket_info"), R"({"buckets":{"0":{"count":8,"resolution":[64,64]}},"mean_img_ar_error":0.25})");
  EXPECT_NE(m->at("ss_datasets").find(R"("tag_frequency":{"1_dog":{"dog":1},"2_sks dog":{"red":1,"sks dog":2}})"),
            std::string::npos)
      << m->at("ss_datasets");

  // --no_metadata: the four network keys only.
  config.no_metadata = true;
  m = BuildLoraMetadata(config, facts);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->size(), 4u);
  EXPECT_EQ(m->at("ss_network_dim"), "16");
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
  io::Metadata m = {{"ss_x", "1"}, {"modelspec.title", "one"}};
  ASSERT_TRUE(AddSafetensorsHashes(t, m).ok());
  EXPECT_EQ(m.at("sshs_model_hash"), h1->model_hash);
  EXPECT_EQ(m.at("sshs_legacy_hash"), "e3b0c442");
}

}  // namespace
}  // namespace lorad::networks
