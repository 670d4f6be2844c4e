#include "core/networks/metadata.h"

#include <charconv>
#include <chrono>
#include <cmath>
#include <ctime>
#include <filesystem>
#include <set>
#include <string_view>

#include "absl/strings/str_cat.h"
#include "core/base/status_macros.h"

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

// Well-formed UTF-8 (no overlong forms, surrogates or code points past U+10FFFF).
bool IsUtf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    int len = 0;
    uint32_t cp = 0;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      len = 2;
      cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3;
      cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4;
      cp = c & 0x07;
    } else {
      return false;
    }
    if (i + len > s.size()) return false;
    for (int k = 1; k < len; ++k) {
      const auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3F);
    }
    static constexpr uint32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < kMin[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += len;
  }
  return true;
}

nlohmann::json BucketsJson(const std::vector<BucketCount>& buckets) {
  nlohmann::json out = nlohmann::json::object();
  int i = 0;
  for (const BucketCount& b : buckets) {
    out[std::to_string(i++)] = {{"resolution", {b.width, b.height}}, {"count", b.count}};
  }
  return out;
}

// ss_datasets: one entry per dataset group, as kohya's DreamBoothDataset writes it.
nlohmann::json DatasetsJson(const DatasetFacts& d) {
  using nlohmann::json;
  json datasets = json::array();
  for (const DatasetGroupFacts& g : d.groups) {
    json subsets = json::array();
    json group_tags = json::object();
    for (const SubsetFacts& s : g.subsets) {
      subsets.push_back({{"img_count", s.img_count},
                         {"num_repeats", s.num_repeats},
                         {"color_aug", s.color_aug},
                         {"flip_aug", s.flip_aug},
                         {"random_crop", s.random_crop},
                         {"shuffle_caption", s.shuffle_caption},
                         {"keep_tokens", s.keep_tokens},
                         {"keep_tokens_separator", s.keep_tokens_separator},
                         {"image_dir", s.image_dir},
                         {"class_tokens", s.class_tokens},
                         {"is_reg", s.is_reg}});
      if (auto t = d.tag_frequency.find(s.image_dir); t != d.tag_frequency.end()) group_tags[s.image_dir] = t->second;
    }
    datasets.push_back({{"is_dreambooth", true},
                        {"batch_size_per_device", g.batch_size},
                        {"num_train_images", g.num_train_images},
                        {"num_reg_images", g.num_reg_images},
                        {"resolution", {g.resolution_width, g.resolution_height}},
                        {"enable_bucket", g.enable_bucket},
                        {"min_bucket_reso", g.min_bucket_reso},
                        {"max_bucket_reso", g.max_bucket_reso},
                        {"tag_frequency", group_tags},
                        {"bucket_info", {{"buckets", BucketsJson(g.buckets)}, {"mean_img_ar_error", g.mean_img_ar_error}}},
                        {"subsets", subsets}});
  }
  return datasets;
}

void SetDatasetFacts(const DatasetFacts& d, LoraMetadataBuilder& b) {
  using nlohmann::json;
  json dataset_dirs = json::object(), reg_dirs = json::object();
  for (const DatasetGroupFacts& g : d.groups) {
    for (const SubsetFacts& s : g.subsets) {
      (s.is_reg ? reg_dirs : dataset_dirs)[s.image_dir] = {{"n_repeats", s.num_repeats}, {"img_count", s.img_count}};
    }
  }
  json tags = json::object();
  for (const auto& [dir, freq] : d.tag_frequency) tags[dir] = freq;
  b.SetInt("ss_num_reg_images", d.num_reg_images);
  b.SetJson("ss_tag_frequency", tags);
  b.SetJson("ss_dataset_dirs", dataset_dirs);
  b.SetJson("ss_reg_dataset_dirs", reg_dirs);
  b.SetJson("ss_bucket_info", {{"buckets", BucketsJson(d.buckets)}, {"mean_img_ar_error", d.mean_img_ar_error}});
  b.SetJson("ss_datasets", DatasetsJson(d));
}

}  // namespace

std::string NowIso8601() {
  const std::time_t now = std::time(nullptr);
  std::tm local{};
  localtime_r(&now, &local);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S", &local);
  return buf;
}

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

