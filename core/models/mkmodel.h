// Random-initialised Stable Diffusion checkpoints in the exact single-file
// layout (lorad-mkmodel): full-size (the real key set and shapes) or tiny (the
// same block structure with small widths, for tests and demos). Tiny files
// carry their hyperparameters in __metadata__["fixture_config"], as the shared
// fixtures do, and a demo BPE vocabulary is written next to them.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "absl/status/status.h"
#include "core/models/checkpoint.h"

namespace lorad::models {

enum class ModelSize { kTiny, kFull };

struct MakeModelOptions {
  ModelFamily family = ModelFamily::kSdxl;
  ModelSize size = ModelSize::kTiny;
  torch::ScalarType dtype = torch::kFloat16;
  uint64_t seed = 0;
  // Captions the demo vocabulary is learned from (tiny only); empty = built-in demo captions.
  std::vector<std::string> captions;
};

// The tiny layout of a family: SDXL/SD1.5 block structure, small widths, 8
// GroupNorm groups, text encoders with the demo vocabulary's size.
CheckpointLayout TinyLayout(ModelFamily family);

// The __metadata__["fixture_config"] json describing `layout` (original_unet_config,
// original_vae_config, text_encoder_{1,2}_config, vae_scaling_factor, kind).
nlohmann::json LayoutFixtureConfig(const CheckpointLayout& layout);

// Writes the checkpoint to `out` atomically, tensor by tensor (memory use is
// one tensor, not the model), and for tiny models the demo vocabulary into
// text::CompanionTokenizerDir(out).
absl::Status MakeModel(const std::filesystem::path& out, const MakeModelOptions& options);

// The built-in demo captions (booru-style tags and short sentences).
const std::vector<std::string>& DemoCaptions();

}  // namespace lorad::models
