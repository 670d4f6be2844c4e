// kohya's target classes (sd-scripts networks/lora.py:LoRANetwork) mapped onto lorad's model classes:
// Transformer2DModel -> SpatialTransformerImpl; ResnetBlock2D / Downsample2D /
// Upsample2D -> ResBlockImpl / DownsampleImpl / UpsampleImpl; CLIPAttention /
// CLIPMLP -> ClipAttentionImpl / ClipMlpImpl.
#include "core/base/status_macros.h"
#include "core/models/blocks.h"
#include "core/models/unet.h"
#include "core/networks/targets.h"
#include "core/text/clip_text_encoder.h"

namespace lorad::networks {

absl::StatusOr<std::vector<TargetLayer>> FindUnetTargets(models::UNetImpl& unet, bool include_conv_blocks,
                                                         UnetKeyNames names) {
  auto is_container = [include_conv_blocks](const torch::nn::Module& m) {
    if (dynamic_cast<const models::SpatialTransformerImpl*>(&m)) return true;
    if (!include_conv_blocks) return false;
    return dynamic_cast<const models::ResBlockImpl*>(&m) != nullptr ||
           dynamic_cast<const models::DownsampleImpl*>(&m) != nullptr ||
           dynamic_cast<const models::UpsampleImpl*>(&m) != nullptr;
  };
  auto targets = FindLayersInContainers(unet, "lora_unet", is_container, include_conv_blocks);
  if (names == UnetKeyNames::kDiffusers) {
    const UnetLayout layout{unet.config().num_levels(), unet.config().num_res_blocks};
    for (auto& t : targets) {
      ASSIGN_OR_RETURN(std::string diffusers_path, LdmToDiffusersUnetPath(t.module_path, layout));
      t.lora_name = KohyaLoraName("lora_unet", diffusers_path);
    }
  }
  return targets;
}

std::vector<TargetLayer> FindTextEncoderTargets(text::ClipTextEncoderImpl& encoder, const std::string& prefix) {
  auto is_container = [](const torch::nn::Module& m) {
    return dynamic_cast<const text::ClipAttentionImpl*>(&m) != nullptr ||
           dynamic_cast<const text::ClipMlpImpl*>(&m) != nullptr;
  };
  return FindLayersInContainers(encoder, prefix, is_container, /*include_kxk_convs=*/false);
}

}  // namespace lorad::networks
