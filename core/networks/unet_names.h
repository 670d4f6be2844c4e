// Conversion of U-Net module paths from the LDM/SGM layout (input_blocks.4.1...)
// to diffusers names (down_blocks.1.attentions.0...), which kohya's SD1.5 LoRA
// keys use (sd-scripts library/model_util.py:convert_ldm_unet_checkpoint,
// networks/lora.py). Pure function over the U-Net layout.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace lorad::networks {

struct UnetLayout {
  int64_t num_levels = 4;      // len(channel_mult)
  int64_t num_res_blocks = 2;  // ResBlocks per level in input_blocks (output_blocks: +1)
};

// "input_blocks.1.1.transformer_blocks.0.attn1.to_q" ->
// "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q". NOT_FOUND for a
// path outside the layout (e.g. a block index past the last level).
absl::StatusOr<std::string> LdmToDiffusersUnetPath(const std::string& ldm_path, const UnetLayout& layout);

}  // namespace lorad::networks
