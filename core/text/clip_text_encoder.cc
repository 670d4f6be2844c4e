#include "core/text/clip_text_encoder.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/base/status_macros.h"
#include "core/common/torch_compat.h"
#include "core/nn/layer.h"

namespace lorad::text {

ClipTextConfig ClipTextConfig::ClipL() { return ClipTextConfig{}; }

ClipTextConfig ClipTextConfig::OpenClipBigG() {
  ClipTextConfig c;
  c.hidden_size = 1280;
  c.num_layers = 32;
  c.num_heads = 20;
  c.intermediate_size = 5120;
  c.projection_dim = 1280;
  c.activation = "gelu";
  return c;
}

absl::Status ClipTextConfig::Validate() const {
  if (vocab_size < 3 || hidden_size <= 0 || num_layers <= 0 || num_heads <= 0 || intermediate_size <= 0 ||
      max_positions <= 0 || projection_dim < 0 || !(layer_norm_eps > 0)) {
    return absl::InvalidArgumentError(absl::StrCat("invalid CLIP text config ", ToJson().dump()));
  }
  if (hidden_size % num_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("CLIP text config: ", num_heads, " heads do not divide width ",
                                                   hidden_size, "; set num_attention_heads in the model config"));
  }
  if (activation != "quick_gelu" && activation != "gelu") {
    return absl::InvalidArgumentError(
        absl::StrCat("CLIP text config: unknown activation '", activation, "' (expected quick_gelu or gelu)"));
  }
  return absl::OkStatus();
}

nlohmann::json ClipTextConfig::ToJson() const {
  return {{"vocab_size", vocab_size},       {"hidden_size", hidden_size},
          {"num_layers", num_layers},       {"num_heads", num_heads},
          {"intermediate_size", intermediate_size}, {"max_positions", max_positions},
          {"projection_dim", projection_dim}, {"activation", activation},
          {"layer_norm_eps", layer_norm_eps}};
}

bool operator==(const ClipTextConfig& a, const ClipTextConfig& b) { return a.ToJson() == b.ToJson(); }

std::string ClipKeyLayoutName(ClipKeyLayout layout) {
  switch (layout) {
    case ClipKeyLayout::kHuggingFace: return "Hugging Face CLIPTextModel";
    case ClipKeyLayout::kOpenClip: return "OpenCLIP";
    case ClipKeyLayout::kHuggingFaceWithProjection: return "Hugging Face CLIPTextModelWithProjection";
  }
  return "unknown";
}

// ---------------------------------------------------------------- modules

namespace {
bool IsMeta(const torch::TensorOptions& o) { return o.device().type() == torch::kMeta; }
torch::TensorOptions WithDtype(torch::TensorOptions o) { return o.has_dtype() ? o : o.dtype(torch::kFloat32); }
}  // namespace

ClipLayerNormImpl::ClipLayerNormImpl(int64_t dim, double eps, const torch::TensorOptions& options)
    : dim_(dim), eps_(eps) {
  const auto o = WithDtype(options);
  weight = register_parameter("weight", IsMeta(o) ? torch::empty({dim}, o) : torch::ones({dim}, o));
  bias = register_parameter("bias", IsMeta(o) ? torch::empty({dim}, o) : torch::zeros({dim}, o));
}

torch::Tensor ClipLayerNormImpl::forward(const torch::Tensor& x) {
  return torch::layer_norm(x, {dim_}, weight, bias, eps_);
}

ClipEmbeddingImpl::ClipEmbeddingImpl(int64_t num, int64_t dim, const torch::TensorOptions& options) {
  const auto o = WithDtype(options);
  weight = register_parameter("weight", torch::empty({num, dim}, o));
  // Under NoInitGuard the checkpoint overwrites it: drawing 38M normals for
  // SDXL's token embeddings was most of a text encoder's load time.
  if (!IsMeta(o) && !nn::NoInitGuard::active()) {
    torch::NoGradGuard no_grad;
    weight.normal_(0.0, 0.02);
  }
}

