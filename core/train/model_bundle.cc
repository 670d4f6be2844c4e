#include "core/train/model_bundle.h"

#include "absl/strings/str_cat.h"
#include "core/base/status_macros.h"
#include "core/text/tokenizer.h"

namespace lorad::train {

absl::StatusOr<torch::Device> ResolveDevice(const std::string& name) {
  if (name == "auto") return torch::cuda::is_available() ? torch::Device("cuda:0") : torch::Device(torch::kCPU);
  if (name == "cpu") return torch::Device(torch::kCPU);
  if (!torch::cuda::is_available()) {
    return absl::InvalidArgumentError(absl::StrCat("config key 'device' is \"", name,
                                                   "\" but this LibTorch build sees no CUDA device; use "
                                                   "device = \"cpu\" or a CUDA LibTorch"));
  }
  try {
    torch::Device device(name == "cuda" ? std::string("cuda:0") : name);
    if (device.index() >= static_cast<int>(torch::cuda::device_count())) {
      return absl::InvalidArgumentError(absl::StrCat("config key 'device': ", name, " does not exist (",
                                                     torch::cuda::device_count(), " CUDA devices)"));
    }
    return device;
  } catch (const c10::Error&) {
    return absl::InvalidArgumentError(absl::StrCat("config key 'device': bad value \"", name,
                                                   "\"; expected auto, cpu, cuda or cuda:N"));
  }
}

absl::StatusOr<std::unique_ptr<ModelBundle>> ModelBundle::Load(const TrainConfig& config,
                                                              const ModelBundleOptions& options) {
  const std::filesystem::path path = config.pretrained_model_name_or_path;
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) {
    return absl::NotFoundError(absl::StrCat("base checkpoint not found: ", path.string(),
                                            " (config key 'pretrained_model_name_or_path'); give the path of a "
                                            ".safetensors checkpoint or a diffusers folder"));
  }
  std::unique_ptr<ModelBundle> bundle(new ModelBundle());
  bundle->options_ = options;
  bundle->path_ = path;
  models::LoadOptions load;
  load.dtype = options.weight_dtype;
  load.device = options.device;
  load.load_vae = options.load_vae;
  auto sd = models::LoadStableDiffusion(path, load);
  if (!sd.ok()) {
    return absl::Status(sd.status().code(), absl::StrCat("loading ", path.string(), ": ", sd.status().message()));
  }
  bundle->sd_ = std::move(*sd);
  models::StableDiffusion& m = bundle->sd_;
  try {
    if (m.vae && options.vae_dtype != options.weight_dtype) m.vae->to(options.vae_dtype);
    for (auto& p : m.unet->parameters()) p.set_requires_grad(false);
    if (m.vae) {
      for (auto& p : m.vae->parameters()) p.set_requires_grad(false);
      m.vae->eval();
    }
    for (auto& te : m.text_encoders) {
      for (auto& p : te->parameters()) p.set_requires_grad(false);
      te->eval();
    }
    m.unet->eval();
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("preparing the model: ", e.what_without_backtrace()));
  }

  text::TokenizerSearch search;
  search.explicit_path = config.tokenizer_path;
  search.model_path = path;
  std::vector<text::ClipTokenizer> tokenizers;
  ASSIGN_OR_RETURN(text::ClipTokenizer clip_l, text::FindTokenizer(search, text::TokenizerRole::kClipL));
  tokenizers.push_back(std::move(clip_l));
  if (bundle->is_sdxl()) {
    ASSIGN_OR_RETURN(text::ClipTokenizer big_g, text::FindTokenizer(search, text::TokenizerRole::kBigG));
    tokenizers.push_back(std::move(big_g));
  }
  text::TextConditionerOptions text_options;
  text_options.family = bundle->is_sdxl() ? text::TextFamily::kSdxl : text::TextFamily::kSd15;
  text_options.max_token_length = config.max_token_length.value_or(75);
  // SDXL always conditions on the penultimate layers; clip_skip only applies to SD1.5.
  text_options.clip_skip = bundle->is_sdxl() ? 0 : config.clip_skip.value_or(0);
  ASSIGN_OR_RETURN(text::TextConditioner conditioner,
                   text::TextConditioner::Create(text_options, m.text_encoders, std::move(tokenizers)));
  bundle->conditioner_ = std::make_unique<text::TextConditioner>(std::move(conditioner));
  return bundle;
}

