// What lorad-inspect reports about a checkpoint or a LoRA file.
#pragma once

#include <filesystem>
#include <string>

#include <nlohmann/json.hpp>

#include "absl/status/statusor.h"

namespace lorad::models {

// A json report. Checkpoint (single file or diffusers folder): kind
// "checkpoint", family, detected configs, dtypes, tensor count, parameter
// counts per component, missing / unexpected / ignored keys. LoRA file: kind
// "lora", key count, module count, network dims/alphas, ss_* metadata.
absl::StatusOr<nlohmann::json> InspectModelFile(const std::filesystem::path& path);

// Human-readable rendering of the report.
std::string FormatInspection(const nlohmann::json& report);

}  // namespace lorad::models
