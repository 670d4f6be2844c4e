// What a base checkpoint says about how it was trained and what it is, read
// from its tensor names and metadata only (the safetensors header, or a
// diffusers folder's scheduler config), without LibTorch, so lorad-inspect,
// the trainer and the daemon's submit check share one reading.
//
// Prediction type, as the loaders decide it (ComfyUI comfy/supported_models.py
// SDXL.model_type): a `v_pred` tensor marks v-prediction (NoobAI-XL v-pred and
// other anime v-pred checkpoints), a `ztsnr` tensor zero-terminal-SNR training,
// `edm_mean` / `edm_vpred.*` an EDM model (Playground v2.5, CosXL); kohya's
// model spec writes `modelspec.prediction_type` (epsilon | v); a diffusers
// folder has scheduler/scheduler_config.json prediction_type and
// rescale_betas_zero_snr.
//
// Lineage (Pony Diffusion, Illustrious-XL, NoobAI-XL, Animagine XL) only where
// the metadata names it: modelspec.title / description / author, kohya's
// ss_sd_model_name / ss_output_name / ss_training_comment. Their weights
// share SDXL's architecture, so nothing else can tell them apart.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/config/config.h"
#include "core/io/safetensors_header.h"

namespace lorad::models {

enum class Prediction { kEpsilon, kV, kEdm };
std::string PredictionName(Prediction prediction);  // "epsilon" | "v" | "edm"

struct BaseModelFacts {
  Prediction prediction = Prediction::kEpsilon;
  std::string prediction_evidence;  // e.g. "tensor 'v_pred'"; empty when nothing marks it
  bool zero_terminal_snr = false;
  std::string zero_terminal_snr_evidence;
  std::string lineage;  // "Pony Diffusion" | "Illustrious-XL" | "NoobAI-XL" | "Animagine XL" | ""
  std::string lineage_evidence;  // e.g. "metadata modelspec.title = \"NoobAI-XL v-pred 1.0\""
};

// From a file's tensor names and metadata.
BaseModelFacts DescribeBaseModel(const std::vector<std::string>& tensor_names, const io::Metadata& metadata);

// Reads a single-file checkpoint's header (not its weights) or a diffusers
// folder's configs. Errors name the path.
absl::StatusOr<BaseModelFacts> ReadBaseModelFacts(const std::filesystem::path& checkpoint);

// Makes the config agree with the checkpoint: a v-prediction model trains with
// v_parameterization (set when unset; explicitly false is INVALID_ARGUMENT, it
// would teach the LoRA the wrong target) and with zero_terminal_snr when the
// model was trained so (set when unset; explicitly false is kept, with a
// warning). An EDM model is FAILED_PRECONDITION: lorad trains DDPM models.
// v_parameterization on a model marked epsilon is a warning. Each change or
// doubt appends a message to `warnings`.
absl::Status ApplyBaseModelFacts(const BaseModelFacts& facts, train::TrainConfig& config,
                                 std::vector<std::string>* warnings);

}  // namespace lorad::models
