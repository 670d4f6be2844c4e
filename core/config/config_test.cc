#include "core/config/config.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/base/testing/scoped_temp_dir.h"

#include <fstream>
#include <iterator>

#include <gtest/gtest.h>

namespace lorad::train {
namespace {

constexpr char kRequired[] = R"(
pretrained_model_name_or_path = "/models/base.safetensors"
train_data_dir = "/data/train"
)";

TEST(ConfigTest, DefaultsAreKohyas) {
  auto config = ParseTrainConfig(kRequired, {});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->network_module, "networks.lora");
  EXPECT_EQ(config->network_dim, 4);
  EXPECT_DOUBLE_EQ(config->network_alpha, 1.0);
  EXPECT_DOUBLE_EQ(config->learning_rate, 2e-6);
  EXPECT_EQ(config->lr_scheduler, "constant");
  EXPECT_EQ(config->train_batch_size, 1);
  EXPECT_EQ(config->max_train_steps, 1600);
  EXPECT_EQ(config->mixed_precision, "no");
  EXPECT_EQ(config->loss_type, "l2");
  EXPECT_DOUBLE_EQ(config->max_grad_norm, 1.0);
  EXPECT_FALSE(config->seed.has_value());
  EXPECT_TRUE(config->warnings.empty());
}

TEST(ConfigTest, FlatAndSectionedFormsAndOverrides) {
  const char* toml = R"(
[model_arguments]
pretrained_model_name_or_path = "/m.safetensors"
v_parameterization = true
[additional_network_arguments]
network_dim = 32
network_alpha = 16
network_args = ["conv_dim=8", "conv_alpha=4"]
network_train_unet_only = true
[optimizer_arguments]
optimizer_type = "AdamW8bit"
optimizer_args = ["weight_decay=0.1", "betas=0.9,0.99"]
learning_rate = 1e-4
unet_lr = 2e-4
text_encoder_lr = 5e-5
lr_scheduler = "cosine_with_restarts"
lr_scheduler_num_cycles = 3
lr_warmup_steps = 0.1
[training_arguments]
train_batch_size = 4
max_train_epochs = 10
mixed_precision = "bf16"
full_bf16 = true
gradient_checkpointing = true
seed = 1234
clip_skip = 2
max_token_length = 225
noise_offset = 0.0357
min_snr_gamma = 5
resolution = [832, 1216]
train_data_dir = "/d"
)";
  auto config = ParseTrainConfig(toml, {{"network_dim", "16"}, {"seed", "7"}, {"cache_latents", "true"}});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_TRUE(config->v_parameterization);
  EXPECT_EQ(config->network_dim, 16);  // the command line wins
  EXPECT_DOUBLE_EQ(config->network_alpha, 16);
  EXPECT_EQ(config->NetworkArgsMap().at("conv_dim"), "8");
  EXPECT_EQ(config->optimizer_args.size(), 2u);
  EXPECT_DOUBLE_EQ(config->UnetLr(), 2e-4);
  EXPECT_DOUBLE_EQ(config->TextEncoderLr(), 5e-5);
  EXPECT_EQ(config->lr_scheduler_num_cycles, 3);
  EXPECT_DOUBLE_EQ(config->lr_warmup_steps, 0.1);
  EXPECT_EQ(config->max_train_epochs, 10);
  EXPECT_TRUE(config->full_bf16);
  EXPECT_EQ(config->seed, 7);
  EXPECT_EQ(config->clip_skip, 2);
  EXPECT_EQ(config->max_token_length, 225);
  EXPECT_DOUBLE_EQ(*config->noise_offset, 0.0357);
  EXPECT_DOUBLE_EQ(*config->min_snr_gamma, 5);
  EXPECT_TRUE(config->cache_latents);
  auto wh = config->ResolutionWH(1024);
  ASSERT_TRUE(wh.ok());
  EXPECT_EQ(wh->first, 832);
  EXPECT_EQ(wh->second, 1216);
  EXPECT_EQ(config->explicitly_set.at("network_dim"), "16");
}

