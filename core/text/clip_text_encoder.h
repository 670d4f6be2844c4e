// CLIP text encoders: CLIP ViT-L/14 (SD1.5, SDXL encoder 1) and OpenCLIP
// ViT-bigG/14 (SDXL encoder 2), one config-driven implementation (configs and OpenCLIP key
// conversion: sd-scripts library/sdxl_model_util.py).
//
// Module names follow Hugging Face's CLIPTextModel(WithProjection)
// (text_model.embeddings.token_embedding, text_model.encoder.layers.N.self_attn.q_proj,
// ..., text_projection), so kohya's LoRA names (lora_te1_text_model_encoder_...)
// follow from named_modules(). Every Linear is an nn::Layer so LoRA can wrap it.
//
// Token ids: BOS and EOS are the last two ids of the vocabulary (49406 / 49407
// for the real 49,408-token CLIP vocabulary, and for lorad's small demo
// vocabularies too), so the encoder pools at the first id == vocab_size - 1.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/io/tensor_source.h"
#include "core/nn/layer.h"

namespace lorad::text {

struct ClipTextConfig {
  int64_t vocab_size = 49408;
  int64_t hidden_size = 768;
  int64_t num_layers = 12;
  int64_t num_heads = 12;
  int64_t intermediate_size = 3072;
  int64_t max_positions = 77;
  int64_t projection_dim = 0;         // 0 = no text_projection
  std::string activation = "quick_gelu";  // "quick_gelu" | "gelu"
  double layer_norm_eps = 1e-5;

  // CLIP ViT-L/14: 12 layers, 768 wide, 12 heads, quick_gelu, no projection.
  static ClipTextConfig ClipL();
  // OpenCLIP ViT-bigG/14: 32 layers, 1280 wide, 20 heads, gelu, projection 1280.
  static ClipTextConfig OpenClipBigG();

  int64_t head_dim() const { return num_heads > 0 ? hidden_size / num_heads : 0; }
  // Id of <|endoftext|>: the last id of the vocabulary (see file comment).
  int64_t eos_token_id() const { return vocab_size - 1; }
  // INVALID_ARGUMENT when a field is out of range or heads do not divide the width.
  absl::Status Validate() const;
  nlohmann::json ToJson() const;
};

bool operator==(const ClipTextConfig& a, const ClipTextConfig& b);

enum class ClipKeyLayout {
  // Hugging Face CLIPTextModel names: <prefix>text_model.* as in SD1.5 /
  // SDXL CLIP-L; "text_model." may be absent (old SD1.5 files); position_ids optional.
  kHuggingFace,
  // SDXL bigG single file: token_embedding, positional_embedding,
  // transformer.resblocks.N.attn.in_proj_weight (packed q,k,v), ln_final,
  // text_projection applied as x @ P, logit_scale optional.
  kOpenClip,
  // diffusers text_encoder_2: text_model.* + text_projection.weight as a
  // Linear (i.e. P transposed).
  kHuggingFaceWithProjection,
};

std::string ClipKeyLayoutName(ClipKeyLayout layout);

struct ClipTextOutput {
  // hidden_states[0] = embeddings, hidden_states[i] = output of layer i-1
  // (no final LN): the Hugging Face convention, num_layers + 1 entries.
  std::vector<torch::Tensor> hidden_states;
  torch::Tensor last_hidden_state;  // final_layer_norm(hidden_states.back()) [B, L, D]
  torch::Tensor pooled;             // last_hidden_state at the first EOS [B, D]
  torch::Tensor text_embeds;        // pooled @ projection [B, P]; undefined without one
};

// LayerNorm whose parameters are built with the given TensorOptions (meta-safe).
class ClipLayerNormImpl : public torch::nn::Module {
 public:
  ClipLayerNormImpl(int64_t dim, double eps, const torch::TensorOptions& options);
  torch::Tensor forward(const torch::Tensor& x);
  torch::Tensor weight, bias;

 private:
  int64_t dim_;
  double eps_;
};
TORCH_MODULE(ClipLayerNorm);

// An embedding table with one parameter "weight" [num, dim] (meta-safe).
class ClipEmbeddingImpl : public torch::nn::Module {
 public:
  ClipEmbeddingImpl(int64_t num, int64_t dim, const torch::TensorOptions& options);
  torch::Tensor forward(const torch::Tensor& ids);
  torch::Tensor weight;
};
TORCH_MODULE(ClipEmbedding);

// Multi-head self-attention (HF CLIPAttention): q_proj, k_proj, v_proj, out_proj.
class ClipAttentionImpl : public torch::nn::Module {
 public:
  ClipAttentionImpl(const ClipTextConfig& config, const torch::TensorOptions& options);
  // x [B, L, D]; causal attention.
  torch::Tensor forward(const torch::Tensor& x);
  nn::Layer q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, out_proj{nullptr};

