// Which layers kohya wraps and the LoRA module names it gives them (sd-scripts
// networks/lora.py:LoRANetwork.create_modules): every Linear / Conv2d inside a
// SpatialTransformer (kohya's Transformer2DModel) of the U-Net, plus - with
// conv_dim - inside ResBlocks, Downsample and Upsample; every Linear inside
// CLIP attention / MLP blocks.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "absl/status/statusor.h"
#include "core/networks/unet_names.h"
#include "core/nn/layer.h"

namespace lorad::models {
class UNetImpl;
}
namespace lorad::text {
class ClipTextEncoderImpl;
}

namespace lorad::networks {

struct TargetLayer {
  std::string lora_name;    // e.g. "lora_unet_input_blocks_4_1_proj_in"
  std::string module_path;  // path in the model, e.g. "input_blocks.4.1.proj_in"
  std::shared_ptr<nn::LayerImpl> layer;
  // A conv with kernel > 1: gets conv_dim / conv_alpha (LoCon).
  bool conv_kxk = false;
};

enum class UnetKeyNames {
  kLdm,        // SDXL: kohya's SGM names (lora_unet_input_blocks_...)
  kDiffusers,  // SD1.5: kohya's diffusers names (lora_unet_down_blocks_...)
};

// "lora_unet" + "." + path, every '.' -> '_'.
std::string KohyaLoraName(const std::string& prefix, const std::string& module_path);

// Layers inside modules for which `is_container` holds (kohya's class-name
// test), in named_modules() order, without duplicates. Linear and 1x1 convs are
// always taken; kxk convs only when `include_kxk_convs`.
std::vector<TargetLayer> FindLayersInContainers(
    torch::nn::Module& root, const std::string& prefix,
    const std::function<bool(const torch::nn::Module&)>& is_container, bool include_kxk_convs);

// The U-Net targets. With conv blocks: ResBlocks, Downsample, Upsample too
// (their Linear / 1x1 children get dim/alpha, their 3x3 convs conv_dim/conv_alpha).
absl::StatusOr<std::vector<TargetLayer>> FindUnetTargets(models::UNetImpl& unet, bool include_conv_blocks,
                                                         UnetKeyNames names);

// The text-encoder targets under `prefix` ("lora_te", "lora_te1", "lora_te2"):
// q/k/v/out_proj of every ClipAttention and fc1/fc2 of every ClipMlp.
std::vector<TargetLayer> FindTextEncoderTargets(text::ClipTextEncoderImpl& encoder, const std::string& prefix);

}  // namespace lorad::networks