TEST(ConfigTest, UnknownKeyWarnsAndNoEffectKeysAreQuiet) {
  auto config = ParseTrainConfig(std::string(kRequired) + "frobnicate = 3\nxformers = true\n", {{"bogus_flag", "1"}});
  ASSERT_TRUE(config.ok()) << config.status();
  ASSERT_EQ(config->warnings.size(), 2u);
  EXPECT_NE(config->warnings[0].find("frobnicate"), std::string::npos);
  EXPECT_NE(config->warnings[1].find("bogus_flag"), std::string::npos);
}

TEST(ConfigTest, BadValuesNameTheKeyAndTheAllowedValues) {
  struct Case {
    std::string key, value, expect;
  };
  const std::vector<Case> cases = {
      {"mixed_precision", "fp8", "no, fp16, bf16"},
      {"network_dim", "abc", "an integer"},
      {"network_dim", "0", "from 1 to 4096"},
      {"learning_rate", "fast", "a number"},
      {"loss_type", "l3", "l2, l1, huber, smooth_l1"},
      {"save_precision", "fp32", "float, fp16, bf16"},
      {"network_module", "networks.dylora", "networks.lora, lycoris.kohya"},
      {"max_token_length", "100", "75, 150, 225"},
      {"gradient_checkpointing", "maybe", "true or false"},
      {"resolution", "500", "multiples of 8"},
      {"device", "tpu", "auto, cpu, cuda"},
  };
  for (const Case& c : cases) {
    auto config = ParseTrainConfig(kRequired, {{c.key, c.value}});
    ASSERT_FALSE(config.ok()) << c.key << "=" << c.value;
    EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(config.status().message().find(c.key), std::string::npos) << config.status();
    EXPECT_NE(config.status().message().find(c.expect), std::string::npos) << config.status();
  }
}

TEST(ConfigTest, CrossKeyRules) {
  EXPECT_FALSE(ParseTrainConfig(kRequired, {{"full_bf16", "true"}}).ok());
  EXPECT_FALSE(ParseTrainConfig(kRequired, {{"lr_warmup_steps", "10"}}).ok());  // constant + warmup
  EXPECT_TRUE(ParseTrainConfig(kRequired, {{"lr_warmup_steps", "10"}, {"lr_scheduler", "linear"}}).ok());
  EXPECT_FALSE(ParseTrainConfig(kRequired, {{"min_timestep", "500"}, {"max_timestep", "400"}}).ok());
  EXPECT_FALSE(ParseTrainConfig(kRequired, {{"cache_text_encoder_outputs", "true"}}).ok());
  EXPECT_FALSE(ParseTrainConfig(kRequired, {{"cache_text_encoder_outputs_to_disk", "true"}}).ok());
  EXPECT_TRUE(ParseTrainConfig(kRequired, {{"cache_text_encoder_outputs_to_disk", "true"},
                                           {"network_train_unet_only", "true"}}).ok());
  auto negative_norm = ParseTrainConfig(kRequired, {{"scale_weight_norms", "-1"}});
  ASSERT_FALSE(negative_norm.ok());
  EXPECT_NE(negative_norm.status().message().find("scale_weight_norms"), std::string::npos);
  EXPECT_TRUE(ParseTrainConfig(kRequired, {{"scale_weight_norms", "0"}}).ok());  // 0 disables, as in kohya
  EXPECT_TRUE(ParseTrainConfig(kRequired, {{"scale_weight_norms", "1.5"}}).ok());
  auto missing_model = ParseTrainConfig("train_data_dir = \"/d\"", {});
  ASSERT_FALSE(missing_model.ok());
  EXPECT_NE(missing_model.status().message().find("pretrained_model_name_or_path"), std::string::npos);
  auto missing_data = ParseTrainConfig("pretrained_model_name_or_path = \"/m\"", {});
  ASSERT_FALSE(missing_data.ok());
  EXPECT_NE(missing_data.status().message().find("dataset_config"), std::string::npos);
}