torch::Tensor ClipEmbeddingImpl::forward(const torch::Tensor& ids) { return torch::embedding(weight, ids); }

ClipAttentionImpl::ClipAttentionImpl(const ClipTextConfig& c, const torch::TensorOptions& o)
    : num_heads_(c.num_heads) {
  const int64_t d = c.hidden_size;
  q_proj = register_module("q_proj", nn::Layer(nn::LinearOptions(d, d, true, o)));
  k_proj = register_module("k_proj", nn::Layer(nn::LinearOptions(d, d, true, o)));
  v_proj = register_module("v_proj", nn::Layer(nn::LinearOptions(d, d, true, o)));
  out_proj = register_module("out_proj", nn::Layer(nn::LinearOptions(d, d, true, o)));
}

torch::Tensor ClipAttentionImpl::forward(const torch::Tensor& x) {
  const int64_t b = x.size(0), l = x.size(1), d = x.size(2);
  auto heads = [&](const torch::Tensor& t) { return t.view({b, l, num_heads_, d / num_heads_}).transpose(1, 2); };
  auto q = heads(q_proj->forward(x));
  auto k = heads(k_proj->forward(x));
  auto v = heads(v_proj->forward(x));
  auto y = compat::ScaledDotProductAttention(q, k, v, {}, /*is_causal=*/true);
  return out_proj->forward(y.transpose(1, 2).reshape({b, l, d}));
}

ClipMlpImpl::ClipMlpImpl(const ClipTextConfig& c, const torch::TensorOptions& o)
    : quick_gelu_(c.activation == "quick_gelu") {
  fc1 = register_module("fc1", nn::Layer(nn::LinearOptions(c.hidden_size, c.intermediate_size, true, o)));
  fc2 = register_module("fc2", nn::Layer(nn::LinearOptions(c.intermediate_size, c.hidden_size, true, o)));
}

torch::Tensor ClipMlpImpl::forward(const torch::Tensor& x) {
  auto h = fc1->forward(x);
  h = quick_gelu_ ? h * torch::sigmoid(1.702 * h) : torch::gelu(h);
  return fc2->forward(h);
}

ClipEncoderLayerImpl::ClipEncoderLayerImpl(const ClipTextConfig& c, const torch::TensorOptions& o) {
  self_attn = register_module("self_attn", ClipAttention(c, o));
  layer_norm1 = register_module("layer_norm1", ClipLayerNorm(c.hidden_size, c.layer_norm_eps, o));
  mlp = register_module("mlp", ClipMlp(c, o));
  layer_norm2 = register_module("layer_norm2", ClipLayerNorm(c.hidden_size, c.layer_norm_eps, o));
}

torch::Tensor ClipEncoderLayerImpl::forward(const torch::Tensor& x) {
  auto h = x + self_attn->forward(layer_norm1->forward(x));
  return h + mlp->forward(layer_norm2->forward(h));
}

ClipTextEmbeddingsImpl::ClipTextEmbeddingsImpl(const ClipTextConfig& c, const torch::TensorOptions& o) {
  token_embedding = register_module("token_embedding", ClipEmbedding(c.vocab_size, c.hidden_size, o));
  position_embedding = register_module("position_embedding", ClipEmbedding(c.max_positions, c.hidden_size, o));
}

torch::Tensor ClipTextEmbeddingsImpl::forward(const torch::Tensor& input_ids) {
  const int64_t l = input_ids.size(1);
  return token_embedding->forward(input_ids) + position_embedding->weight.narrow(0, 0, l).unsqueeze(0);
}

ClipEncoderImpl::ClipEncoderImpl(const ClipTextConfig& c, const torch::TensorOptions& o) {
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < c.num_layers; ++i) layers->push_back(ClipEncoderLayer(c, o));
}

