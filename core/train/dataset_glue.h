// TrainConfig -> data::Dataset: the dataset keys of a kohya config mapped to
// data::DatasetArgs, and the TrainInputs the loop needs from a Dataset (latent
// caching, the facts for the ss_* metadata). Part of lorad_train_data, built only with core/data
// (OpenCV); the loop itself (lorad_train) does not need it.
#pragma once

#include <filesystem>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "core/data/dataset.h"
#include "core/config/config.h"
#include "core/networks/metadata.h"
#include "core/train/dataset_args.h"
#include "core/train/trainer.h"

namespace lorad::train {

// The base model's native resolution from its header alone (no weights loaded).
absl::StatusOr<int64_t> NativeResolutionOf(const std::string& checkpoint_path);

// A TrainInputs::cache_text_encoder_outputs hook backed by core/data's
// TextEncoderCache: one safetensors file per caption under `dir` (created),
// reused across runs while the encoders' identity matches.
std::function<absl::StatusOr<TextEncodeFn>(const std::string&, TextEncodeFn)> DiskTextEncoderCacheHook(
    std::filesystem::path dir);

// What the saved LoRA's metadata records about `dataset`: image and repeat
// counts per folder and group, buckets, aspect-ratio error, tag frequency.
networks::DatasetFacts DatasetFactsOf(const data::Dataset& dataset);

// TrainInputs over `dataset` (which must outlive them); latents are cached on
// disk under <output_dir>/latent_cache with cache_latents_to_disk, text-encoder
// outputs under <output_dir>/text_encoder_cache with cache_text_encoder_outputs_to_disk.
TrainInputs InputsFor(const TrainConfig& config, data::Dataset& dataset);

}  // namespace lorad::train
