#include "core/networks/metadata.h"

#include <charconv>
#include <chrono>
#include <cmath>
#include <ctime>
#include <set>

#include "absl/strings/str_cat.h"
#include "core/common/status_macros.h"

namespace lorad::networks {
namespace {

// The ss_* keys of kohya's train_network.py metadata (NetworkTrainer.train's metadata dict).
const std::set<std::string>& KnownSsKeys() {
  static const std::set<std::string> keys = {
      "ss_session_id", "ss_training_started_at", "ss_training_finished_at", "ss_output_name",
      "ss_learning_rate", "ss_unet_lr", "ss_text_encoder_lr", "ss_num_train_images", "ss_num_reg_images",
      "ss_num_batches_per_epoch", "ss_num_epochs", "ss_epoch", "ss_steps", "ss_max_train_steps",
      "ss_lr_warmup_steps", "ss_lr_scheduler", "ss_network_module", "ss_network_dim", "ss_network_alpha",
      "ss_network_dropout", "ss_network_args", "ss_mixed_precision", "ss_full_fp16", "ss_full_bf16", "ss_v2",
      "ss_base_model_version", "ss_clip_skip", "ss_max_token_length", "ss_cache_latents", "ss_seed", "ss_lowram",
      "ss_noise_offset", "ss_adaptive_noise_scale", "ss_multires_noise_iterations", "ss_multires_noise_discount",
      "ss_min_snr_gamma", "ss_debiased_estimation", "ss_zero_terminal_snr", "ss_ip_noise_gamma",
      "ss_noise_offset_random_strength", "ss_ip_noise_gamma_random_strength", "ss_loss_type", "ss_huber_schedule",
      "ss_huber_c", "ss_huber_scale", "ss_training_comment", "ss_sd_scripts_commit_hash", "ss_optimizer",
      "ss_max_grad_norm", "ss_scale_weight_norms", "ss_caption_dropout_rate", "ss_caption_dropout_every_n_epochs",
      "ss_caption_tag_dropout_rate", "ss_face_crop_aug_range", "ss_prior_loss_weight", "ss_gradient_checkpointing",
      "ss_gradient_accumulation_steps", "ss_sd_model_name", "ss_vae_name", "ss_sd_model_hash",
      "ss_new_sd_model_hash", "ss_vae_hash", "ss_new_vae_hash", "ss_resolution", "ss_enable_bucket",
      "ss_bucket_no_upscale", "ss_min_bucket_reso", "ss_max_bucket_reso", "ss_color_aug", "ss_flip_aug",
      "ss_random_crop", "ss_shuffle_caption", "ss_keep_tokens", "ss_total_batch_size",
      "ss_batch_size_per_device", "ss_datasets", "ss_tag_frequency", "ss_dataset_dirs", "ss_reg_dataset_dirs",
      "ss_bucket_info", "ss_min_timestep", "ss_max_timestep", "ss_v_parameterization",
      "ss_scale_v_pred_loss_like_noise_pred", "ss_v_pred_like_loss", "ss_num_train_items"};
  return keys;
}

std::string NowIso8601() {
  const std::time_t now = std::time(nullptr);
  std::tm local{};
  localtime_r(&now, &local);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S", &local);
  return buf;
}

}  // namespace

std::string PythonFloat(double value) {
  if (std::isnan(value)) return "nan";
  if (std::isinf(value)) return value > 0 ? "inf" : "-inf";
  if (value == 0) return std::signbit(value) ? "-0.0" : "0.0";
  // Shortest round-trip digits, then Python's repr layout: fixed for
  // 1e-4 <= |x| < 1e16, else d.ddde[+-]XX.
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof(buf), value, std::chars_format::scientific);
  std::string sci(buf, res.ptr);
  const size_t e = sci.find('e');
  std::string mantissa = sci.substr(0, e);
  const int exponent = std::stoi(sci.substr(e + 1));
  std::string sign;
  if (mantissa[0] == '-') {
    sign = "-";
    mantissa = mantissa.substr(1);
  }
  std::string digits;
  for (char c : mantissa) {
    if (c != '.') digits.push_back(c);
  }
  if (exponent < -4 || exponent >= 16) {
    std::string m = digits.substr(0, 1);
    if (digits.size() > 1) absl::StrAppend(&m, ".", digits.substr(1));
    const int a = std::abs(exponent);
    return absl::StrCat(sign, m, "e", exponent < 0 ? "-" : "+", a < 10 ? "0" : "", a);
  }
  std::string out;
  if (exponent < 0) {
    out = absl::StrCat("0.", std::string(-exponent - 1, '0'), digits);
  } else if (static_cast<int>(digits.size()) <= exponent + 1) {
    out = absl::StrCat(digits, std::string(exponent + 1 - digits.size(), '0'), ".0");
  } else {
    out = absl::StrCat(digits.substr(0, exponent + 1), ".", digits.substr(exponent + 1));
  }
  return sign + out;
}

std::string PythonBool(bool value) { return value ? "True" : "False"; }

bool IsKnownSsKey(const std::string& key) { return KnownSsKeys().count(key) > 0; }