ClipTextTransformerImpl::ClipTextTransformerImpl(const ClipTextConfig& c, const torch::TensorOptions& o) {
  embeddings = register_module("embeddings", ClipTextEmbeddings(c, o));
  encoder = register_module("encoder", ClipEncoder(c, o));
  final_layer_norm = register_module("final_layer_norm", ClipLayerNorm(c.hidden_size, c.layer_norm_eps, o));
}

ClipTextEncoderImpl::ClipTextEncoderImpl(const ClipTextConfig& config, const torch::TensorOptions& options)
    : config_(config) {
  const auto o = WithDtype(options);
  text_model = register_module("text_model", ClipTextTransformer(config_, o));
  if (config_.projection_dim > 0) {
    text_projection = register_module(
        "text_projection", nn::Layer(nn::LinearOptions(config_.hidden_size, config_.projection_dim, false, o)));
  }
}

ClipTextOutput ClipTextEncoderImpl::forward(const torch::Tensor& input_ids) {
  TORCH_CHECK(input_ids.dim() == 2, "CLIP text encoder expects input_ids [B, L], got ", input_ids.sizes());
  TORCH_CHECK(input_ids.size(1) <= config_.max_positions, "CLIP text encoder: ", input_ids.size(1),
              " tokens exceed the ", config_.max_positions, " positions");
  const auto& weight = text_model->embeddings->token_embedding->weight;
  const auto ids = input_ids.to(weight.device(), torch::kLong);

  ClipTextOutput out;
  auto x = text_model->embeddings->forward(ids);
  out.hidden_states.reserve(config_.num_layers + 1);
  out.hidden_states.push_back(x);
  for (const auto& layer : *text_model->encoder->layers) {
    x = layer->as<ClipEncoderLayerImpl>()->forward(x);
    out.hidden_states.push_back(x);
  }
  out.last_hidden_state = text_model->final_layer_norm->forward(x);

  // kohya's pool workaround: the first EOS; a row without EOS falls back to
  // argmax(ids), the original CLIP rule (equal whenever EOS is the largest id).
  const auto is_eos = ids.eq(config_.eos_token_id());
  const auto first_eos = is_eos.to(torch::kInt).argmax(1);
  const auto index = torch::where(is_eos.any(1), first_eos, ids.argmax(1));
  const auto rows = torch::arange(ids.size(0), ids.options());
  out.pooled = out.last_hidden_state.index({rows, index});
  if (text_projection) out.text_embeds = text_projection->forward(out.pooled);
  return out;
}

// ---------------------------------------------------------------- key layouts