 private:
  int64_t num_heads_;
};
TORCH_MODULE(ClipAttention);

// HF CLIPMLP: fc1 -> activation -> fc2.
class ClipMlpImpl : public torch::nn::Module {
 public:
  ClipMlpImpl(const ClipTextConfig& config, const torch::TensorOptions& options);
  torch::Tensor forward(const torch::Tensor& x);
  nn::Layer fc1{nullptr}, fc2{nullptr};

 private:
  bool quick_gelu_;
};
TORCH_MODULE(ClipMlp);

// Pre-LN block: x += attn(LN1(x)); x += mlp(LN2(x)).
class ClipEncoderLayerImpl : public torch::nn::Module {
 public:
  ClipEncoderLayerImpl(const ClipTextConfig& config, const torch::TensorOptions& options);
  torch::Tensor forward(const torch::Tensor& x);
  ClipAttention self_attn{nullptr};
  ClipLayerNorm layer_norm1{nullptr};
  ClipMlp mlp{nullptr};
  ClipLayerNorm layer_norm2{nullptr};
};
TORCH_MODULE(ClipEncoderLayer);

class ClipTextEmbeddingsImpl : public torch::nn::Module {
 public:
  ClipTextEmbeddingsImpl(const ClipTextConfig& config, const torch::TensorOptions& options);
  torch::Tensor forward(const torch::Tensor& input_ids);
  ClipEmbedding token_embedding{nullptr};
  ClipEmbedding position_embedding{nullptr};
};
TORCH_MODULE(ClipTextEmbeddings);

class ClipEncoderImpl : public torch::nn::Module {
 public:
  ClipEncoderImpl(const ClipTextConfig& config, const torch::TensorOptions& options);
  torch::nn::ModuleList layers{nullptr};
};
TORCH_MODULE(ClipEncoder);

class ClipTextTransformerImpl : public torch::nn::Module {
 public:
  ClipTextTransformerImpl(const ClipTextConfig& config, const torch::TensorOptions& options);
  ClipTextEmbeddings embeddings{nullptr};
  ClipEncoder encoder{nullptr};
  ClipLayerNorm final_layer_norm{nullptr};
};
TORCH_MODULE(ClipTextTransformer);

// The whole text encoder. Built on the meta device it holds the structure
// (names, shapes) of even a full bigG without allocating it. Parameters of a
// non-meta build are randomly initialised (Linear: torch.nn's default; embeddings
// N(0, 0.02); LayerNorm 1/0) until LoadClipTextWeights overwrites them.
class ClipTextEncoderImpl : public torch::nn::Module {
 public:
  ClipTextEncoderImpl(const ClipTextConfig& config, const torch::TensorOptions& options);

  // input_ids [B, L] (L <= max_positions; int32 or int64) on any device; moved
  // to the parameters' device. Works with and without grad.
  ClipTextOutput forward(const torch::Tensor& input_ids);

  const ClipTextConfig& config() const { return config_; }
  ClipTextTransformer text_model{nullptr};
  nn::Layer text_projection{nullptr};  // null when projection_dim == 0

 private:
  ClipTextConfig config_;
};
TORCH_MODULE(ClipTextEncoder);

// Detects the config of the encoder stored under `prefix` in `layout`. Widths,
// depth, vocabulary, positions and projection width come from tensor shapes;
// head count, activation and LayerNorm eps from `config_from_metadata` (a
// Hugging Face CLIPTextConfig json such as fixture_config.text_encoder_1_config
// or a diffusers text_encoder/config.json) when given, else the family's values
// (kHuggingFace: CLIP-L, head dim 64 quick_gelu; others: bigG, head dim 64 gelu).
// NOT_FOUND names the missing key; INVALID_ARGUMENT for inconsistent shapes.
absl::StatusOr<ClipTextConfig> DetectClipTextConfig(const io::TensorSource& source, const std::string& prefix,
                                                    ClipKeyLayout layout,
                                                    const nlohmann::json* config_from_metadata = nullptr);

// Copies every parameter of `encoder` from `source` (in_proj split into q/k/v,
// OpenCLIP text_projection transposed), converting to the module's dtype and
// device straight from the source's views (no second full copy). Ignores
// position_ids and logit_scale. NOT_FOUND names a missing key,
// INVALID_ARGUMENT a key whose shape differs from the module's.
absl::Status LoadClipTextWeights(ClipTextEncoderImpl& encoder, const io::TensorSource& source,
                                 const std::string& prefix, ClipKeyLayout layout);

// The exact keys and shapes a single-file checkpoint (or diffusers file) holds
// for this encoder in `layout`, modern form: kHuggingFace with "text_model.",
// no position_ids; kOpenClip with logit_scale.
std::vector<std::pair<std::string, std::vector<int64_t>>> ClipCheckpointKeys(const ClipTextConfig& config,
                                                                             const std::string& prefix,
                                                                             ClipKeyLayout layout);

// Whether `key` (already without prefix) is an optional key real files may or
// may not carry (position_ids, logit_scale): neither missing nor unexpected.
bool IsOptionalClipKey(const std::string& key_without_prefix);

}  // namespace lorad::text