absl::Status LoraMetadataBuilder::Set(const std::string& key, const std::string& value) {
  if (!IsKnownSsKey(key)) {
    return absl::InvalidArgumentError(absl::StrCat("'", key, "' is not a kohya ss_* metadata key"));
  }
  metadata_[key] = value;
  return absl::OkStatus();
}

absl::Status LoraMetadataBuilder::SetFloat(const std::string& key, std::optional<double> value) {
  return Set(key, value ? PythonFloat(*value) : "None");
}

absl::Status LoraMetadataBuilder::SetInt(const std::string& key, std::optional<int64_t> value) {
  return Set(key, value ? absl::StrCat(*value) : "None");
}

absl::Status LoraMetadataBuilder::SetBool(const std::string& key, bool value) { return Set(key, PythonBool(value)); }

absl::Status LoraMetadataBuilder::SetJson(const std::string& key, const nlohmann::json& value) {
  return Set(key, value.dump());
}

void LoraMetadataBuilder::SetNetwork(const NetworkConfig& config) {
  metadata_["ss_network_module"] = NetworkModuleName(config.module);
  metadata_["ss_network_dim"] = absl::StrCat(config.dim);
  metadata_["ss_network_alpha"] = PythonFloat(config.alpha);
  metadata_["ss_network_dropout"] = config.dropout > 0 ? PythonFloat(config.dropout) : "None";
  metadata_["ss_network_args"] = config.NetworkArgsJson();
}

void LoraMetadataBuilder::SetBaseModel(BaseModel base, bool v_parameterization) {
  metadata_["ss_base_model_version"] = base == BaseModel::kSdxl ? "sdxl_base_v1-0" : "sd_v1";
  metadata_["ss_v2"] = "False";
  metadata_["ss_v_parameterization"] = PythonBool(v_parameterization);
}

io::Metadata LoraMetadataBuilder::MinimalMetadata() const {
  io::Metadata out;
  for (const char* key : {"ss_network_module", "ss_network_dim", "ss_network_alpha", "ss_network_args"}) {
    if (auto it = metadata_.find(key); it != metadata_.end()) out[key] = it->second;
  }
  return out;
}

io::Metadata BuildModelSpec(const ModelSpecInput& in) {
  io::Metadata m;
  const bool sdxl = in.base == BaseModel::kSdxl;
  const std::string date = in.date.empty() ? NowIso8601() : in.date;
  m["modelspec.sai_model_spec"] = "1.0.1";
  m["modelspec.architecture"] = sdxl ? "stable-diffusion-xl-v1-base/lora" : "stable-diffusion-v1/lora";
  m["modelspec.implementation"] = sdxl ? "https://github.com/Stability-AI/generative-models" : "diffusers";
  m["modelspec.title"] = in.title.empty() ? absl::StrCat("LoRA@", date) : in.title;
  m["modelspec.resolution"] = in.resolution.empty() ? (sdxl ? "1024x1024" : "512x512") : in.resolution;
  m["modelspec.date"] = date;
  m["modelspec.prediction_type"] = in.v_prediction ? "v" : "epsilon";
  if (!in.implementation_version.empty()) m["modelspec.implementation_version"] = in.implementation_version;
  if (!in.description.empty()) m["modelspec.description"] = in.description;
  if (!in.author.empty()) m["modelspec.author"] = in.author;
  if (!in.license.empty()) m["modelspec.license"] = in.license;
  if (!in.tags.empty()) m["modelspec.tags"] = in.tags;
  if (!in.trigger_phrase.empty()) m["modelspec.trigger_phrase"] = in.trigger_phrase;
  if (in.min_timestep || in.max_timestep) {
    m["modelspec.timestep_range"] = absl::StrCat(in.min_timestep.value_or(0), ",", in.max_timestep.value_or(1000));
  }
  if (in.clip_skip) m["modelspec.encoder_layer"] = absl::StrCat(*in.clip_skip);
  return m;
}

absl::StatusOr<SafetensorsHashes> ComputeSafetensorsHashes(const io::NamedTensors& tensors,
                                                           const io::Metadata& metadata) {
  io::Metadata ss;
  for (const auto& [k, v] : metadata) {
    if (k.rfind("ss_", 0) == 0) ss[k] = v;
  }
  ASSIGN_OR_RETURN(std::string bytes, io::SerializeSafetensors(tensors, ss));
  if (bytes.size() < 8) return absl::InternalError("serialized safetensors image is truncated");
  uint64_t header = 0;
  for (int i = 0; i < 8; ++i) header |= static_cast<uint64_t>(static_cast<uint8_t>(bytes[i])) << (8 * i);
  SafetensorsHashes h;
  // addnet_hash_safetensors: sha256 of everything after the header.
  h.model_hash = Sha256Hex(std::string_view(bytes).substr(8 + header));
  // addnet_hash_legacy: 0x10000 bytes at offset 0x100000 of the file (fewer, or none, for small files).
  const size_t offset = 0x100000;
  const std::string_view legacy =
      bytes.size() > offset ? std::string_view(bytes).substr(offset, 0x10000) : std::string_view();
  h.legacy_hash = Sha256Hex(legacy).substr(0, 8);
  return h;
}

}  // namespace lorad::networks