TEST(ConfigTest, TomlSyntaxErrorSaysWhere) {
  auto config = ParseTrainConfig("network_dim = = 3\n", {});
  ASSERT_FALSE(config.ok());
  EXPECT_NE(config.status().message().find("line 1"), std::string::npos) << config.status();
}

TEST(ConfigTest, CommandLineForms) {
  auto args = ParseCommandLine({"--config_file", "c.toml", "--gradient_checkpointing", "--network_dim=8",
                                "--optimizer_args", "weight_decay=0.1", "betas=0.9,0.99", "--v2", "false",
                                "--events-fd", "3"});
  ASSERT_TRUE(args.ok()) << args.status();
  std::vector<std::pair<std::string, std::string>> expected = {
      {"config_file", "c.toml"},   {"gradient_checkpointing", "true"},
      {"network_dim", "8"},        {"optimizer_args", "weight_decay=0.1 betas=0.9,0.99"},
      {"v2", "false"},             {"events_fd", "3"}};
  EXPECT_EQ(*args, expected);
  EXPECT_FALSE(ParseCommandLine({"stray"}).ok());
  EXPECT_FALSE(ParseCommandLine({"--network_dim"}).ok());
}

TEST(ConfigTest, LoadFromFileAndMissingFile) {
  const lorad::testing::ScopedTempDir dir("lorad_config_test");
  const auto path = dir / "lorad.toml";
  {
    std::ofstream out(path);
    out << kRequired << "network_dim = 12\n";
  }
  auto config = LoadTrainConfig(path, {});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->network_dim, 12);
  auto missing = LoadTrainConfig("/nonexistent/lorad.toml", {});
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
}

TEST(ConfigTest, TomlRoundTrip) {
  auto config = ParseTrainConfig(kRequired, {{"network_dim", "8"}, {"min_snr_gamma", "5"}, {"seed", "3"},
                                             {"network_args", "conv_dim=4 algo=locon"}});
  ASSERT_TRUE(config.ok());
  auto again = ParseTrainConfig(ConfigToToml(*config), {});
  ASSERT_TRUE(again.ok()) << again.status() << "\n" << ConfigToToml(*config);
  EXPECT_EQ(EffectiveOptions(*again), EffectiveOptions(*config));
  EXPECT_TRUE(again->warnings.empty());
}

TEST(ConfigTest, StepPlanFollowsKohya) {
  auto config = ParseTrainConfig(kRequired, {{"gradient_accumulation_steps", "2"}, {"max_train_epochs", "3"}});
  ASSERT_TRUE(config.ok());
  auto plan = ComputeStepPlan(*config, 5);  // 5 batches per epoch
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->steps_per_epoch, 3);  // ceil(5/2)
  EXPECT_EQ(plan->max_train_steps, 9);
  EXPECT_EQ(plan->num_epochs, 3);

  config = ParseTrainConfig(kRequired, {{"max_train_steps", "10"}, {"lr_scheduler", "cosine"},
                                        {"lr_warmup_steps", "0.25"}});
  ASSERT_TRUE(config.ok());
  plan = ComputeStepPlan(*config, 4);
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->max_train_steps, 10);
  EXPECT_EQ(plan->num_epochs, 3);  // ceil(10/4)
  EXPECT_EQ(plan->warmup_steps, 2);
  EXPECT_FALSE(ComputeStepPlan(*config, 0).ok());
}

