// Pure name conversion between the diffusers layout and the original
// single-file (LDM/SGM) layout for the U-Net and the VAE (the conversion maps of
// sd-scripts library/model_util.py and library/sdxl_model_util.py).
// Names are relative to the component (no "model.diffusion_model." /
// "first_stage_model." prefix). std::nullopt = the name has no counterpart.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace lorad::models {

// What the U-Net name mapping needs to know about the block structure.
struct UNetNameShape {
  int64_t layers_per_block = 2;                // num_res_blocks
  std::vector<bool> up_block_has_attention;    // diffusers up_blocks order (deepest level first)
};

std::optional<std::string> DiffusersToLdmUNetName(const std::string& name, const UNetNameShape& shape);
std::optional<std::string> LdmToDiffusersUNetName(const std::string& name, const UNetNameShape& shape);

// num_levels: number of encoder/decoder levels (diffusers decoder.up_blocks.i = LDM decoder.up.{L-1-i}).
std::optional<std::string> DiffusersToLdmVaeName(const std::string& name, int64_t num_levels);
std::optional<std::string> LdmToDiffusersVaeName(const std::string& name, int64_t num_levels);

// True for the VAE mid-attention q/k/v/proj_out weights, which diffusers stores
// as Linear [C, C] and LDM as 1x1 conv [C, C, 1, 1] (LDM name).
bool IsLdmVaeAttentionWeight(const std::string& ldm_name);

}  // namespace lorad::models