void LoraMetadataBuilder::Set(const std::string& key, const std::string& value) {
  if (!status_.ok()) return;
  if (!IsKnownSsKey(key)) {
    status_ = absl::InvalidArgumentError(absl::StrCat("'", key, "' is not a kohya ss_* metadata key"));
  } else if (metadata_.count(key)) {
    status_ = absl::InvalidArgumentError(absl::StrCat("metadata key '", key, "' is set twice"));
  } else if (!IsUtf8(value)) {
    status_ = absl::InvalidArgumentError(absl::StrCat("metadata key '", key, "': the value is not UTF-8 text"));
  } else {
    metadata_[key] = value;
  }
}

void LoraMetadataBuilder::SetFloat(const std::string& key, std::optional<double> value) {
  Set(key, value ? PythonFloat(*value) : "None");
}

void LoraMetadataBuilder::SetInt(const std::string& key, std::optional<int64_t> value) {
  Set(key, value ? absl::StrCat(*value) : "None");
}

void LoraMetadataBuilder::SetBool(const std::string& key, bool value) { Set(key, PythonBool(value)); }

void LoraMetadataBuilder::SetJson(const std::string& key, const nlohmann::json& value) {
  if (!status_.ok()) return;
  std::string text;
  try {
    text = value.dump();
  } catch (const nlohmann::json::exception& e) {
    // dump() refuses strings that are not UTF-8 (e.g. a caption in another encoding).
    status_ = absl::InvalidArgumentError(absl::StrCat("metadata key '", key, "': ", e.what()));
    return;
  }
  Set(key, text);
}

void LoraMetadataBuilder::SetNetwork(const NetworkConfig& config) {
  Set("ss_network_module", NetworkModuleName(config.module));
  SetInt("ss_network_dim", config.dim);
  SetFloat("ss_network_alpha", config.alpha);
  SetFloat("ss_network_dropout", config.dropout > 0 ? std::optional<double>(config.dropout) : std::nullopt);
  Set("ss_network_args", config.NetworkArgsJson());
}

void LoraMetadataBuilder::SetBaseModel(BaseModel base, bool v_parameterization) {
  Set("ss_base_model_version", base == BaseModel::kSdxl ? "sdxl_base_v1-0" : "sd_v1");
  Set("ss_v2", "False");
  SetBool("ss_v_parameterization", v_parameterization);
}

absl::StatusOr<io::Metadata> LoraMetadataBuilder::Build() const {
  if (!status_.ok()) return status_;
  return metadata_;
}