namespace {

using KeyShapes = std::vector<std::pair<std::string, std::vector<int64_t>>>;

// One checkpoint tensor feeding (part of) one module parameter.
struct KeyBinding {
  std::string key;             // without prefix
  std::vector<int64_t> shape;  // stored shape
  std::string param;           // module parameter name
  int64_t row_offset = -1;     // >= 0: the parameter is rows [offset, offset + rows) of the key
  bool transpose = false;      // the parameter is the key transposed
};

std::vector<KeyBinding> Bindings(const ClipTextConfig& c, ClipKeyLayout layout, const std::string& hf_root) {
  const int64_t d = c.hidden_size, f = c.intermediate_size;
  std::vector<KeyBinding> b;
  auto same = [&](const std::string& key, std::vector<int64_t> shape, const std::string& param) {
    b.push_back({key, std::move(shape), param});
  };
  if (layout != ClipKeyLayout::kOpenClip) {
    const std::string r = hf_root;  // "text_model." or ""
    same(r + "embeddings.position_embedding.weight", {c.max_positions, d}, "text_model.embeddings.position_embedding.weight");
    same(r + "embeddings.token_embedding.weight", {c.vocab_size, d}, "text_model.embeddings.token_embedding.weight");
    for (int64_t i = 0; i < c.num_layers; ++i) {
      const std::string k = absl::StrCat(r, "encoder.layers.", i, ".");
      const std::string p = absl::StrCat("text_model.encoder.layers.", i, ".");
      for (const char* ln : {"layer_norm1", "layer_norm2"}) {
        same(k + ln + ".bias", {d}, p + ln + ".bias");
        same(k + ln + ".weight", {d}, p + ln + ".weight");
      }
      same(k + "mlp.fc1.bias", {f}, p + "mlp.fc1.bias");
      same(k + "mlp.fc1.weight", {f, d}, p + "mlp.fc1.weight");
      same(k + "mlp.fc2.bias", {d}, p + "mlp.fc2.bias");
      same(k + "mlp.fc2.weight", {d, f}, p + "mlp.fc2.weight");
      for (const char* proj : {"k_proj", "out_proj", "q_proj", "v_proj"}) {
        same(k + "self_attn." + proj + ".bias", {d}, p + "self_attn." + proj + ".bias");
        same(k + "self_attn." + proj + ".weight", {d, d}, p + "self_attn." + proj + ".weight");
      }
    }
    same(r + "final_layer_norm.bias", {d}, "text_model.final_layer_norm.bias");
    same(r + "final_layer_norm.weight", {d}, "text_model.final_layer_norm.weight");
    if (layout == ClipKeyLayout::kHuggingFaceWithProjection) {
      same("text_projection.weight", {c.projection_dim, d}, "text_projection.weight");
    }
    return b;
  }
  same("ln_final.bias", {d}, "text_model.final_layer_norm.bias");
  same("ln_final.weight", {d}, "text_model.final_layer_norm.weight");
  same("positional_embedding", {c.max_positions, d}, "text_model.embeddings.position_embedding.weight");
  if (c.projection_dim > 0) {
    b.push_back({"text_projection", {d, c.projection_dim}, "text_projection.weight", -1, /*transpose=*/true});
  }
  same("token_embedding.weight", {c.vocab_size, d}, "text_model.embeddings.token_embedding.weight");
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string k = absl::StrCat("transformer.resblocks.", i, ".");
    const std::string p = absl::StrCat("text_model.encoder.layers.", i, ".");
    const char* qkv[] = {"q_proj", "k_proj", "v_proj"};
    for (int j = 0; j < 3; ++j) {
      b.push_back({k + "attn.in_proj_bias", {3 * d}, p + "self_attn." + qkv[j] + ".bias", j * d});
      b.push_back({k + "attn.in_proj_weight", {3 * d, d}, p + "self_attn." + qkv[j] + ".weight", j * d});
    }
    same(k + "attn.out_proj.bias", {d}, p + "self_attn.out_proj.bias");
    same(k + "attn.out_proj.weight", {d, d}, p + "self_attn.out_proj.weight");
    same(k + "ln_1.bias", {d}, p + "layer_norm1.bias");
    same(k + "ln_1.weight", {d}, p + "layer_norm1.weight");
    same(k + "ln_2.bias", {d}, p + "layer_norm2.bias");
    same(k + "ln_2.weight", {d}, p + "layer_norm2.weight");
    same(k + "mlp.c_fc.bias", {f}, p + "mlp.fc1.bias");
    same(k + "mlp.c_fc.weight", {f, d}, p + "mlp.fc1.weight");
    same(k + "mlp.c_proj.bias", {d}, p + "mlp.fc2.bias");
    same(k + "mlp.c_proj.weight", {d, f}, p + "mlp.fc2.weight");
  }
  return b;
}

std::string ShapeString(const std::vector<int64_t>& s) { return absl::StrCat("[", absl::StrJoin(s, ", "), "]"); }

// The Hugging Face root inside `prefix`: "text_model." in modern files, ""
// in old SD1.5 files (and when the caller's prefix already ends in it).
std::string HfRoot(const io::TensorSource& source, const std::string& prefix) {
  if (source.Has(prefix + "text_model.embeddings.token_embedding.weight")) return "text_model.";
  if (source.Has(prefix + "embeddings.token_embedding.weight")) return "";
  return "text_model.";
}