TEST(ConfigTest, ParseTrainOptionsChecksValuesButNotTheCrossKeyRules) {
  // A partial config (the model and dataset given elsewhere) reads fine ...
  auto partial = ParseTrainOptions("[optimizer]\nlearning_rate = 2e-4\n", {{"network_dim", "8"}});
  ASSERT_TRUE(partial.ok()) << partial.status();
  EXPECT_DOUBLE_EQ(partial->learning_rate, 2e-4);
  EXPECT_EQ(partial->network_dim, 8);
  // ... values are recorded as their shortest round-trip text ...
  EXPECT_EQ(partial->explicitly_set.at("learning_rate"), "2e-04");
  EXPECT_EQ(EffectiveOptions(*partial).at("learning_rate"), "2e-04");
  // ... but ParseTrainConfig refuses it, and both refuse a bad value alike.
  EXPECT_EQ(ParseTrainConfig("learning_rate = 2e-4\n", {}).status().code(), absl::StatusCode::kInvalidArgument);
  auto bad = ParseTrainOptions("network_dim = \"abc\"\n", {});
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().message(), "config key 'network_dim': bad value \"abc\"; expected an integer");
  EXPECT_EQ(ParseTrainConfig(std::string(kRequired) + "network_dim = \"abc\"\n", {}).status(), bad.status());
}

// Issue 16: hostile values are errors naming the key, the value and the limit.
TEST(ConfigHardeningTest, NumbersMustBeFiniteInRangeAndRepresentable) {
  struct Case {
    std::string key, value, limit;
  };
  const std::vector<Case> cases = {
      // 1e308 aborted in the trainer ("cannot be converted to type float").
      {"min_snr_gamma", "1e308", "1000"},
      {"noise_offset", "1e308", "10"},
      {"ip_noise_gamma", "1e308", "10"},
      {"max_grad_norm", "1e308", "1000000"},
      {"learning_rate", "1e39", "1000"},
      {"noise_offset", "inf", "a number"},
      {"min_snr_gamma", "nan", "a number"},
      // 4.6e13 ended in SIGFPE.
      {"train_batch_size", "4.6e13", "1024"},
      {"train_batch_size", "46000000000000", "1024"},
      {"max_train_steps", "9e15", "100000000"},
      {"network_dim", "2147483648", "4096"},
      {"dataset_repeats", "1073741824", "100000"},
      {"max_bucket_reso", "65536", "8192"},
      {"multires_noise_iterations", "1000000", "64"},
      {"adaptive_noise_scale", "-1e300", "-10"},
  };
  for (const Case& c : cases) {
    for (bool from_toml : {false, true}) {
      auto config = from_toml ? ParseTrainConfig(std::string(kRequired) + c.key + " = " +
                                                     (c.value == "inf" || c.value == "nan" ? "\"" + c.value + "\"" : c.value) + "\n",
                                                 {})
                              : ParseTrainConfig(kRequired, {{c.key, c.value}});
      ASSERT_FALSE(config.ok()) << c.key << "=" << c.value;
      EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
      const std::string message(config.status().message());
      EXPECT_NE(message.find("'" + c.key + "'"), std::string::npos) << message;
      EXPECT_NE(message.find(c.limit), std::string::npos) << message;
    }
  }
  // The largest accepted values still load.
  EXPECT_TRUE(ParseTrainConfig(kRequired, {{"train_batch_size", "1024"}, {"min_snr_gamma", "1000"}}).ok());
}

TEST(ConfigHardeningTest, ResolutionHasADocumentedMaximum) {
  for (const std::string& value : {"65536", "64,1000000", "8200", "2147483647,64", "99999999999999999999"}) {
    auto config = ParseTrainConfig(std::string(kRequired) + "resolution = \"" + value + "\"\n", {});
    ASSERT_FALSE(config.ok()) << value;
    EXPECT_NE(config.status().message().find("resolution"), std::string::npos) << config.status();
    EXPECT_NE(config.status().message().find("8192"), std::string::npos) << config.status();
  }
  auto as_int = ParseTrainConfig(std::string(kRequired) + "resolution = 65536\n", {});
  ASSERT_FALSE(as_int.ok());
  EXPECT_NE(as_int.status().message().find("8192"), std::string::npos) << as_int.status();
  auto as_list = ParseTrainConfig(std::string(kRequired) + "resolution = [64, 1000000]\n", {});
  ASSERT_FALSE(as_list.ok());
  auto largest = ParseTrainConfig(std::string(kRequired) + "resolution = \"8192,64\"\n", {});
  ASSERT_TRUE(largest.ok()) << largest.status();
}