absl::StatusOr<io::Metadata> LoraMetadataBuilder::BuildMinimal() const {
  if (!status_.ok()) return status_;
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

absl::StatusOr<io::Metadata> BuildLoraMetadata(const train::TrainConfig& config, const TrainingFacts& facts) {
  LoraMetadataBuilder b;
  b.SetNetwork(facts.network);
  b.SetBaseModel(facts.base, config.v_parameterization);
  if (config.no_metadata) return b.BuildMinimal();
  b.Set("ss_session_id", absl::StrCat(facts.seed));
  b.Set("ss_training_started_at", absl::StrCat(facts.started_at));
  b.Set("ss_training_finished_at", absl::StrCat(facts.finished_at));
  b.Set("ss_output_name", config.output_name);
  b.SetFloat("ss_learning_rate", config.learning_rate);
  b.SetFloat("ss_unet_lr", config.unet_lr);
  b.SetFloat("ss_text_encoder_lr", config.text_encoder_lr);
  b.SetInt("ss_num_train_images", facts.num_train_images);
  b.SetInt("ss_num_batches_per_epoch", facts.num_batches_per_epoch);
  b.SetInt("ss_num_epochs", facts.num_epochs);
  b.SetInt("ss_epoch", facts.epoch);
  b.SetInt("ss_steps", facts.steps);
  b.SetInt("ss_max_train_steps", facts.max_train_steps);
  b.SetInt("ss_lr_warmup_steps", facts.lr_warmup_steps);
  b.Set("ss_lr_scheduler", config.lr_scheduler);
  b.Set("ss_mixed_precision", config.mixed_precision);
  b.SetBool("ss_full_fp16", config.full_fp16);
  b.SetBool("ss_full_bf16", config.full_bf16);
  b.SetInt("ss_clip_skip", config.clip_skip);
  b.SetInt("ss_max_token_length", config.max_token_length);
  b.SetBool("ss_cache_latents", config.cache_latents);
  b.SetInt("ss_seed", facts.seed);
  b.SetBool("ss_lowram", false);
  b.SetFloat("ss_noise_offset", config.noise_offset);
  b.SetFloat("ss_adaptive_noise_scale", config.adaptive_noise_scale);
  b.SetInt("ss_multires_noise_iterations", config.multires_noise_iterations);
  b.SetFloat("ss_multires_noise_discount", config.multires_noise_discount);
  b.SetFloat("ss_min_snr_gamma", config.min_snr_gamma);
  b.SetBool("ss_debiased_estimation", config.debiased_estimation_loss);
  b.SetBool("ss_zero_terminal_snr", config.zero_terminal_snr);
  b.SetFloat("ss_ip_noise_gamma", config.ip_noise_gamma);
  b.SetBool("ss_noise_offset_random_strength", config.noise_offset_random_strength);
  b.SetBool("ss_ip_noise_gamma_random_strength", config.ip_noise_gamma_random_strength);
  b.Set("ss_loss_type", config.loss_type);
  b.Set("ss_huber_schedule", config.huber_schedule);
  b.SetFloat("ss_huber_c", config.huber_c);
  b.Set("ss_training_comment", config.training_comment.empty() ? "None" : config.training_comment);
  b.Set("ss_optimizer", facts.optimizer);
  b.SetFloat("ss_max_grad_norm", config.max_grad_norm);
  b.SetFloat("ss_scale_weight_norms", config.scale_weight_norms);
  b.SetFloat("ss_caption_dropout_rate", config.caption_dropout_rate);
  b.SetInt("ss_caption_dropout_every_n_epochs", config.caption_dropout_every_n_epochs);
  b.SetFloat("ss_caption_tag_dropout_rate", config.caption_tag_dropout_rate);
  b.SetFloat("ss_prior_loss_weight", config.prior_loss_weight);
  b.SetBool("ss_gradient_checkpointing", config.gradient_checkpointing);
  b.SetInt("ss_gradient_accumulation_steps", config.gradient_accumulation_steps);
  b.Set("ss_sd_model_name", std::filesystem::path(config.pretrained_model_name_or_path).filename().string());
  b.Set("ss_vae_name", config.vae.empty() ? "None" : config.vae);
  b.Set("ss_resolution", absl::StrCat("(", facts.resolution.first, ", ", facts.resolution.second, ")"));
  b.SetBool("ss_enable_bucket", config.enable_bucket);
  b.SetBool("ss_bucket_no_upscale", config.bucket_no_upscale);
  b.SetInt("ss_min_bucket_reso", config.min_bucket_reso);
  b.SetInt("ss_max_bucket_reso", config.max_bucket_reso);
  b.SetBool("ss_color_aug", config.color_aug);
  b.SetBool("ss_flip_aug", config.flip_aug);
  b.SetBool("ss_random_crop", config.random_crop);
  b.SetBool("ss_shuffle_caption", config.shuffle_caption);
  b.SetInt("ss_keep_tokens", config.keep_tokens);
  b.SetInt("ss_total_batch_size", config.train_batch_size * config.gradient_accumulation_steps);
  b.SetInt("ss_batch_size_per_device", config.train_batch_size);
  if (facts.dataset) SetDatasetFacts(*facts.dataset, b);
  ASSIGN_OR_RETURN(io::Metadata metadata, b.Build());

  ModelSpecInput spec;
  spec.base = facts.base;
  spec.v_prediction = config.v_parameterization;
  spec.title = config.metadata_title.empty() ? config.output_name : config.metadata_title;
  spec.date = facts.date;
  spec.resolution = absl::StrCat(facts.resolution.first, "x", facts.resolution.second);
  spec.description = config.metadata_description;
  spec.author = config.metadata_author;
  spec.license = config.metadata_license;
  spec.tags = config.metadata_tags;
  spec.min_timestep = config.min_timestep;
  spec.max_timestep = config.max_timestep;
  spec.clip_skip = config.clip_skip;
  spec.implementation_version = facts.implementation_version;
  for (auto& [k, v] : BuildModelSpec(spec)) metadata[k] = v;
  return metadata;
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

absl::Status AddSafetensorsHashes(const io::NamedTensors& tensors, io::Metadata& metadata) {
  ASSIGN_OR_RETURN(SafetensorsHashes hashes, ComputeSafetensorsHashes(tensors, metadata));
  metadata["sshs_model_hash"] = hashes.model_hash;
  metadata["sshs_legacy_hash"] = hashes.legacy_hash;
  return absl::OkStatus();
}

}  // namespace lorad::networks
