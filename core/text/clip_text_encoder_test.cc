#include "core/text/clip_text_encoder.h"

#include <fstream>

#include <gtest/gtest.h>

#include "core/common/fixtures.h"
#include "core/io/safetensors.h"

namespace lorad::text {
namespace {

struct Case {
  std::string checkpoint;
  std::string reference;
  std::string te_config_key;  // inside fixture_config
  std::string prefix_key;     // inside fixture_config.prefixes (sdxl) or fixed (sd15)
  std::string ref_prefix;     // "clip_l" / "clip_g"
  ClipKeyLayout layout;
};

std::unique_ptr<io::SafetensorsFile> OpenFixture(const std::string& name) {
  auto f = io::SafetensorsFile::Open(FixturePath(name));
  EXPECT_TRUE(f.ok()) << f.status();
  return f.ok() ? std::move(f).value() : nullptr;
}

nlohmann::json FixtureConfig(const io::SafetensorsFile& f) {
  return nlohmann::json::parse(f.metadata().at("fixture_config"));
}

double RelativeL2(const torch::Tensor& got, const torch::Tensor& want) {
  auto g = got.to(torch::kFloat64), w = want.to(torch::kFloat64);
  return ((g - w).norm() / w.norm().clamp_min(1e-30)).item<double>();
}

// The text-encoder prefix of a fixture: from fixture_config.prefixes (te1/te2),
// or SD1.5's fixed one.
std::string PrefixOf(const nlohmann::json& config, const std::string& key) {
  if (config.contains("prefixes") && config["prefixes"].contains(key)) return config["prefixes"][key];
  return "cond_stage_model.transformer.";
}

void CheckParity(const Case& c) {
  auto ckpt = OpenFixture(c.checkpoint);
  auto ref = OpenFixture(c.reference);
  ASSERT_TRUE(ckpt && ref);
  const auto config_json = FixtureConfig(*ckpt);
  const auto te_json = config_json.at(c.te_config_key);
  const std::string prefix = PrefixOf(config_json, c.prefix_key);

  auto config = DetectClipTextConfig(*ckpt, prefix, c.layout, &te_json);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->hidden_size, te_json["hidden_size"].get<int64_t>());
  EXPECT_EQ(config->num_layers, te_json["num_hidden_layers"].get<int64_t>());
  EXPECT_EQ(config->num_heads, te_json["num_attention_heads"].get<int64_t>());
  EXPECT_EQ(config->activation, te_json["hidden_act"].get<std::string>());

  ClipTextEncoder encoder(*config, torch::TensorOptions().dtype(torch::kFloat32));
  ASSERT_TRUE(LoadClipTextWeights(*encoder, *ckpt, prefix, c.layout).ok());
  encoder->eval();
  torch::NoGradGuard no_grad;
  auto ids = ref->Get(c.ref_prefix + ".input_ids");
  ASSERT_TRUE(ids.ok());
  const auto out = encoder->forward(*ids);

  auto expect_close = [&](const std::string& name, const torch::Tensor& got) {
    auto want = ref->Get(c.ref_prefix + "." + name, torch::kFloat32);
    ASSERT_TRUE(want.ok()) << want.status();
    ASSERT_EQ(got.sizes(), want->sizes()) << name;
    const double err = RelativeL2(got, *want);
    std::printf("  %s %-28s rel L2 %.3e\n", c.checkpoint.c_str(), (c.ref_prefix + "." + name).c_str(), err);
    EXPECT_LE(err, 1e-4) << name;
  };
  const int64_t n = config->num_layers;
  expect_close("embeddings", out.hidden_states[0]);
  for (int64_t i = 0; i < n; ++i) expect_close("layer_output." + std::to_string(i), out.hidden_states[i + 1]);
  expect_close("penultimate", out.hidden_states[n - 1]);
  expect_close("penultimate_final_ln", encoder->text_model->final_layer_norm->forward(out.hidden_states[n - 1]));
  expect_close("last_hidden_state", out.last_hidden_state);
  expect_close("pooled", out.pooled);
  if (ref->Has(c.ref_prefix + ".text_embeds")) {
    ASSERT_TRUE(out.text_embeds.defined());
    expect_close("text_embeds", out.text_embeds);
  }
}

TEST(ClipTextEncoderParity, SdxlClipL) {
  CheckParity({"tiny_sdxl.safetensors", "tiny_sdxl_reference.safetensors", "text_encoder_1_config", "te1", "clip_l",
               ClipKeyLayout::kHuggingFace});
}

TEST(ClipTextEncoderParity, SdxlBigG) {
  CheckParity({"tiny_sdxl.safetensors", "tiny_sdxl_reference.safetensors", "text_encoder_2_config", "te2", "clip_g",
               ClipKeyLayout::kOpenClip});
}

TEST(ClipTextEncoderParity, Sd15ClipL) {
  CheckParity({"tiny_sd15.safetensors", "tiny_sd15_reference.safetensors", "text_encoder_1_config", "te1", "clip_l",
               ClipKeyLayout::kHuggingFace});
}

}  // namespace
}  // namespace lorad::text