TEST(ConfigHardeningTest, WrongTomlTypesAreErrorsNamingTheKey) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"resolution = {w = 64}\n", "resolution"},          // was ignored: training ran at 512 px
      {"[training]\nresolution = {w = 64}\n", "resolution"},
      {"network_dim = {a = 1}\n", "network_dim"},
      {"network_dim = 1979-05-27\n", "network_dim"},
      {"caption_prefix = [{a = 1}]\n", "caption_prefix"},
      {"optimizer_args = [[\"a\"]]\n", "optimizer_args"},
      {"learning_rate = [1e-4]\n", "learning_rate"},
  };
  for (const auto& [toml, key] : cases) {
    auto config = ParseTrainConfig(std::string(kRequired) + toml, {});
    ASSERT_FALSE(config.ok()) << toml;
    EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument) << toml;
    EXPECT_NE(config.status().message().find("'" + key + "'"), std::string::npos) << config.status();
  }
  auto table = ParseTrainConfig(std::string(kRequired) + "resolution = {w = 64}\n", {});
  EXPECT_NE(table.status().message().find("got a table"), std::string::npos) << table.status();
}

TEST(ConfigHardeningTest, StringSizesAreLimited) {
  const std::string big(10 << 20, 'x');  // 10 MiB, as the crash report used
  auto prefix = ParseTrainConfig(kRequired, {{"caption_prefix", big}});
  ASSERT_FALSE(prefix.ok());
  const std::string message(prefix.status().message());
  EXPECT_NE(message.find("'caption_prefix'"), std::string::npos);
  EXPECT_NE(message.find("16384-byte limit"), std::string::npos) << message.substr(0, 200);
  EXPECT_LT(message.size(), 300u);  // the message does not echo the value
  // In a TOML document the document limit (1 MiB) refuses it first.
  EXPECT_FALSE(ParseTrainConfig(std::string(kRequired) + "caption_prefix = \"" + big + "\"\n", {}).ok());
  // A caption prefix over 16 KiB in a small-enough document.
  auto toml = ParseTrainConfig(std::string(kRequired) + "caption_prefix = \"" + std::string(20000, 'y') + "\"\n", {});
  ASSERT_FALSE(toml.ok());
  EXPECT_NE(toml.status().message().find("caption_prefix"), std::string::npos);
  EXPECT_FALSE(ParseTrainConfig(kRequired, {{"training_comment", std::string(70000, 'c')}}).ok());
  EXPECT_FALSE(ParseTrainConfig(kRequired, {{"network_dim", big}}).ok());
  EXPECT_TRUE(ParseTrainConfig(kRequired, {{"caption_prefix", std::string(1000, 'p')}}).ok());
}

TEST(ConfigHardeningTest, DeepNestingIsRefusedBeforeParsing) {
  std::string dotted = "a";
  for (int i = 0; i < 100000; ++i) dotted += ".a";
  auto config = ParseTrainConfig(std::string(kRequired) + dotted + " = 1\n", {});
  ASSERT_FALSE(config.ok());
  EXPECT_NE(config.status().message().find("nested"), std::string::npos) << config.status();
}