std::string ModelBundle::vae_identity() const {
  std::error_code ec;
  const auto size = std::filesystem::file_size(path_, ec);
  const double scale = sd_.vae ? sd_.vae->config().scaling_factor : 0.0;
  return absl::StrCat(std::filesystem::absolute(path_).string(), ":", ec ? 0 : size, ":",
                      c10::toString(options_.vae_dtype), ":", scale);
}

torch::Tensor ModelBundle::EncodeImages(const torch::Tensor& images, at::Generator generator) {
  torch::NoGradGuard no_grad;
  auto posterior = sd_.vae->Encode(images.to(options_.device, options_.vae_dtype));
  // Draw the posterior noise on the generator's device (CPU) so runs reproduce.
  torch::Tensor noise = torch::randn(posterior.mean.sizes(), generator,
                                     torch::TensorOptions().dtype(torch::kFloat32))
                            .to(posterior.mean.device());
  torch::Tensor sample = posterior.mean.to(torch::kFloat32) +
                         torch::exp(0.5 * posterior.logvar.to(torch::kFloat32)) * noise;
  return sample * sd_.vae->config().scaling_factor;
}

torch::Tensor ModelBundle::EncodeImagesWithNoise(const torch::Tensor& images, const torch::Tensor& noise_in) {
  torch::NoGradGuard no_grad;
  auto posterior = sd_.vae->Encode(images.to(options_.device, options_.vae_dtype));
  torch::Tensor noise = noise_in.to(posterior.mean.device(), torch::kFloat32);
  torch::Tensor sample = posterior.mean.to(torch::kFloat32) +
                         torch::exp(0.5 * posterior.logvar.to(torch::kFloat32)) * noise;
  return sample * sd_.vae->config().scaling_factor;
}

torch::Tensor ModelBundle::DecodeLatents(const torch::Tensor& latents) {
  torch::NoGradGuard no_grad;
  torch::Tensor z = (latents / sd_.vae->config().scaling_factor).to(options_.device, options_.vae_dtype);
  torch::Tensor image = sd_.vae->Decode(z).to(torch::kFloat32);
  return ((image + 1.0) / 2.0).clamp(0.0, 1.0);
}

absl::StatusOr<text::TextConditioning> ModelBundle::EncodeText(const std::vector<std::string>& captions) const {
  return conditioner_->Encode(captions);
}

torch::Tensor ModelBundle::Predict(const torch::Tensor& noisy_latents, const torch::Tensor& timesteps,
                                   const text::TextConditioning& cond, const torch::Tensor& original_hw,
                                   const torch::Tensor& crop_top_left, const torch::Tensor& target_hw) {
  torch::Tensor y;
  if (is_sdxl()) {
    const torch::Device device = noisy_latents.device();
    y = models::SdxlAddedConditioning(cond.pooled, original_hw.to(device), crop_top_left.to(device),
                                      target_hw.to(device), sd_.unet->config().addition_time_embed_dim);
  }
  return sd_.unet->forward(noisy_latents, timesteps, cond.context, y);
}

absl::StatusOr<std::vector<networks::TargetLayer>> ModelBundle::NetworkTargets(bool unet, bool text_encoders,
                                                                              bool conv_blocks) {
  std::vector<networks::TargetLayer> targets;
  if (text_encoders) {
    for (size_t i = 0; i < sd_.text_encoders.size(); ++i) {
      const std::string prefix = is_sdxl() ? absl::StrCat("lora_te", i + 1) : std::string("lora_te");
      auto found = networks::FindTextEncoderTargets(*sd_.text_encoders[i], prefix);
      targets.insert(targets.end(), found.begin(), found.end());
    }
  }
  if (unet) {
    ASSIGN_OR_RETURN(auto found, networks::FindUnetTargets(*sd_.unet, conv_blocks,
                                                           is_sdxl() ? networks::UnetKeyNames::kLdm
                                                                     : networks::UnetKeyNames::kDiffusers));
    targets.insert(targets.end(), found.begin(), found.end());
  }
  return targets;
}

}  // namespace lorad::train
