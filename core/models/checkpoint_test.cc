// Checkpoint detection and loading: full-size key structure (meta device) vs
// fixtures_keys.json, the tiny fixtures through LoadStableDiffusion, malformed
// files, and a diffusers folder written from a tiny checkpoint.
#include <cstdio>
#include <fstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "absl/strings/match.h"
#include "core/base/sha256.h"
#include "core/base/testing/scoped_temp_dir.h"
#include "core/common/fixtures.h"
#include "core/io/safetensors.h"
#include "core/models/checkpoint.h"
#include "core/models/detect.h"
#include "core/models/name_mapping.h"

namespace lorad::models {
namespace {

namespace fs = std::filesystem;

io::NamedTensors ReadAll(const io::SafetensorsFile& file) {
  io::NamedTensors all;
  for (const auto& name : file.Names()) all.emplace_back(name, *file.Get(name));
  return all;
}

TEST(CheckpointStructure, FullSizeKeysEqualFixturesKeysJson) {
  std::ifstream in(FixturePath("fixtures_keys.json"));
  ASSERT_TRUE(in) << FixturePath("fixtures_keys.json");
  const auto fixture = nlohmann::json::parse(in);
  for (const auto& [family, key] : {std::pair{ModelFamily::kSd15, "sd15_checkpoint_keys"},
                                    std::pair{ModelFamily::kSdxl, "sdxl_checkpoint_keys"}}) {
    std::map<std::string, std::vector<int64_t>> want;
    for (const auto& [name, shape] : fixture.at(key).items()) want[name] = shape.get<std::vector<int64_t>>();
    std::map<std::string, std::vector<int64_t>> got;
    for (const auto& [name, shape] : ExpectedCheckpointKeys(DefaultLayout(family))) got[name] = shape;
    std::printf("%s: %zu expected keys, fixture %zu\n", key, got.size(), want.size());
    for (const auto& [name, shape] : want) {
      auto it = got.find(name);
      if (it == got.end()) {
        ADD_FAILURE() << key << ": loader does not expect " << name;
      } else {
        EXPECT_EQ(it->second, shape) << name;
      }
    }
    for (const auto& [name, shape] : got) EXPECT_TRUE(want.count(name)) << key << ": extra expected key " << name;
  }
}

class TinyCheckpointTest : public ::testing::TestWithParam<std::string> {};

TEST_P(TinyCheckpointTest, DetectsFamilyAndConfigFromShapesAndMetadata) {
  const std::string arch = GetParam();
  auto ckpt = Checkpoint::Open(FixturePath("tiny_" + arch + ".safetensors"));
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  auto layout = (*ckpt)->DetectLayout();
  ASSERT_TRUE(layout.ok()) << layout.status();
  EXPECT_EQ(ModelFamilyName(layout->family), arch);
  const auto fc = FixtureConfig((*ckpt)->Metadata());
  const auto& u = fc.at("original_unet_config");
  EXPECT_EQ(layout->unet.model_channels, u.at("model_channels").get<int64_t>());
  EXPECT_EQ(layout->unet.channel_mult, u.at("channel_mult").get<std::vector<int64_t>>());
  EXPECT_EQ(layout->unet.context_dim, u.at("context_dim").get<int64_t>());
  EXPECT_EQ(layout->unet.norm_groups, u.at("norm_num_groups").get<int64_t>());
  EXPECT_EQ(layout->unet.adm_in_channels, u.value("adm_in_channels", 0));
  EXPECT_EQ(layout->vae.ch, fc.at("original_vae_config").at("ch").get<int64_t>());
  EXPECT_DOUBLE_EQ(layout->vae.scaling_factor, fc.at("vae_scaling_factor").get<double>());
  EXPECT_EQ(layout->text_encoders.size(), arch == "sdxl" ? 2u : 1u);
  const auto report = (*ckpt)->CompareKeys(*layout);
  EXPECT_TRUE(report.clean()) << "missing " << report.missing.size() << " unexpected " << report.unexpected.size()
                              << " wrong shape " << report.wrong_shape.size();
}

TEST_P(TinyCheckpointTest, LoadsAllComponents) {
  const std::string arch = GetParam();
  auto sd = LoadStableDiffusion(FixturePath("tiny_" + arch + ".safetensors"));
  ASSERT_TRUE(sd.ok()) << sd.status();
  EXPECT_TRUE(sd->unet);
  EXPECT_TRUE(sd->vae);
  EXPECT_EQ(sd->text_encoders.size(), arch == "sdxl" ? 2u : 1u);
  EXPECT_EQ(sd->unet->parameters()[0].scalar_type(), torch::kFloat32);
  LoadOptions only_unet;
  only_unet.dtype = torch::kBFloat16;
  only_unet.load_vae = only_unet.load_text_encoders = false;
  auto bf16 = LoadStableDiffusion(FixturePath("tiny_" + arch + ".safetensors"), only_unet);
  ASSERT_TRUE(bf16.ok()) << bf16.status();
  EXPECT_FALSE(bf16->vae);
  EXPECT_TRUE(bf16->text_encoders.empty());
  EXPECT_EQ(bf16->unet->parameters()[0].scalar_type(), torch::kBFloat16);
}

INSTANTIATE_TEST_SUITE_P(Tiny, TinyCheckpointTest, ::testing::Values("sd15", "sdxl"));

// The address ranges of this process's mappings of `path` (/proc/self/maps).
std::vector<std::pair<uintptr_t, uintptr_t>> MappingsOf(const fs::path& path) {
  std::vector<std::pair<uintptr_t, uintptr_t>> ranges;
  std::ifstream maps("/proc/self/maps");
  for (std::string line; std::getline(maps, line);) {
    if (line.size() < path.string().size() || line.compare(line.size() - path.string().size(), std::string::npos,
                                                            path.string()) != 0) {
      continue;
    }
    uintptr_t begin = 0, end = 0;
    if (std::sscanf(line.c_str(), "%lx-%lx", &begin, &end) == 2) ranges.emplace_back(begin, end);
  }
  return ranges;
}

// Weights in the file's own dtype alias the checkpoint's mapping (issue 16:
// loading within 2x of a plain read; it copies and zero-fills nothing), writes
// to them stay private to the process, and converted weights own their memory.
TEST(CheckpointLoading, WeightsInTheFilesDtypeAliasTheMappingAndWritesStayPrivate) {
  const lorad::testing::ScopedTempDir dir("lorad_models_alias");
  const fs::path path = fs::canonical(dir.path()) / "aliased.safetensors";
  fs::copy_file(FixturePath("tiny_sd15.safetensors"), path);
  auto before = Sha256File(path);
  ASSERT_TRUE(before.ok());
  auto ckpt = Checkpoint::Open(path);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  std::string stored;
  int64_t most = -1;
  for (const auto& [name, count] : (*ckpt)->DTypeCounts()) {
    if (count > most) most = count, stored = name;
  }
  LoadOptions same;
  same.dtype = stored == "F16" ? torch::kFloat16 : stored == "BF16" ? torch::kBFloat16 : torch::kFloat32;
  auto sd = LoadStableDiffusion(path, same);
  ASSERT_TRUE(sd.ok()) << sd.status();
  const auto ranges = MappingsOf(path);
  ASSERT_FALSE(ranges.empty()) << "the checkpoint is not mapped after the load";
  auto in_mapping = [&](const torch::Tensor& t) {
    const auto at = reinterpret_cast<uintptr_t>(t.data_ptr());
    for (const auto& [b, e] : ranges) {
      if (at >= b && at < e) return true;
    }
    return false;
  };
  int aliased = 0, total = 0;
  for (const auto& p : sd->unet->parameters()) {
    ++total;
    aliased += in_mapping(p);
  }
  EXPECT_EQ(aliased, total) << "UNet parameters that alias the file";
  for (const auto& p : sd->text_encoders[0]->parameters()) EXPECT_TRUE(in_mapping(p) || p.numel() == 0);
  {
    torch::NoGradGuard no_grad;
    sd->unet->parameters()[0].add_(1.0);  // copy-on-write: the file is untouched
  }
  EXPECT_EQ(*Sha256File(path), *before);
  // Another dtype is a conversion: those weights own their memory.
  LoadOptions other = same;
  other.dtype = same.dtype == torch::kFloat32 ? torch::kBFloat16 : torch::kFloat32;
  other.load_vae = other.load_text_encoders = false;
  auto converted = LoadStableDiffusion(path, other);
  ASSERT_TRUE(converted.ok()) << converted.status();
  for (const auto& p : converted->unet->parameters()) EXPECT_FALSE(in_mapping(p));
}

// Writes tiny_sd15 with `edit` applied and returns the load error.
absl::Status LoadEdited(const std::string& name, const std::function<void(io::NamedTensors&)>& edit,
                        const std::function<void(io::Metadata&)>& edit_metadata = nullptr,
                        const std::string& arch = "sd15") {
  auto file = io::SafetensorsFile::Open(FixturePath("tiny_" + arch + ".safetensors"));
  EXPECT_TRUE(file.ok());
  auto tensors = ReadAll(**file);
  edit(tensors);
  io::Metadata metadata = (*file)->metadata();
  if (edit_metadata) edit_metadata(metadata);
  const lorad::testing::ScopedTempDir dir("lorad_models_test");
  const fs::path out = dir / (name + ".safetensors");
  EXPECT_TRUE(io::WriteSafetensors(out, tensors, metadata).ok());
  return LoadStableDiffusion(out).status();
}

TEST(MalformedCheckpoint, MissingKeyIsNamed) {
  const std::string key = "model.diffusion_model.output_blocks.3.1.transformer_blocks.0.attn2.to_v.weight";
  auto status = LoadEdited("missing", [&](io::NamedTensors& t) {
    std::erase_if(t, [&](const auto& p) { return p.first == key; });
  });
  ASSERT_FALSE(status.ok());
  EXPECT_TRUE(absl::StrContains(status.message(), key)) << status;
}

TEST(MalformedCheckpoint, WrongShapeIsNamed) {
  const std::string key = "first_stage_model.decoder.up.1.block.0.conv1.weight";
  auto status = LoadEdited("shape", [&](io::NamedTensors& t) {
    for (auto& [name, tensor] : t) {
      if (name == key) tensor = torch::zeros({tensor.size(0) + 1, tensor.size(1), 3, 3});
    }
  });
  ASSERT_FALSE(status.ok());
  EXPECT_TRUE(absl::StrContains(status.message(), key)) << status;
}

TEST(MalformedCheckpoint, UnknownArchitectureIsNamed) {
  auto status = LoadEdited("unknown", [](io::NamedTensors& t) {
    std::erase_if(t, [](const auto& p) { return absl::StartsWith(p.first, "model.diffusion_model.input_blocks.0."); });
  });
  ASSERT_FALSE(status.ok());
  EXPECT_TRUE(absl::StrContains(status.message(), "model.diffusion_model.input_blocks.0.0.weight")) << status;
  const lorad::testing::ScopedTempDir dir("lorad_models_test");
  const fs::path other = dir / "not_sd.safetensors";
  ASSERT_TRUE(io::WriteSafetensors(other, {{"encoder.weight", torch::zeros({2, 2})}}, {}).ok());
  auto s2 = LoadStableDiffusion(other).status();
  EXPECT_TRUE(absl::StrContains(s2.message(), "unknown architecture")) << s2;
}

// The hostile model files of the hardening report (issue 16): dimensions out
// of any Stable Diffusion model's range are refused by name before a module is
// built or a width is divided by them.
TEST(MalformedCheckpoint, ImpossibleDimensionsAreRefusedByName) {
  auto replace = [](const std::string& key, torch::Tensor value) {
    return [key, value](io::NamedTensors& t) {
      for (auto& [name, tensor] : t) {
        if (name == key) tensor = value;
      }
    };
  };
  // A VAE conv_in with 0 output channels (was SIGFPE).
  auto zero = LoadEdited("zero", replace("first_stage_model.encoder.conv_in.weight", torch::zeros({0, 3, 3, 3})));
  ASSERT_FALSE(zero.ok());
  EXPECT_TRUE(absl::StrContains(zero.message(), "first_stage_model.encoder.conv_in.weight")) << zero;
  EXPECT_TRUE(absl::StrContains(zero.message(), "ch = 0")) << zero;
  // A conv with 3.2e9 output channels and no bytes (was an uncaught c10::Error).
  auto huge = LoadEdited("huge", replace("model.diffusion_model.input_blocks.0.0.weight",
                                         torch::zeros({3200000000LL, 0, 3, 3})));
  ASSERT_FALSE(huge.ok());
  EXPECT_TRUE(absl::StrContains(huge.message(), "model_channels = 3200000000")) << huge;
  // addition_time_embed_dim = 2^31 in the metadata config (was a crash).
  auto time_embed = LoadEdited(
      "time_embed", [](io::NamedTensors&) {},
      [](io::Metadata& m) {
        auto config = nlohmann::json::parse(m.at("fixture_config"));
        config["original_unet_config"]["addition_time_embed_dim"] = int64_t{1} << 31;
        m["fixture_config"] = config.dump();
      },
      "sdxl");
  ASSERT_FALSE(time_embed.ok());
  EXPECT_TRUE(absl::StrContains(time_embed.message(), "'addition_time_embed_dim' = 2147483648")) << time_embed;
}

TEST(MalformedCheckpoint, RealFileVariationsAreAccepted) {
  // Extra model_ema.* / schedule keys, a bf16 copy, no "text_model." segment, no position_ids.
  auto status = LoadEdited("variations", [](io::NamedTensors& t) {
    io::NamedTensors edited;
    for (auto& [name, tensor] : t) {
      std::string n = name;
      if (absl::EndsWith(n, "position_ids")) continue;
      const std::string old = "cond_stage_model.transformer.text_model.";
      if (absl::StartsWith(n, old)) n = "cond_stage_model.transformer." + n.substr(old.size());
      edited.emplace_back(n, tensor.is_floating_point() ? tensor.to(torch::kBFloat16) : tensor);
    }
    edited.emplace_back("alphas_cumprod", torch::ones({1000}));
    edited.emplace_back("model_ema.decay", torch::ones({}));
    t = std::move(edited);
  });
  EXPECT_TRUE(status.ok()) << status;
}

// Writes a diffusers folder from a single-file tiny checkpoint with the name mapping.
void WriteDiffusersFolder(const std::string& arch, const fs::path& dir, const StableDiffusion& single) {
  auto file = io::SafetensorsFile::Open(FixturePath("tiny_" + arch + ".safetensors"));
  ASSERT_TRUE(file.ok());
  const auto fc = FixtureConfig((*file)->metadata());
  const auto& layout = single.layout;
  UNetNameShape shape;
  shape.layers_per_block = layout.unet.num_res_blocks;
  for (int64_t level = layout.unet.num_levels() - 1; level >= 0; --level) {
    shape.up_block_has_attention.push_back(layout.unet.HasAttention(level));
  }
  io::NamedTensors unet, vae, te1, te2;
  for (const auto& name : (*file)->Names()) {
    auto t = *(*file)->Get(name);
    if (absl::StartsWith(name, kUnetPrefix)) {
      auto d = LdmToDiffusersUNetName(name.substr(std::string(kUnetPrefix).size()), shape);
      ASSERT_TRUE(d) << name;
      unet.emplace_back(*d, t);
    } else if (absl::StartsWith(name, kVaePrefix)) {
      const std::string ldm = name.substr(std::string(kVaePrefix).size());
      auto d = LdmToDiffusersVaeName(ldm, layout.vae.ch_mult.size());
      ASSERT_TRUE(d) << name;
      vae.emplace_back(*d, IsLdmVaeAttentionWeight(ldm) ? t.flatten(1) : t);
    } else if (absl::StartsWith(name, layout.text_locations[0].prefix)) {
      te1.emplace_back(name.substr(layout.text_locations[0].prefix.size()), t);
    }
  }
  if (arch == "sdxl") {
    for (const auto& p : single.text_encoders[1]->named_parameters()) te2.emplace_back(p.key(), p.value());
  }
  auto write = [&](const std::string& sub, const std::string& file_name, const io::NamedTensors& t,
                   const nlohmann::json& config) {
    fs::create_directories(dir / sub);
    ASSERT_TRUE(io::WriteSafetensors(dir / sub / file_name, t, {}).ok());
    std::ofstream(dir / sub / "config.json") << config.dump(2);
  };
  write("unet", "diffusion_pytorch_model.safetensors", unet, fc.at("diffusers_unet_config"));
  write("vae", "diffusion_pytorch_model.safetensors", vae, fc.at("diffusers_vae_config"));
  write("text_encoder", "model.safetensors", te1, fc.at("text_encoder_1_config"));
  if (arch == "sdxl") write("text_encoder_2", "model.safetensors", te2, fc.at("text_encoder_2_config"));
}

TEST_P(TinyCheckpointTest, DiffusersFolderGivesIdenticalOutputs) {
  const std::string arch = GetParam();
  auto single = LoadStableDiffusion(FixturePath("tiny_" + arch + ".safetensors"));
  ASSERT_TRUE(single.ok()) << single.status();
  const lorad::testing::ScopedTempDir tmp("lorad_models_test_diffusers");
  const fs::path dir = tmp.path();
  WriteDiffusersFolder(arch, dir, *single);
  auto folder = LoadStableDiffusion(dir);
  ASSERT_TRUE(folder.ok()) << folder.status();
  EXPECT_EQ(folder->family, single->family);
  EXPECT_TRUE(folder->keys.clean()) << "missing " << folder->keys.missing.size() << " unexpected "
                                    << folder->keys.unexpected.size();
  auto ref = io::SafetensorsFile::Open(FixturePath("tiny_" + arch + "_reference.safetensors"));
  ASSERT_TRUE(ref.ok());
  torch::NoGradGuard no_grad;
  auto x = *(*ref)->Get("unet.x");
  auto t = *(*ref)->Get("unet.timesteps");
  auto ctx = *(*ref)->Get("unet.context");
  torch::Tensor y = (*ref)->Has("unet.y") ? *(*ref)->Get("unet.y") : torch::Tensor();
  EXPECT_TRUE(torch::equal(single->unet->forward(x, t, ctx, y), folder->unet->forward(x, t, ctx, y)));
  auto image = *(*ref)->Get("vae.image");
  EXPECT_TRUE(torch::equal(single->vae->Encode(image).mean, folder->vae->Encode(image).mean));
  EXPECT_TRUE(torch::equal(single->vae->Decode(*(*ref)->Get("vae.latent")), folder->vae->Decode(*(*ref)->Get("vae.latent"))));
  for (size_t i = 0; i < single->text_encoders.size(); ++i) {
    auto ids = *(*ref)->Get(i == 0 ? "clip_l.input_ids" : "clip_g.input_ids");
    auto a = single->text_encoders[i]->forward(ids);
    auto b = folder->text_encoders[i]->forward(ids);
    EXPECT_TRUE(torch::equal(a.last_hidden_state, b.last_hidden_state)) << "text encoder " << i;
    if (a.text_embeds.defined()) EXPECT_TRUE(torch::equal(a.text_embeds, b.text_embeds));
  }
}

TEST(NameMapping, TableOfKnownPairs) {
  UNetNameShape sdxl{2, {true, true, false}};
  UNetNameShape sd15{2, {false, true, true, true}};
  struct Case {
    const UNetNameShape* shape;
    const char* diffusers;
    const char* ldm;
  };
  const Case cases[] = {
      {&sdxl, "conv_in.weight", "input_blocks.0.0.weight"},
      {&sdxl, "time_embedding.linear_2.bias", "time_embed.2.bias"},
      {&sdxl, "add_embedding.linear_1.weight", "label_emb.0.0.weight"},
      {&sdxl, "down_blocks.0.resnets.1.conv1.weight", "input_blocks.2.0.in_layers.2.weight"},
      {&sdxl, "down_blocks.1.attentions.0.proj_in.weight", "input_blocks.4.1.proj_in.weight"},
      {&sdxl, "down_blocks.1.resnets.0.conv_shortcut.weight", "input_blocks.4.0.skip_connection.weight"},
      {&sdxl, "down_blocks.0.downsamplers.0.conv.weight", "input_blocks.3.0.op.weight"},
      {&sdxl, "mid_block.resnets.1.time_emb_proj.weight", "middle_block.2.emb_layers.1.weight"},
      {&sdxl, "mid_block.attentions.0.transformer_blocks.9.attn2.to_k.weight",
       "middle_block.1.transformer_blocks.9.attn2.to_k.weight"},
      {&sdxl, "up_blocks.0.upsamplers.0.conv.weight", "output_blocks.2.2.conv.weight"},
      {&sdxl, "up_blocks.2.resnets.2.norm2.bias", "output_blocks.8.0.out_layers.0.bias"},
      {&sdxl, "conv_norm_out.weight", "out.0.weight"},
      {&sd15, "up_blocks.0.upsamplers.0.conv.weight", "output_blocks.2.1.conv.weight"},
      {&sd15, "up_blocks.1.upsamplers.0.conv.bias", "output_blocks.5.2.conv.bias"},
      {&sd15, "up_blocks.3.attentions.2.proj_out.weight", "output_blocks.11.1.proj_out.weight"},
      {&sd15, "down_blocks.3.resnets.1.norm1.weight", "input_blocks.11.0.in_layers.0.weight"},
  };
  for (const auto& c : cases) {
    EXPECT_EQ(DiffusersToLdmUNetName(c.diffusers, *c.shape).value_or("<none>"), c.ldm);
    EXPECT_EQ(LdmToDiffusersUNetName(c.ldm, *c.shape).value_or("<none>"), c.diffusers);
  }
  const std::pair<const char*, const char*> vae[] = {
      {"encoder.down_blocks.1.resnets.0.conv_shortcut.weight", "encoder.down.1.block.0.nin_shortcut.weight"},
      {"encoder.down_blocks.2.downsamplers.0.conv.bias", "encoder.down.2.downsample.conv.bias"},
      {"encoder.mid_block.attentions.0.to_out.0.weight", "encoder.mid.attn_1.proj_out.weight"},
      {"encoder.mid_block.attentions.0.group_norm.bias", "encoder.mid.attn_1.norm.bias"},
      {"decoder.up_blocks.0.resnets.2.conv2.weight", "decoder.up.3.block.2.conv2.weight"},
      {"decoder.up_blocks.2.upsamplers.0.conv.weight", "decoder.up.1.upsample.conv.weight"},
      {"decoder.conv_norm_out.bias", "decoder.norm_out.bias"},
      {"post_quant_conv.weight", "post_quant_conv.weight"},
  };
  for (const auto& [d, l] : vae) {
    EXPECT_EQ(DiffusersToLdmVaeName(d, 4).value_or("<none>"), l);
    EXPECT_EQ(LdmToDiffusersVaeName(l, 4).value_or("<none>"), d);
  }
  EXPECT_EQ(DiffusersToLdmVaeName("encoder.mid_block.attentions.0.query.weight", 4).value_or(""),
            "encoder.mid.attn_1.q.weight");
  EXPECT_FALSE(DiffusersToLdmUNetName("down_blocks.0.unknown.weight", sdxl));
}

TEST(NameMapping, RoundTripsEveryFullSizeKey) {
  for (auto family : {ModelFamily::kSd15, ModelFamily::kSdxl}) {
    const auto layout = DefaultLayout(family);
    UNetNameShape shape{layout.unet.num_res_blocks, {}};
    for (int64_t level = layout.unet.num_levels() - 1; level >= 0; --level) {
      shape.up_block_has_attention.push_back(layout.unet.HasAttention(level));
    }
    std::set<std::string> seen;
    for (const auto& [key, s] : ExpectedCheckpointKeys(layout)) {
      if (absl::StartsWith(key, kUnetPrefix)) {
        const std::string ldm = key.substr(std::string(kUnetPrefix).size());
        auto d = LdmToDiffusersUNetName(ldm, shape);
        ASSERT_TRUE(d) << ldm;
        EXPECT_TRUE(seen.insert("u" + *d).second) << "two keys map to " << *d;
        EXPECT_EQ(DiffusersToLdmUNetName(*d, shape).value_or(""), ldm);
      } else if (absl::StartsWith(key, kVaePrefix)) {
        const std::string ldm = key.substr(std::string(kVaePrefix).size());
        auto d = LdmToDiffusersVaeName(ldm, layout.vae.ch_mult.size());
        ASSERT_TRUE(d) << ldm;
        EXPECT_TRUE(seen.insert("v" + *d).second) << "two keys map to " << *d;
        EXPECT_EQ(DiffusersToLdmVaeName(*d, layout.vae.ch_mult.size()).value_or(""), ldm);
      }
    }
  }
}

}  // namespace
}  // namespace lorad::models