namespace lorad::text {
namespace {

// An in-memory TensorSource for layout variations of the fixtures.
class MapSource : public io::TensorSource {
 public:
  std::map<std::string, torch::Tensor> tensors;
  std::vector<std::string> Names() const override {
    std::vector<std::string> n;
    for (const auto& [k, v] : tensors) n.push_back(k);
    return n;
  }
  bool Has(std::string_view name) const override { return tensors.count(std::string(name)) > 0; }
  absl::StatusOr<std::vector<int64_t>> Shape(std::string_view name) const override {
    auto it = tensors.find(std::string(name));
    if (it == tensors.end()) return absl::NotFoundError(std::string(name));
    return it->second.sizes().vec();
  }
  absl::StatusOr<torch::Tensor> Get(std::string_view name, std::optional<torch::ScalarType> dtype) const override {
    auto it = tensors.find(std::string(name));
    if (it == tensors.end()) return absl::NotFoundError(std::string(name));
    return dtype ? it->second.to(*dtype) : it->second;
  }
  absl::StatusOr<std::string> DTypeName(std::string_view) const override { return std::string("F32"); }
};

// Every tensor of `file` under `prefix`, renamed by `rename` (prefix stripped).
MapSource Extract(const io::SafetensorsFile& file, const std::string& prefix,
                  const std::function<std::string(const std::string&)>& rename) {
  MapSource out;
  for (const auto& name : file.Names()) {
    if (name.rfind(prefix, 0) != 0) continue;
    out.tensors[rename(name.substr(prefix.size()))] = *file.Get(name);
  }
  return out;
}

const std::string kTe1 = "conditioner.embedders.0.transformer.";
const std::string kTe2 = "conditioner.embedders.1.model.";

ClipTextEncoder LoadOrDie(const io::TensorSource& src, const std::string& prefix, ClipKeyLayout layout,
                          const nlohmann::json* meta) {
  auto config = DetectClipTextConfig(src, prefix, layout, meta);
  EXPECT_TRUE(config.ok()) << config.status();
  ClipTextEncoder enc(*config, torch::TensorOptions().dtype(torch::kFloat32));
  auto status = LoadClipTextWeights(*enc, src, prefix, layout);
  EXPECT_TRUE(status.ok()) << status;
  return enc;
}

TEST(ClipTextEncoderLayouts, OldSd15FilesWithoutTextModelSegment) {
  auto ckpt = OpenFixture("tiny_sd15.safetensors");
  const auto meta = FixtureConfig(*ckpt).at("text_encoder_1_config");
  const std::string prefix = "cond_stage_model.transformer.";
  auto src = Extract(*ckpt, prefix, [](const std::string& k) {
    return k.rfind("text_model.", 0) == 0 ? "cond_stage_model.transformer." + k.substr(11)
                                          : "cond_stage_model.transformer." + k;
  });
  auto modern = LoadOrDie(*ckpt, prefix, ClipKeyLayout::kHuggingFace, &meta);
  auto old = LoadOrDie(src, prefix, ClipKeyLayout::kHuggingFace, &meta);
  auto ids = torch::randint(0, 49406, {1, 77}, torch::kLong);
  torch::NoGradGuard ng;
  EXPECT_TRUE(torch::equal(modern->forward(ids).last_hidden_state, old->forward(ids).last_hidden_state));
}

TEST(ClipTextEncoderLayouts, DiffusersTextEncoder2EqualsOpenClip) {
  auto ckpt = OpenFixture("tiny_sdxl.safetensors");
  auto ref = OpenFixture("tiny_sdxl_reference.safetensors");
  const auto meta = FixtureConfig(*ckpt).at("text_encoder_2_config");
  auto openclip = LoadOrDie(*ckpt, kTe2, ClipKeyLayout::kOpenClip, &meta);
  // Convert the OpenCLIP tensors to diffusers text_encoder_2 names (as sd-scripts
  // library/sdxl_model_util.py:convert_sdxl_text_encoder_2_checkpoint does).
  MapSource hf;
  const int64_t d = openclip->config().hidden_size;
  for (const auto& item : openclip->named_parameters()) hf.tensors[item.key()] = item.value().detach().clone();
  auto in_proj = *ckpt->Get(kTe2 + "transformer.resblocks.0.attn.in_proj_weight", torch::kFloat32);
  EXPECT_TRUE(torch::equal(hf.tensors["text_model.encoder.layers.0.self_attn.k_proj.weight"], in_proj.narrow(0, d, d)));
  auto p = *ckpt->Get(kTe2 + "text_projection", torch::kFloat32);
  EXPECT_TRUE(torch::equal(hf.tensors["text_projection.weight"], p.t()));
  auto diffusers = LoadOrDie(hf, "", ClipKeyLayout::kHuggingFaceWithProjection, &meta);
  EXPECT_EQ(diffusers->config(), openclip->config());
  torch::NoGradGuard ng;
  auto ids = *ref->Get("clip_g.input_ids");
  auto want = *ref->Get("clip_g.text_embeds", torch::kFloat32);
  auto got = diffusers->forward(ids).text_embeds;
  EXPECT_LE(RelativeL2(got, want), 1e-4);
}

TEST(ClipTextEncoderLayouts, FamilyDefaultsWithoutMetadata) {
  auto ckpt = OpenFixture("tiny_sdxl.safetensors");
  auto l = DetectClipTextConfig(*ckpt, kTe1, ClipKeyLayout::kHuggingFace, nullptr);
  ASSERT_TRUE(l.ok()) << l.status();
  EXPECT_EQ(l->activation, "quick_gelu");
  EXPECT_EQ(l->projection_dim, 0);
  auto g = DetectClipTextConfig(*ckpt, kTe2, ClipKeyLayout::kOpenClip, nullptr);
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_EQ(g->activation, "gelu");
  EXPECT_EQ(g->projection_dim, ckpt->Shape(kTe2 + "text_projection")->at(1));
  EXPECT_EQ(g->head_dim(), g->hidden_size < 64 ? g->hidden_size : 64);
}

TEST(ClipTextEncoderErrors, MissingKeyAndWrongShapeAreNamed) {
  auto ckpt = OpenFixture("tiny_sdxl.safetensors");
  const auto meta = FixtureConfig(*ckpt).at("text_encoder_2_config");
  auto config = DetectClipTextConfig(*ckpt, kTe2, ClipKeyLayout::kOpenClip, &meta);
  ASSERT_TRUE(config.ok());
  auto src = Extract(*ckpt, kTe2, [](const std::string& k) { return k; });
  const std::string victim = "transformer.resblocks.1.attn.in_proj_bias";
  src.tensors.erase(victim);
  ClipTextEncoder enc(*config, torch::TensorOptions());
  auto missing = LoadClipTextWeights(*enc, src, "", ClipKeyLayout::kOpenClip);
  EXPECT_EQ(missing.code(), absl::StatusCode::kNotFound);
  EXPECT_NE(std::string(missing.message()).find(victim), std::string::npos) << missing;

  src = Extract(*ckpt, kTe2, [](const std::string& k) { return k; });
  src.tensors["text_projection"] = src.tensors["text_projection"].t().contiguous();  // the HF orientation
  auto shape = LoadClipTextWeights(*enc, src, "", ClipKeyLayout::kOpenClip);
  EXPECT_EQ(shape.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(shape.message()).find("text_projection"), std::string::npos) << shape;

  auto none = DetectClipTextConfig(*ckpt, "no.such.prefix.", ClipKeyLayout::kOpenClip, nullptr);
  EXPECT_EQ(none.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(std::string(none.status().message()).find("no.such.prefix.token_embedding.weight"), std::string::npos);
  nlohmann::json bad_heads = meta;
  bad_heads["num_attention_heads"] = 5;
  EXPECT_FALSE(DetectClipTextConfig(*ckpt, kTe2, ClipKeyLayout::kOpenClip, &bad_heads).ok());
}

// The full-size key sets equal the real checkpoints' (fixtures_keys.json),
// and the meta-device module matches them without allocating.
TEST(ClipTextEncoderStructure, FullSizeKeysMatchRealCheckpoints) {
  std::ifstream in(FixturePath("fixtures_keys.json"));
  const auto keys = nlohmann::json::parse(in);
  struct Expect {
    std::string set, prefix;
    ClipTextConfig config;
    ClipKeyLayout layout;
  };
  for (const auto& e : {Expect{"sd15_checkpoint_keys", "cond_stage_model.transformer.", ClipTextConfig::ClipL(),
                               ClipKeyLayout::kHuggingFace},
                        Expect{"sdxl_checkpoint_keys", kTe1, ClipTextConfig::ClipL(), ClipKeyLayout::kHuggingFace},
                        Expect{"sdxl_checkpoint_keys", kTe2, ClipTextConfig::OpenClipBigG(), ClipKeyLayout::kOpenClip}}) {
    std::vector<std::pair<std::string, std::vector<int64_t>>> want;
    for (const auto& [name, shape] : keys.at(e.set).items()) {
      if (name.rfind(e.prefix, 0) == 0) want.emplace_back(name, shape.get<std::vector<int64_t>>());
    }
    std::sort(want.begin(), want.end());
    ASSERT_FALSE(want.empty());
    EXPECT_EQ(ClipCheckpointKeys(e.config, e.prefix, e.layout), want) << e.set << " " << e.prefix;

    ClipTextEncoder meta(e.config, torch::TensorOptions().device(torch::kMeta).dtype(torch::kFloat16));
    int64_t params = 0;
    for (const auto& p : meta->parameters()) {
      EXPECT_TRUE(p.is_meta());
      params += p.numel();
    }
    int64_t stored = 0;
    for (const auto& [name, shape] : want) {
      int64_t n = 1;
      for (int64_t s : shape) n *= s;
      if (!IsOptionalClipKey(name.substr(e.prefix.size()))) stored += n;
    }
    EXPECT_EQ(params, stored) << e.prefix;
  }
}

TEST(ClipTextEncoderStructure, ModuleNamesForLora) {
  auto config = ClipTextConfig::OpenClipBigG();
  ClipTextEncoder enc(config, torch::TensorOptions().device(torch::kMeta));
  auto layers = nn::FindLayers(*enc);
  // 6 Linear per block + text_projection.
  EXPECT_EQ(layers.size(), static_cast<size_t>(6 * config.num_layers + 1));
  int attention = 0, mlp = 0;
  for (const auto& item : enc->named_modules()) {
    if (std::dynamic_pointer_cast<ClipAttentionImpl>(item.value())) ++attention;
    if (std::dynamic_pointer_cast<ClipMlpImpl>(item.value())) ++mlp;
  }
  EXPECT_EQ(attention, config.num_layers);
  EXPECT_EQ(mlp, config.num_layers);
  EXPECT_EQ(layers.front().first, "text_model.encoder.layers.0.self_attn.q_proj");
}

}  // namespace
}  // namespace lorad::text
