// The frozen Stable Diffusion parts a training run uses (U-Net, VAE, text
// encoders + tokenizers as a TextConditioner), loaded once, with the glue the
// loop and the previews need: image -> latent, captions -> conditioning,
// U-Net prediction with SDXL's added conditioning, latent -> image, and the
// layers a network adapts. Not thread-safe.
#pragma once

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "absl/status/statusor.h"
#include "core/models/checkpoint.h"
#include "core/networks/targets.h"
#include "core/text/text_conditioning.h"
#include "core/config/config.h"

namespace lorad::train {

struct ModelBundleOptions {
  torch::Device device = torch::kCPU;
  torch::ScalarType weight_dtype = torch::kFloat32;  // U-Net and text encoders
  torch::ScalarType vae_dtype = torch::kFloat32;
  bool load_vae = true;
};

class ModelBundle {
 public:
  // Loads config.pretrained_model_name_or_path and finds the tokenizers
  // (tokenizer_path, the model's folders, the HF cache). Every base weight is
  // frozen (requires_grad false). NOT_FOUND for a missing checkpoint/tokenizer.
  static absl::StatusOr<std::unique_ptr<ModelBundle>> Load(const TrainConfig& config,
                                                          const ModelBundleOptions& options);

  models::ModelFamily family() const { return sd_.family; }
  bool is_sdxl() const { return sd_.family == models::ModelFamily::kSdxl; }
  const char* arch_name() const { return models::ModelFamilyName(sd_.family); }
  models::UNetImpl& unet() { return *sd_.unet; }
  models::StableDiffusion& sd() { return sd_; }
  const text::TextConditioner& conditioner() const { return *conditioner_; }
  const ModelBundleOptions& options() const { return options_; }
  // 512 (SD1.5) or 1024 (SDXL): the preview and default training size.
  int64_t native_resolution() const { return is_sdxl() ? 1024 : 512; }
  // Names the VAE for latent cache keys (file, size, dtype, scaling factor).
  std::string vae_identity() const;

  // Images [B,3,H,W] in [-1,1] -> latents sampled from the posterior with
  // `generator`, times the scaling factor, float32. No grad.
  torch::Tensor EncodeImages(const torch::Tensor& images, at::Generator generator);
  // The same with the posterior's standard-normal draw given ([B,4,H/8,W/8],
  // float32): data-parallel ranks draw it for the global batch and take their rows.
  torch::Tensor EncodeImagesWithNoise(const torch::Tensor& images, const torch::Tensor& noise);
  // Latents (scaled) -> images [B,3,H,W] in [0,1], float32. No grad.
  torch::Tensor DecodeLatents(const torch::Tensor& latents);
  // Captions -> context (+ pooled for SDXL). Respects the caller's grad mode.
  absl::StatusOr<text::TextConditioning> EncodeText(const std::vector<std::string>& captions) const;
  // The U-Net's prediction. Size tensors int64 [B,2] (h,w) / (top,left); used for SDXL only.
  torch::Tensor Predict(const torch::Tensor& noisy_latents, const torch::Tensor& timesteps,
                        const text::TextConditioning& cond, const torch::Tensor& original_hw,
                        const torch::Tensor& crop_top_left, const torch::Tensor& target_hw);

  // The layers a kohya network wraps: U-Net (with conv blocks when asked)
  // and/or the text encoders ("lora_te" for SD1.5, "lora_te1"/"lora_te2" for SDXL).
  absl::StatusOr<std::vector<networks::TargetLayer>> NetworkTargets(bool unet, bool text_encoders,
                                                                   bool conv_blocks);

 private:
  ModelBundle() = default;
  ModelBundleOptions options_;
  std::filesystem::path path_;
  models::StableDiffusion sd_;
  std::unique_ptr<text::TextConditioner> conditioner_;
};

// "cpu" / "cuda" / "cuda:N" / "auto" (CUDA when available) -> a device;
// INVALID_ARGUMENT when CUDA is asked for and LibTorch has none.
absl::StatusOr<torch::Device> ResolveDevice(const std::string& name);

}  // namespace lorad::train
