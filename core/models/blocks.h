// U-Net building blocks (as sd-scripts library/sdxl_original_unet.py builds them), named as
// in the LDM/SGM checkpoints.
// core/networks finds LoRA targets by dynamic_pointer_cast on these Impl types:
// SpatialTransformerImpl (kohya's Transformer2DModel), ResBlockImpl
// (ResnetBlock2D), DownsampleImpl, UpsampleImpl, and inside a transformer
// BasicTransformerBlockImpl, CrossAttentionImpl, FeedForwardImpl.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include <torch/torch.h>

#include "core/models/norm.h"
#include "core/nn/layer.h"

namespace lorad::models {

// ResBlock: in_layers.{0 GroupNorm, 2 conv3x3}, emb_layers.1 Linear,
// out_layers.{0 GroupNorm, 3 conv3x3}, skip_connection (1x1, only if in != out).
class ResBlockImpl : public torch::nn::Module {
 public:
  ResBlockImpl(int64_t in_channels, int64_t out_channels, int64_t emb_channels, int64_t groups, double eps,
               torch::TensorOptions options);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& emb);

  int64_t in_channels() const { return in_channels_; }
  int64_t out_channels() const { return out_channels_; }

 private:
  int64_t in_channels_, out_channels_;
  GroupNorm in_norm_{nullptr};
  nn::Layer in_conv_{nullptr};
  nn::Layer emb_linear_{nullptr};
  GroupNorm out_norm_{nullptr};
  nn::Layer out_conv_{nullptr};
  nn::Layer skip_{nullptr};
};
TORCH_MODULE(ResBlock);

// Multi-head attention: to_q, to_k, to_v (no bias), to_out.0 (bias).
class CrossAttentionImpl : public torch::nn::Module {
 public:
  CrossAttentionImpl(int64_t query_dim, int64_t context_dim, int64_t heads, int64_t head_dim,
                     torch::TensorOptions options);
  // x [B, N, C]; context [B, L, context_dim] or undefined for self-attention.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& context = {});
  int64_t heads() const { return heads_; }

 private:
  int64_t heads_;
  nn::Layer to_q_{nullptr}, to_k_{nullptr}, to_v_{nullptr}, to_out_0_{nullptr};
};
TORCH_MODULE(CrossAttention);

// GEGLU feed-forward: net.0.proj Linear(C -> 8C) split into value/gate, net.2 Linear(4C -> C).
class FeedForwardImpl : public torch::nn::Module {
 public:
  FeedForwardImpl(int64_t dim, int64_t mult, torch::TensorOptions options);
  torch::Tensor forward(const torch::Tensor& x);

 private:
  nn::Layer proj_{nullptr}, out_{nullptr};
};
TORCH_MODULE(FeedForward);

// Pre-LayerNorm block: self-attention, cross-attention, feed-forward, each residual.
class BasicTransformerBlockImpl : public torch::nn::Module {
 public:
  BasicTransformerBlockImpl(int64_t dim, int64_t context_dim, int64_t heads, int64_t head_dim, double ln_eps,
                            torch::TensorOptions options);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& context);

 private:
  LayerNorm norm1_{nullptr}, norm2_{nullptr}, norm3_{nullptr};
  CrossAttention attn1_{nullptr}, attn2_{nullptr};
  FeedForward ff_{nullptr};
};
TORCH_MODULE(BasicTransformerBlock);

struct SpatialTransformerOptions {
  int64_t channels = 0;
  int64_t context_dim = 0;
  int64_t heads = 0;
  int64_t depth = 1;
  bool use_linear = false;  // Linear proj_in/out (SDXL) instead of 1x1 convs (SD1.5)
  int64_t groups = 32;
  double norm_eps = 1e-6;
  double layer_norm_eps = 1e-5;
};

// norm (GroupNorm) -> proj_in -> transformer_blocks.k -> proj_out -> + input.
class SpatialTransformerImpl : public torch::nn::Module {
 public:
  SpatialTransformerImpl(const SpatialTransformerOptions& o, torch::TensorOptions options);
  // `checkpoint`: each transformer block is recomputed in backward on its own
  // (kohya's BasicTransformerBlock checkpointing), so backward holds one
  // block's activations at a time, not all of SDXL's ten at the 32x32 level.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& context, bool checkpoint = false);

 private:
  SpatialTransformerOptions o_;
  GroupNorm norm_{nullptr};
  nn::Layer proj_in_{nullptr}, proj_out_{nullptr};
  std::vector<BasicTransformerBlock> blocks_;
};
TORCH_MODULE(SpatialTransformer);

// op: conv 3x3, stride 2, padding 1.
class DownsampleImpl : public torch::nn::Module {
 public:
  DownsampleImpl(int64_t channels, torch::TensorOptions options);
  torch::Tensor forward(const torch::Tensor& x);

 private:
  nn::Layer op_{nullptr};
};
TORCH_MODULE(Downsample);

// Nearest x2, then conv 3x3 padding 1.
class UpsampleImpl : public torch::nn::Module {
 public:
  UpsampleImpl(int64_t channels, torch::TensorOptions options);
  torch::Tensor forward(const torch::Tensor& x);

 private:
  nn::Layer conv_{nullptr};
};
TORCH_MODULE(Upsample);

// One entry of input_blocks / middle_block / output_blocks: children "0", "1",
// "2" (LDM's TimestepEmbedSequential), each a Layer, ResBlock,
// SpatialTransformer, Downsample or Upsample.
class UNetBlockImpl : public torch::nn::Module {
 public:
  UNetBlockImpl() = default;
  void Append(std::shared_ptr<torch::nn::Module> child);
  torch::Tensor forward(torch::Tensor x, const torch::Tensor& emb, const torch::Tensor& context,
                        bool checkpoint);
  const std::vector<std::shared_ptr<torch::nn::Module>>& children_in_order() const { return children_; }

 private:
  std::vector<std::shared_ptr<torch::nn::Module>> children_;
};

}  // namespace lorad::models
