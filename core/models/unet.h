// The Stable Diffusion U-Net (SD 1.5 and SDXL families), one config-driven
// implementation. Module names equal the checkpoint's own LDM/SGM tensor names
// (input_blocks.N.M..., middle_block, output_blocks, time_embed, label_emb, out)
// with the `model.diffusion_model.` prefix stripped, so parameters load by name.
// Every Linear/Conv2d is an nn::Layer so a network adapter (LoRA) can wrap it.
// Reference: sd-scripts library/sdxl_original_unet.py and sdxl_train_util.py (size embeddings).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "absl/status/status.h"
#include "core/models/blocks.h"
#include "core/nn/layer.h"

namespace lorad::models {

struct UNetConfig {
  int64_t in_channels = 4;
  int64_t out_channels = 4;
  int64_t model_channels = 320;
  std::vector<int64_t> channel_mult = {1, 2, 4, 4};
  int64_t num_res_blocks = 2;
  // Levels (indices into channel_mult) that carry a SpatialTransformer after each ResBlock.
  std::vector<int64_t> attention_levels = {0, 1, 2};
  // Transformer blocks per SpatialTransformer, one entry per level (ignored at
  // levels without attention), and in the middle block (0 = no middle attention).
  std::vector<int64_t> transformer_depth = {1, 1, 1, 0};
  int64_t transformer_depth_middle = 1;
  // Exactly one of these is > 0: a fixed head count (SD1.5) or a fixed head width (SDXL).
  int64_t num_heads = 8;
  int64_t head_dim = -1;
  int64_t context_dim = 768;
  bool use_linear_in_transformer = false;
  // Width of the SDXL added-conditioning vector y (0 = no label_emb).
  int64_t adm_in_channels = 0;
  // Sinusoid width per number in y's size embedding (SDXL: 256, so y = pooled + 6*256).
  int64_t addition_time_embed_dim = 256;
  int64_t norm_groups = 32;
  double resnet_eps = 1e-5;       // GroupNorm in ResBlocks and out.0
  double transformer_norm_eps = 1e-6;  // GroupNorm at the SpatialTransformer input
  double layer_norm_eps = 1e-5;   // LayerNorms inside the transformer blocks

  static UNetConfig Sd15();
  static UNetConfig SdxlBase();

  int64_t time_embed_dim() const { return model_channels * 4; }
  int64_t num_levels() const { return static_cast<int64_t>(channel_mult.size()); }
  bool HasAttention(int64_t level) const;
  // Heads of a SpatialTransformer with `channels` channels.
  int64_t HeadsFor(int64_t channels) const;
  // Checks internal consistency (divisibility, list lengths); names the field at fault.
  absl::Status Validate() const;
  nlohmann::json ToJson() const;
};

// Sinusoidal embedding of (possibly fractional) timesteps [B] -> [B, dim]:
// [cos(t f_k), sin(t f_k)], f_k = exp(-ln(max_period) k / half) (shift 0, cos first).
torch::Tensor TimestepEmbedding(const torch::Tensor& timesteps, int64_t dim, double max_period = 10000.0);

// SDXL's added conditioning y = [pooled, emb(orig_h), emb(orig_w), emb(crop_top),
// emb(crop_left), emb(target_h), emb(target_w)] (sd-scripts library/sdxl_train_util.py:
// get_size_embeddings; ComfyUI's SDXL encode_adm uses the same order). pooled [B, P]; the
// three size tensors [B, 2] (float or integer, in pixels). Output [B, P + 6*embed_dim].
torch::Tensor SdxlAddedConditioning(const torch::Tensor& pooled, const torch::Tensor& original_hw,
                                    const torch::Tensor& crop_top_left, const torch::Tensor& target_hw,
                                    int64_t embed_dim = 256);

class UNetImpl : public torch::nn::Module {
 public:
  // Builds the full structure; on the meta device nothing is allocated.
  UNetImpl(const UNetConfig& config, torch::TensorOptions options = {});

  // x [B, in, H, W], timesteps [B] (or scalar), context [B, L, context_dim],
  // y [B, adm_in_channels] (required iff adm_in_channels > 0) -> eps [B, out, H, W].
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& timesteps, const torch::Tensor& context,
                        const torch::Tensor& y = {});

  // Same, also recording intermediate outputs under the reference's names:
  // t_sinusoid, t_emb, label_emb, conv_in, down_blocks.i, mid_block, up_blocks.i.
  torch::Tensor ForwardWithDebug(const torch::Tensor& x, const torch::Tensor& timesteps,
                                 const torch::Tensor& context, const torch::Tensor& y,
                                 std::map<std::string, torch::Tensor>* debug);

  // Recompute each ResBlock / transformer block in backward instead of storing
  // its activations (only while grad mode is on).
  void set_gradient_checkpointing(bool enabled);
  bool gradient_checkpointing() const { return gradient_checkpointing_; }

  const UNetConfig& config() const { return config_; }

 private:
  torch::Tensor Run(const torch::Tensor& x, const torch::Tensor& timesteps, const torch::Tensor& context,
                    const torch::Tensor& y, std::map<std::string, torch::Tensor>* debug);

  UNetConfig config_;
  bool gradient_checkpointing_ = false;
  nn::Layer time_embed_0_{nullptr}, time_embed_2_{nullptr};
  nn::Layer label_emb_0_{nullptr}, label_emb_2_{nullptr};
  torch::nn::ModuleList input_blocks_{nullptr};
  std::shared_ptr<UNetBlockImpl> middle_block_;
  torch::nn::ModuleList output_blocks_{nullptr};
  GroupNorm out_0_{nullptr};
  nn::Layer out_2_{nullptr};
};
TORCH_MODULE(UNet);

}  // namespace lorad::models
