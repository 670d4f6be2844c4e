#include <gtest/gtest.h>

#include "core/networks/unet_names.h"

namespace lorad::networks {
namespace {

TEST(LdmToDiffusers, Sd15Table) {
  const UnetLayout sd15{4, 2};
  const std::vector<std::pair<std::string, std::string>> table = {
      {"input_blocks.0.0", "conv_in"},
      {"input_blocks.1.0.in_layers.2", "down_blocks.0.resnets.0.conv1"},
      {"input_blocks.1.1.transformer_blocks.0.attn1.to_q", "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"},
      {"input_blocks.2.1.proj_in", "down_blocks.0.attentions.1.proj_in"},
      {"input_blocks.3.0.op", "down_blocks.0.downsamplers.0.conv"},
      {"input_blocks.4.0.skip_connection", "down_blocks.1.resnets.0.conv_shortcut"},
      {"input_blocks.5.0.emb_layers.1", "down_blocks.1.resnets.1.time_emb_proj"},
      {"input_blocks.9.0.op", "down_blocks.2.downsamplers.0.conv"},
      {"input_blocks.11.0.out_layers.3", "down_blocks.3.resnets.1.conv2"},
      {"middle_block.0.in_layers.0", "mid_block.resnets.0.norm1"},
      {"middle_block.1.proj_out", "mid_block.attentions.0.proj_out"},
      {"middle_block.2.out_layers.0", "mid_block.resnets.1.norm2"},
      {"output_blocks.0.0.skip_connection", "up_blocks.0.resnets.0.conv_shortcut"},
      {"output_blocks.2.1.conv", "up_blocks.0.upsamplers.0.conv"},
      {"output_blocks.3.1.transformer_blocks.0.ff.net.2", "up_blocks.1.attentions.0.transformer_blocks.0.ff.net.2"},
      {"output_blocks.5.2.conv", "up_blocks.1.upsamplers.0.conv"},
      {"output_blocks.8.2.conv", "up_blocks.2.upsamplers.0.conv"},
      {"output_blocks.11.1.transformer_blocks.0.ff.net.0.proj",
       "up_blocks.3.attentions.2.transformer_blocks.0.ff.net.0.proj"},
      {"time_embed.0", "time_embedding.linear_1"},
      {"time_embed.2", "time_embedding.linear_2"},
      {"out.0", "conv_norm_out"},
      {"out.2", "conv_out"},
      {"label_emb.0.2", "add_embedding.linear_2"},
  };
  for (const auto& [ldm, diffusers] : table) {
    auto got = LdmToDiffusersUnetPath(ldm, sd15);
    ASSERT_TRUE(got.ok()) << ldm << ": " << got.status();
    EXPECT_EQ(*got, diffusers) << ldm;
  }
}

TEST(LdmToDiffusers, SdxlLayoutAndErrors) {
  const UnetLayout sdxl{3, 2};
  EXPECT_EQ(*LdmToDiffusersUnetPath("input_blocks.7.1.proj_in", sdxl), "down_blocks.2.attentions.0.proj_in");
  EXPECT_EQ(*LdmToDiffusersUnetPath("output_blocks.8.0.in_layers.2", sdxl), "up_blocks.2.resnets.2.conv1");
  // No downsampler after the last level, no block past it.
  EXPECT_FALSE(LdmToDiffusersUnetPath("input_blocks.9.0.op", sdxl).ok());
  EXPECT_FALSE(LdmToDiffusersUnetPath("output_blocks.9.0.in_layers.2", sdxl).ok());
  EXPECT_FALSE(LdmToDiffusersUnetPath("output_blocks.8.2.conv", sdxl).ok());
  EXPECT_FALSE(LdmToDiffusersUnetPath("bogus.1", sdxl).ok());
}

}  // namespace
}  // namespace lorad::networks
