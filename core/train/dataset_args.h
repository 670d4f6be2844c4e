// TrainConfig -> data::DatasetArgs: the dataset keys of a kohya config as
// core/data reads them. Torch- and OpenCV-free (lorad_dataset_args), so the
// daemon checks a submitted dataset_config with the trainer's own mapping and
// parser (data::ParseDatasetConfigToml) before it queues the job.
#pragma once

#include <cstdint>

#include "absl/status/statusor.h"
#include "core/config/config.h"
#include "core/data/dataset_config.h"

namespace lorad::train {

// `native_resolution` (512 / 1024) is used when config.resolution is empty.
// config.seed must be set (the data order depends on it).
absl::StatusOr<data::DatasetArgs> DatasetArgsFor(const TrainConfig& config, int64_t native_resolution);

}  // namespace lorad::train
