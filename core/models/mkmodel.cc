#include "core/models/mkmodel.h"

#include <unistd.h>

#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <cstdio>
#include <fstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/base/status_macros.h"
#include "core/io/safetensors.h"
#include "core/text/tokenizer.h"

namespace lorad::models {
namespace {

namespace fs = std::filesystem;

nlohmann::json ClipConfigJson(const text::ClipTextConfig& c) {
  return {{"hidden_size", c.hidden_size},
          {"num_hidden_layers", c.num_layers},
          {"num_attention_heads", c.num_heads},
          {"intermediate_size", c.intermediate_size},
          {"hidden_act", c.activation},
          {"layer_norm_eps", c.layer_norm_eps},
          {"vocab_size", c.vocab_size},
          {"max_position_embeddings", c.max_positions},
          {"projection_dim", c.projection_dim}};
}

// Initial values by role, in the spirit of the fixtures: weights N(0,1)/sqrt(fan_in),
// norms 1, biases 0, embeddings N(0, 0.02^2), logit_scale ln(1/0.07).
torch::Tensor RandomTensor(const std::string& name, const std::vector<int64_t>& shape, torch::Generator& gen) {
  auto f32 = torch::TensorOptions().dtype(torch::kFloat32);
  if (shape.empty()) return torch::full({}, std::log(1.0 / 0.07), f32);
  if (shape.size() == 1) {
    return absl::EndsWith(name, "weight") ? torch::ones(shape, f32) : torch::zeros(shape, f32);
  }
  if (absl::StrContains(name, "embedding")) return torch::randn(shape, gen, f32) * 0.02;
  int64_t fan_in = 1;
  for (size_t i = 1; i < shape.size(); ++i) fan_in *= shape[i];
  if (absl::EndsWith(name, "text_projection")) fan_in = shape[0];  // applied as x @ P
  return torch::randn(shape, gen, f32) / std::sqrt(static_cast<double>(fan_in));
}

// Writes a safetensors file whose tensors are produced one at a time.
absl::Status WriteStreaming(const fs::path& out, const std::vector<std::pair<std::string, std::vector<int64_t>>>& keys,
                            torch::ScalarType dtype, const io::Metadata& metadata,
                            const std::function<torch::Tensor(const std::string&, const std::vector<int64_t>&)>& make) {
  ASSIGN_OR_RETURN(io::DType st_dtype, io::DTypeFromTorch(dtype));
  const size_t item = io::DTypeSize(st_dtype);
  nlohmann::json header = nlohmann::json::object();
  nlohmann::json meta = nlohmann::json::object();
  for (const auto& [k, v] : metadata) meta[k] = v;
  header["__metadata__"] = meta;
  uint64_t offset = 0;
  for (const auto& [name, shape] : keys) {
    int64_t numel = 1;
    for (int64_t d : shape) numel *= d;
    const uint64_t bytes = static_cast<uint64_t>(numel) * item;
    header[name] = {{"dtype", std::string(io::DTypeToString(st_dtype))}, {"shape", shape},
                    {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  const fs::path tmp = out.string() + ".tmp" + std::to_string(::getpid());
  std::ofstream file(tmp, std::ios::binary | std::ios::trunc);
  if (!file) return absl::PermissionDeniedError(absl::StrCat("cannot write ", tmp.string()));
  uint64_t n = text.size();
  char len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  file.write(len, 8);
  file.write(text.data(), static_cast<std::streamsize>(text.size()));
  for (const auto& [name, shape] : keys) {
    torch::Tensor t = make(name, shape).to(dtype).contiguous();
    file.write(static_cast<const char*>(t.data_ptr()), static_cast<std::streamsize>(t.numel() * item));
  }
  file.flush();
  if (!file) {
    fs::remove(tmp);
    return absl::UnavailableError(absl::StrCat("writing ", tmp.string(), " failed (disk full?)"));
  }
  file.close();
  std::error_code ec;
  fs::rename(tmp, out, ec);
  if (ec) return absl::PermissionDeniedError(absl::StrCat("renaming to ", out.string(), ": ", ec.message()));
  return absl::OkStatus();
}

}  // namespace

const std::vector<std::string>& DemoCaptions() {
  static const std::vector<std::string> captions = {
      "1girl, solo, long hair, smile, looking at viewer, outdoors, blue sky",
      "1boy, short hair, jacket, city street, night, neon lights",
      "a photo of a red apple on a wooden table, soft light",
      "landscape, mountains, lake, sunset, clouds, scenery",
      "a cat sitting on a windowsill, sunlight, cozy room",
      "portrait of an old man with a beard, black and white photo",
      "masterpiece, best quality, detailed background, forest, river",
      "a small robot holding a flower, digital art, simple background",
      "2girls, school uniform, cherry blossoms, spring, walking",
      "a bowl of ramen, chopsticks, steam, close-up, food photography",
      "sks dog, a photo of sks dog on the beach, sand, waves",
      "watercolor painting of a lighthouse by the sea, seagulls",
  };
  return captions;
}

CheckpointLayout TinyLayout(ModelFamily family) {
  CheckpointLayout layout = DefaultLayout(family);
  auto& u = layout.unet;
  auto& v = layout.vae;
  v.ch = 32;
  v.ch_mult = {1, 2, 2, 2};
  v.num_res_blocks = 1;
  v.norm_groups = 8;
  u.model_channels = 32;
  u.num_res_blocks = 1;
  u.norm_groups = 8;
  text::ClipTextConfig te1 = text::ClipTextConfig::ClipL();
  te1.vocab_size = text::kDemoVocabularySize;
  te1.hidden_size = 32;
  te1.num_layers = 3;
  te1.num_heads = 4;
  te1.intermediate_size = 128;
  if (family == ModelFamily::kSdxl) {
    text::ClipTextConfig te2 = text::ClipTextConfig::OpenClipBigG();
    te2.vocab_size = text::kDemoVocabularySize;
    te2.hidden_size = 64;
    te2.num_layers = 3;
    te2.num_heads = 4;
    te2.intermediate_size = 256;
    te2.projection_dim = 48;  // differs from the width, as bigG's layout allows
    layout.text_encoders = {te1, te2};
    u.channel_mult = {1, 2, 3};
    u.transformer_depth = {0, 1, 2};
    u.transformer_depth_middle = 2;
    u.head_dim = 16;
    u.context_dim = te1.hidden_size + te2.hidden_size;
    u.addition_time_embed_dim = 8;
    u.adm_in_channels = te2.projection_dim + 6 * u.addition_time_embed_dim;
  } else {
    layout.text_encoders = {te1};
    u.channel_mult = {1, 2, 2, 2};
    u.transformer_depth = {1, 1, 1, 0};
    u.num_heads = 2;
    u.context_dim = te1.hidden_size;
  }
  return layout;
}

nlohmann::json LayoutFixtureConfig(const CheckpointLayout& layout) {
  const auto& u = layout.unet;
  nlohmann::json unet = {{"in_channels", u.in_channels},
                         {"out_channels", u.out_channels},
                         {"model_channels", u.model_channels},
                         {"channel_mult", u.channel_mult},
                         {"num_res_blocks", u.num_res_blocks},
                         {"attention_levels", u.attention_levels},
                         {"transformer_depth", u.transformer_depth},
                         {"transformer_depth_middle", u.transformer_depth_middle},
                         {"context_dim", u.context_dim},
                         {"use_linear_in_transformer", u.use_linear_in_transformer},
                         {"norm_num_groups", u.norm_groups},
                         {"time_embed_dim", u.time_embed_dim()}};
  if (u.num_heads > 0) unet["num_heads"] = u.num_heads;
  if (u.head_dim > 0) unet["num_head_channels"] = u.head_dim;
  if (u.adm_in_channels > 0) {
    unet["adm_in_channels"] = u.adm_in_channels;
    unet["addition_time_embed_dim"] = u.addition_time_embed_dim;
  }
  const auto& v = layout.vae;
  nlohmann::json vae = {{"in_channels", v.in_channels}, {"out_ch", v.out_channels},     {"ch", v.ch},
                        {"ch_mult", v.ch_mult},         {"num_res_blocks", v.num_res_blocks}, {"z_channels", v.z_channels},
                        {"embed_dim", v.embed_dim},     {"double_z", true},             {"norm_num_groups", v.norm_groups}};
  nlohmann::json fc = {{"kind", ModelFamilyName(layout.family)},
                       {"generated_by", "lorad-mkmodel"},
                       {"original_unet_config", unet},
                       {"original_vae_config", vae},
                       {"vae_scaling_factor", v.scaling_factor},
                       {"text_encoder_1_config", ClipConfigJson(layout.text_encoders.at(0))},
                       {"text_encoder_2_config", layout.text_encoders.size() > 1
                                                     ? ClipConfigJson(layout.text_encoders[1])
                                                     : nlohmann::json(nullptr)}};
  return fc;
}

absl::Status MakeModel(const fs::path& out, const MakeModelOptions& options) {
  if (options.dtype != torch::kFloat16 && options.dtype != torch::kBFloat16 && options.dtype != torch::kFloat32) {
    return absl::InvalidArgumentError("dtype must be f16, bf16 or f32");
  }
  const bool tiny = options.size == ModelSize::kTiny;
  const CheckpointLayout layout = tiny ? TinyLayout(options.family) : DefaultLayout(options.family);
  RETURN_IF_ERROR(layout.unet.Validate());
  RETURN_IF_ERROR(layout.vae.Validate());
  for (const auto& te : layout.text_encoders) RETURN_IF_ERROR(te.Validate());

  io::Metadata metadata = {{"format", "pt"},
                           {"lorad_mkmodel", absl::StrCat("{\"family\":\"", ModelFamilyName(options.family),
                                                          "\",\"size\":\"", tiny ? "tiny" : "full",
                                                          "\",\"seed\":", options.seed, "}")}};
  if (tiny) metadata["fixture_config"] = LayoutFixtureConfig(layout).dump();

  if (out.has_parent_path()) {
    std::error_code ec;
    fs::create_directories(out.parent_path(), ec);
  }
  torch::Generator generator = at::detail::createCPUGenerator(options.seed);
  RETURN_IF_ERROR(WriteStreaming(out, ExpectedCheckpointKeys(layout), options.dtype, metadata,
                                 [&](const std::string& name, const std::vector<int64_t>& shape) {
                                   return RandomTensor(name, shape, generator);
                                 }));
  if (tiny) {
    const auto& captions = options.captions.empty() ? DemoCaptions() : options.captions;
    RETURN_IF_ERROR(text::WriteDemoBpeVocabulary(text::CompanionTokenizerDir(out), captions,
                                                 layout.text_encoders.at(0).vocab_size));
  }
  return absl::OkStatus();
}

}  // namespace lorad::models