TEST(ConfigHardeningTest, StepsPerEpochAreBounded) {
  auto config = ParseTrainConfig(kRequired, {{"max_train_epochs", "1000000"}});
  ASSERT_TRUE(config.ok()) << config.status();
  auto plan = ComputeStepPlan(*config, 1000000);
  ASSERT_FALSE(plan.ok());
  EXPECT_NE(plan.status().message().find("max_train_epochs"), std::string::npos) << plan.status();
  auto huge_epoch = ComputeStepPlan(*config, int64_t{1} << 31);  // 2^30 repeats x 2 images
  ASSERT_FALSE(huge_epoch.ok());
  EXPECT_NE(huge_epoch.status().message().find("10000000"), std::string::npos) << huge_epoch.status();
}

// kohya keys without a field here: old spellings and flags map onto options,
// keys lorad cannot honour warn, and none is silently dropped.
TEST(ConfigTest, KohyaForeignKeysMapOrWarn) {
  auto alias = ParseTrainConfig(std::string(kRequired) + "caption_extention = \".txt\"\n", {});
  ASSERT_TRUE(alias.ok()) << alias.status();
  EXPECT_EQ(alias->caption_extension, ".txt");
  EXPECT_TRUE(alias->warnings.empty());

  auto adam8 = ParseTrainConfig(std::string(kRequired) + "use_8bit_adam = true\n", {});
  ASSERT_TRUE(adam8.ok()) << adam8.status();
  EXPECT_EQ(adam8->optimizer_type, "AdamW8bit");
  auto lion = ParseTrainConfig(kRequired, {{"use_lion_optimizer", "true"}});
  ASSERT_TRUE(lion.ok()) << lion.status();
  EXPECT_EQ(lion->optimizer_type, "Lion");
  auto off = ParseTrainConfig(std::string(kRequired) + "use_8bit_adam = false\n", {});
  ASSERT_TRUE(off.ok());
  EXPECT_EQ(off->optimizer_type, "AdamW");
  auto both = ParseTrainConfig(std::string(kRequired) + "use_8bit_adam = true\noptimizer_type = \"Lion\"\n", {});
  ASSERT_FALSE(both.ok());
  EXPECT_NE(both.status().message().find("use_8bit_adam"), std::string::npos) << both.status();
  EXPECT_NE(both.status().message().find("optimizer_type"), std::string::npos) << both.status();

  auto warned = ParseTrainConfig(std::string(kRequired) + "fp8_base = true\ninitial_step = 100\n"
                                 "huggingface_repo_id = \"me/lora\"\nfp8_base_unet = true\n", {});
  ASSERT_TRUE(warned.ok()) << warned.status();
  const std::string all = absl::StrJoin(warned->warnings, "\n");
  EXPECT_NE(all.find("fp8_base is not supported"), std::string::npos) << all;
  EXPECT_NE(all.find("initial_step is not supported"), std::string::npos) << all;
  EXPECT_NE(all.find("Hugging Face"), std::string::npos) << all;
  EXPECT_NE(all.find("unknown config key 'fp8_base_unet'"), std::string::npos) << all;
  auto unset = ParseTrainConfig(std::string(kRequired) + "fp8_base = false\n", {});
  ASSERT_TRUE(unset.ok());
  EXPECT_TRUE(unset->warnings.empty());
}

// docs/kohya_config_keys.md names every key the parser accepts.
TEST(ConfigTest, EveryAcceptedKeyIsDocumented) {
  std::ifstream in(std::string(LORAD_SOURCE_DIR) + "/docs/kohya_config_keys.md");
  ASSERT_TRUE(in) << "docs/kohya_config_keys.md is missing";
  const std::string doc((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::string> missing;
  for (const auto& names : {KnownOptionNames(), ForeignOptionNames()}) {
    for (const std::string& name : names) {
      if (doc.find(absl::StrCat("`", name, "`")) == std::string::npos) missing.push_back(name);
    }
  }
  EXPECT_TRUE(missing.empty()) << "not in docs/kohya_config_keys.md: " << absl::StrJoin(missing, ", ");
}

}  // namespace
}  // namespace lorad::train
