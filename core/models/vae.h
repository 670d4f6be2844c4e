// The Stable Diffusion VAE (AutoencoderKL; same architecture for SD1.5 and SDXL),
// with the checkpoint's LDM names under `first_stage_model.` (prefix stripped):
// encoder.*, decoder.*, quant_conv, post_quant_conv, as in latent-diffusion's
// ldm/modules/diffusionmodules/model.py (Encoder, Decoder).
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "absl/status/status.h"
#include "core/models/norm.h"
#include "core/nn/layer.h"

namespace lorad::models {

struct VaeConfig {
  int64_t in_channels = 3;
  int64_t out_channels = 3;
  int64_t ch = 128;
  std::vector<int64_t> ch_mult = {1, 2, 4, 4};
  int64_t num_res_blocks = 2;
  int64_t z_channels = 4;
  int64_t embed_dim = 4;
  int64_t norm_groups = 32;
  double norm_eps = 1e-6;
  double scaling_factor = 0.18215;

  static VaeConfig Sd15();
  static VaeConfig Sdxl();
  absl::Status Validate() const;
  nlohmann::json ToJson() const;
};

struct VaePosterior {
  torch::Tensor mean;
  torch::Tensor logvar;  // clamped to [-30, 20]
  // mean + exp(0.5 logvar) * noise (noise drawn from `generator` when given).
  torch::Tensor Sample(std::optional<torch::Generator> generator = std::nullopt) const;
};

class VaeResnetBlockImpl;
class VaeAttentionImpl;
class VaeEncoderImpl;
class VaeDecoderImpl;

class VaeImpl : public torch::nn::Module {
 public:
  VaeImpl(const VaeConfig& config, torch::TensorOptions options = {});

  // Image [B, in, H, W] in [-1, 1] -> posterior (quant_conv applied).
  VaePosterior Encode(const torch::Tensor& x);
  // Encoder output before quant_conv [B, 2z, H/f, W/f] (for parity tests).
  torch::Tensor EncoderOut(const torch::Tensor& x);
  // Latent [B, embed_dim, h, w] (already divided by scaling_factor) -> image.
  torch::Tensor Decode(const torch::Tensor& z);

  const VaeConfig& config() const { return config_; }

 private:
  VaeConfig config_;
  std::shared_ptr<VaeEncoderImpl> encoder_;
  std::shared_ptr<VaeDecoderImpl> decoder_;
  nn::Layer quant_conv_{nullptr}, post_quant_conv_{nullptr};
};
TORCH_MODULE(Vae);

}  // namespace lorad::models