std::string TokenEmbeddingKey(ClipKeyLayout layout, const std::string& hf_root) {
  return layout == ClipKeyLayout::kOpenClip ? "token_embedding.weight" : hf_root + "embeddings.token_embedding.weight";
}

absl::StatusOr<std::vector<int64_t>> RequireShape(const io::TensorSource& source, const std::string& key,
                                                  ClipKeyLayout layout, size_t rank) {
  if (!source.Has(key)) {
    return absl::NotFoundError(absl::StrCat("CLIP text encoder (", ClipKeyLayoutName(layout),
                                            " layout): checkpoint lacks tensor '", key, "'"));
  }
  ASSIGN_OR_RETURN(auto shape, source.Shape(key));
  if (shape.size() != rank) {
    return absl::InvalidArgumentError(absl::StrCat("CLIP text encoder: tensor '", key, "' has shape ",
                                                   ShapeString(shape), ", expected rank ", rank));
  }
  return shape;
}

}  // namespace

bool IsOptionalClipKey(const std::string& key) {
  return key == "logit_scale" || key == "embeddings.position_ids" || key == "text_model.embeddings.position_ids";
}

KeyShapes ClipCheckpointKeys(const ClipTextConfig& config, const std::string& prefix, ClipKeyLayout layout) {
  KeyShapes keys;
  for (const auto& binding : Bindings(config, layout, "text_model.")) keys.emplace_back(prefix + binding.key, binding.shape);
  if (layout == ClipKeyLayout::kOpenClip) keys.emplace_back(prefix + "logit_scale", std::vector<int64_t>{});
  std::sort(keys.begin(), keys.end());
  keys.erase(std::unique(keys.begin(), keys.end()), keys.end());  // in_proj feeds three parameters
  return keys;
}

absl::StatusOr<ClipTextConfig> DetectClipTextConfig(const io::TensorSource& source, const std::string& prefix,
                                                    ClipKeyLayout layout, const nlohmann::json* meta) {
  const bool openclip = layout == ClipKeyLayout::kOpenClip;
  const std::string root = openclip ? "" : HfRoot(source, prefix);
  ClipTextConfig c = openclip || layout == ClipKeyLayout::kHuggingFaceWithProjection ? ClipTextConfig::OpenClipBigG()
                                                                                     : ClipTextConfig::ClipL();
  ASSIGN_OR_RETURN(auto tok, RequireShape(source, prefix + TokenEmbeddingKey(layout, root), layout, 2));
  c.vocab_size = tok[0];
  c.hidden_size = tok[1];
  ASSIGN_OR_RETURN(auto pos, RequireShape(source, prefix + (openclip ? "positional_embedding"
                                                                     : root + "embeddings.position_embedding.weight"),
                                          layout, 2));
  c.max_positions = pos[0];

  // Depth: count consecutive layers.
  const std::string layer_prefix = prefix + (openclip ? "transformer.resblocks." : root + "encoder.layers.");
  const std::string probe = openclip ? ".mlp.c_fc.weight" : ".mlp.fc1.weight";
  int64_t n = 0;
  while (source.Has(absl::StrCat(layer_prefix, n, probe))) ++n;
  if (n == 0) {
    return absl::NotFoundError(absl::StrCat("CLIP text encoder (", ClipKeyLayoutName(layout),
                                            " layout): checkpoint lacks tensor '", layer_prefix, "0", probe, "'"));
  }
  c.num_layers = n;
  ASSIGN_OR_RETURN(auto fc1, RequireShape(source, absl::StrCat(layer_prefix, 0, probe), layout, 2));
  c.intermediate_size = fc1[0];

  if (openclip) {
    const std::string key = prefix + "text_projection";
    if (source.Has(key)) {
      ASSIGN_OR_RETURN(auto p, RequireShape(source, key, layout, 2));
      c.projection_dim = p[1];  // applied as x @ P: [hidden, projection]
    } else {
      c.projection_dim = 0;
    }
  } else if (layout == ClipKeyLayout::kHuggingFaceWithProjection) {
    ASSIGN_OR_RETURN(auto p, RequireShape(source, prefix + "text_projection.weight", layout, 2));
    c.projection_dim = p[0];  // Linear weight [projection, hidden]
  } else {
    c.projection_dim = 0;
  }

  // Family head count: CLIP-L 12 heads of 64, bigG 20 of 64 -> head dim 64.
  c.num_heads = std::max<int64_t>(1, c.hidden_size / 64);
  if (meta != nullptr && meta->is_object()) {
    try {
      if (meta->contains("num_attention_heads")) c.num_heads = meta->at("num_attention_heads").get<int64_t>();
      if (meta->contains("hidden_act")) c.activation = meta->at("hidden_act").get<std::string>();
      if (meta->contains("layer_norm_eps")) c.layer_norm_eps = meta->at("layer_norm_eps").get<double>();
      for (const auto& [name, value] : {std::pair<const char*, int64_t>{"hidden_size", c.hidden_size},
                                        {"num_hidden_layers", c.num_layers},
                                        {"intermediate_size", c.intermediate_size}}) {
        if (meta->contains(name) && meta->at(name).get<int64_t>() != value) {
          return absl::InvalidArgumentError(absl::StrCat("CLIP text encoder under '", prefix, "': config says ", name,
                                                         " = ", meta->at(name).dump(), " but the tensors give ",
                                                         value));
        }
      }
    } catch (const nlohmann::json::exception& e) {
      return absl::InvalidArgumentError(
          absl::StrCat("CLIP text encoder under '", prefix, "': malformed text encoder config: ", e.what()));
    }
  }
  RETURN_IF_ERROR(c.Validate());
  return c;
}

