// Architecture detection from tensor shapes (never hard-coded sizes). What
// shapes cannot tell comes from the original-config json the file's metadata
// carries (fixture_config.original_unet_config / original_vae_config), else
// the family's known values (sd-scripts library/model_util.py, library/sdxl_model_util.py).
#pragma once

#include <map>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "absl/status/statusor.h"
#include "core/io/tensor_source.h"
#include "core/models/unet.h"
#include "core/models/vae.h"

namespace lorad::models {

// `sdxl_defaults`: use SDXL's known values (head dim 64) for what shapes cannot
// tell, else SD1.5's (8 heads). `original_config`: may be null.
absl::StatusOr<UNetConfig> DetectUNetConfig(const io::TensorSource& source, const std::string& prefix,
                                            bool sdxl_defaults, const nlohmann::json* original_config);

// `default_scaling_factor` is used unless `scaling_factor_override` is set.
absl::StatusOr<VaeConfig> DetectVaeConfig(const io::TensorSource& source, const std::string& prefix,
                                          double default_scaling_factor, const nlohmann::json* original_config,
                                          std::optional<double> scaling_factor_override = std::nullopt);

// Parses metadata["fixture_config"] (a json string); null json when absent or invalid.
nlohmann::json FixtureConfig(const std::map<std::string, std::string>& metadata);

}  // namespace lorad::models
