// Loading Stable Diffusion checkpoints: single-file (LDM/SGM layout, SD1.5 and
// SDXL) and diffusers folders. The family and every width/depth/head count is
// detected from tensor shapes; what shapes cannot tell (GroupNorm groups, head
// counts, activations) comes from the file's `__metadata__["fixture_config"]`
// when present, else from the family's known values (sd-scripts library/model_util.py,
// library/sdxl_model_util.py; ComfyUI comfy/supported_models.py).
#pragma once

#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "absl/status/statusor.h"
#include "core/io/tensor_source.h"
#include "core/models/unet.h"
#include "core/models/vae.h"
#include "core/models/weights.h"
#include "core/text/clip_text_encoder.h"

namespace lorad::models {

enum class ModelFamily { kSd15, kSdxl };
const char* ModelFamilyName(ModelFamily family);  // "sd15" / "sdxl"

// Checkpoint key prefixes of a single-file checkpoint.
inline constexpr char kUnetPrefix[] = "model.diffusion_model.";
inline constexpr char kVaePrefix[] = "first_stage_model.";

// Where one text encoder's tensors live inside a source.
struct TextEncoderLocation {
  // Passed as-is to text::DetectClipTextConfig / LoadClipTextWeights / ClipCheckpointKeys.
  std::string prefix;
  text::ClipKeyLayout layout = text::ClipKeyLayout::kHuggingFace;
};

// Everything detected about a checkpoint, without loading weights.
struct CheckpointLayout {
  ModelFamily family = ModelFamily::kSd15;
  bool diffusers = false;
  UNetConfig unet;
  VaeConfig vae;
  std::vector<text::ClipTextConfig> text_encoders;  // 1 (SD1.5) or 2 (SDXL)
  std::vector<TextEncoderLocation> text_locations;  // parallel to text_encoders
};

struct KeyReport {
  std::vector<std::string> missing;     // expected but absent
  std::vector<std::string> unexpected;  // present, not used, not a known extra
  std::vector<std::string> ignored;     // known extras: model_ema.*, alphas_cumprod, position_ids, logit_scale, ...
  std::vector<std::string> wrong_shape; // "key: [stored] vs [expected]"
  bool clean() const { return missing.empty() && unexpected.empty() && wrong_shape.empty(); }
};

// The real models' layout of a family: SD1.5 or SDXL base, single-file locations.
CheckpointLayout DefaultLayout(ModelFamily family);

// An opened checkpoint (single file or diffusers folder), names presented in
// the single-file layout for the U-Net and VAE. Thread-compatible.
class Checkpoint {
 public:
  // `path`: a .safetensors file or a diffusers folder (unet/, vae/, text_encoder/, text_encoder_2/).
  static absl::StatusOr<std::unique_ptr<Checkpoint>> Open(const std::filesystem::path& path);
  virtual ~Checkpoint() = default;

  // Detected family and configs (errors name the key that was looked for).
  virtual absl::StatusOr<CheckpointLayout> DetectLayout() const = 0;
  // U-Net / VAE tensors under their single-file names, with the kUnetPrefix /
  // kVaePrefix prefixes (a diffusers folder presents renamed views). The
  // sources read the files streamed (io::SafetensorsFile::Access::kStreamed)
  // and are owned by this Checkpoint: references are valid while it lives.
  virtual const io::TensorSource& unet_source() const = 0;
  virtual const io::TensorSource& vae_source() const = 0;
  // Text encoder i's tensor source (paired with layout.text_locations[i]);
  // i must be below the number of text encoders (std::out_of_range otherwise
  // for a diffusers folder). Valid while this Checkpoint lives.
  virtual const io::TensorSource& text_source(size_t i) const = 0;
  // Number of stored tensors.
  virtual int64_t TensorCount() const = 0;
  // Stored dtype name -> tensor count.
  virtual std::map<std::string, int64_t> DTypeCounts() const = 0;
  // Metadata of the main file (single file) or the unet file (folder); empty
  // when the file has none. Valid while this Checkpoint lives.
  virtual const std::map<std::string, std::string>& Metadata() const = 0;
  // Missing / unexpected / ignored keys against `layout`'s expected key set.
  virtual KeyReport CompareKeys(const CheckpointLayout& layout) const = 0;
  virtual uint64_t TotalBytes() const = 0;
  virtual const std::filesystem::path& path() const = 0;
};

struct LoadOptions {
  torch::ScalarType dtype = torch::kFloat32;
  torch::Device device = torch::kCPU;
  bool load_unet = true;
  bool load_vae = true;
  bool load_text_encoders = true;
};

// A loaded model: configs plus the requested components (others stay null/empty).
struct StableDiffusion {
  ModelFamily family = ModelFamily::kSd15;
  CheckpointLayout layout;
  UNet unet{nullptr};
  Vae vae{nullptr};
  std::vector<text::ClipTextEncoder> text_encoders;
  KeyReport keys;
};

// Opens, detects and loads `path` straight into options.dtype/device (one copy
// of the weights in memory; each tensor is read from the file into its
// parameter). A missing key or wrong shape is an error naming the key.
absl::StatusOr<StableDiffusion> LoadStableDiffusion(const std::filesystem::path& path,
                                                    const LoadOptions& options = {});

// Expected keys and shapes of a layout (U-Net and VAE under their single-file
// prefixes, text encoders under their locations' prefixes), computed on the
// meta device: nothing is allocated even for full-size SDXL.
std::vector<std::pair<std::string, std::vector<int64_t>>> ExpectedCheckpointKeys(const CheckpointLayout& layout);

}  // namespace lorad::models