absl::Status LoadClipTextWeights(ClipTextEncoderImpl& encoder, const io::TensorSource& source,
                                 const std::string& prefix, ClipKeyLayout layout) {
  const auto& c = encoder.config();
  if (layout == ClipKeyLayout::kHuggingFaceWithProjection && c.projection_dim == 0) {
    return absl::InvalidArgumentError("CLIP text encoder: layout with projection but the model has none");
  }
  if (layout == ClipKeyLayout::kHuggingFace && c.projection_dim > 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "CLIP text encoder under '", prefix, "': the model has a text_projection but the ",
        ClipKeyLayoutName(layout), " layout stores none; use kHuggingFaceWithProjection"));
  }
  const std::string root = layout == ClipKeyLayout::kOpenClip ? "" : HfRoot(source, prefix);
  auto params = encoder.named_parameters(/*recurse=*/true);
  torch::NoGradGuard no_grad;
  try {
    for (const auto& b : Bindings(c, layout, root)) {
      const std::string key = prefix + b.key;
      if (!source.Has(key)) {
        return absl::NotFoundError(absl::StrCat("CLIP text encoder (", ClipKeyLayoutName(layout),
                                                " layout): checkpoint lacks tensor '", key, "'"));
      }
      ASSIGN_OR_RETURN(auto shape, source.Shape(key));
      if (shape != b.shape) {
        return absl::InvalidArgumentError(absl::StrCat("CLIP text encoder: tensor '", key, "' has shape ",
                                                       ShapeString(shape), " but the model expects ",
                                                       ShapeString(b.shape)));
      }
      auto* param = params.find(b.param);
      if (param == nullptr) return absl::InternalError(absl::StrCat("CLIP module lacks parameter ", b.param));
      if (b.row_offset < 0 && !b.transpose) {
        RETURN_IF_ERROR(io::AliasOrReadInto(source, key, *param));
        continue;
      }
      ASSIGN_OR_RETURN(auto value, source.Get(key));
      if (b.row_offset >= 0) value = value.narrow(0, b.row_offset, param->size(0));
      if (b.transpose) value = value.t();
      param->copy_(value);
    }
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("CLIP text encoder: copying weights failed: ", e.what_without_backtrace()));
  }
  return absl::OkStatus();
}

}  // namespace lorad::text
