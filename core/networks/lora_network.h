// A LoRA network: one adapter per target layer, attached to the frozen models
// at run time; kohya's state-dict naming, save (fp16/bf16/float, metadata,
// atomic) and load (`network_weights`), merged weights for previews / tests.
#pragma once

#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/io/safetensors.h"
#include "core/networks/adapter.h"
#include "core/networks/network_config.h"
#include "core/networks/targets.h"

namespace lorad::networks {

struct AdaptedModule {
  std::string lora_name;
  std::string module_path;
  std::shared_ptr<nn::LayerImpl> layer;
  std::shared_ptr<Adapter> adapter;
  bool is_text_encoder = false;
};

// What one max-norm pass did (kohya apply_max_norm_regularization): norms are
// of the merged deltas after scaling.
struct MaxNormStats {
  int64_t keys_scaled = 0;
  double average_key_norm = 0;
  double max_key_norm = 0;
};


// Not thread-safe. The network must outlive its attachment (Remove() or destroy
// it before the models if they live on).
class LoraNetwork {
 public:
  // One adapter per target (kxk convs get conv_dim / conv_alpha), initialised
  // from `init_generator` in target order. Targets whose lora_name starts with
  // "lora_te" count as text-encoder modules. INVALID_ARGUMENT for duplicate
  // names or a bad config.
  static absl::StatusOr<std::unique_ptr<LoraNetwork>> Create(const NetworkConfig& config,
                                                             const std::vector<TargetLayer>& targets,
                                                             std::optional<at::Generator> init_generator = {});
  ~LoraNetwork();
  LoraNetwork(const LoraNetwork&) = delete;
  LoraNetwork& operator=(const LoraNetwork&) = delete;

  // Installs / removes the adapters as the layers' hooks.
  void Apply();
  void Remove();
  bool applied() const { return applied_; }

  const NetworkConfig& config() const { return config_; }
  const std::vector<AdaptedModule>& modules() const { return modules_; }
  const AdaptedModule* Find(const std::string& lora_name) const;

  // Trainable parameters, split as kohya's parameter groups are.
  std::vector<torch::Tensor> UnetParameters() const;
  std::vector<torch::Tensor> TextEncoderParameters() const;
  // The "up" parameters (LoRA+), and the rest, per part.
  std::vector<torch::Tensor> UpParameters(bool text_encoder) const;
  std::vector<torch::Tensor> NonUpParameters(bool text_encoder) const;
  int64_t NumParameters() const;

  void SetMultiplier(double multiplier);
  // The generator used for dropout / rank dropout / module dropout draws.
  void SetDropoutGenerator(std::optional<at::Generator> generator);
  // Training mode enables the dropouts (adapters follow torch::nn::Module::train()).
  void Train(bool on);
  void To(const torch::Device& device, torch::ScalarType dtype);

  // For one training forward (and the backward through it): the adapters read
  // their trainable single-use weights from copies in `compute_dtype` (the
  // autocast dtype), cast in one multi-tensor copy, and their gradients come
  // back to the float32 weights in one (see ComputeCopies). Open it around the
  // forward only: a checkpointed block's recomputation, after it, casts its own.
  ComputeCopies::Scope MakeComputeCopies(torch::ScalarType compute_dtype);

  // The state dict with kohya's keys ("<lora_name>.<key>"), every tensor (alpha
  // too) detached, contiguous, on the CPU, cast to `dtype`, sorted by key.
  io::NamedTensors StateDict(torch::ScalarType dtype = torch::kFloat32) const;
  // Key -> shape of that state dict without touching values (works on the meta device).
  std::map<std::string, std::vector<int64_t>> KeyShapes() const;
  // Writes the state dict atomically with `metadata` plus sshs_model_hash /
  // sshs_legacy_hash (computed over the saved tensors and the ss_* keys).
  absl::Status Save(const std::filesystem::path& path, torch::ScalarType dtype, io::Metadata metadata) const;

  // Loads values from a kohya-named state dict. Every module of this network
  // must be present and no other key may be: INVALID_ARGUMENT lists missing and
  // unexpected keys (first few of each, with counts) and shape mismatches. An
  // alpha that differs from the config's changes the module's scale.
  absl::Status LoadStateDict(const std::map<std::string, torch::Tensor>& tensors);
  absl::Status LoadWeights(const std::filesystem::path& path);

  // Max-norm regularisation (`scale_weight_norms`), called after each
  // optimizer step: every module whose delta (as the loaders apply it) has a
  // Frobenius norm above `max_norm` is shrunk to max_norm, for every algorithm,
  // the way its network module does it (Adapter::ScaleDelta: kohya's
  // sqrt split for networks.lora, LyCORIS' scalar / factor scaling for
  // lycoris.kohya). INVALID_ARGUMENT for max_norm <= 0.
  absl::StatusOr<MaxNormStats> ApplyMaxNorm(double max_norm);

  // lora_name -> weight with the adapter merged (multiplier m), for previews / tests.
  torch::Tensor MergedWeight(const std::string& lora_name, double multiplier = 1.0) const;

 private:
  LoraNetwork() = default;

  NetworkConfig config_;
  std::vector<AdaptedModule> modules_;
  std::map<std::string, size_t> index_;
  std::shared_ptr<DropoutRng> rng_;
  std::shared_ptr<ComputeCopies> copies_;
  bool applied_ = false;
};

// save_precision: "fp16" | "bf16" | "float" (also "fp32", "float32"); empty = float.
absl::StatusOr<torch::ScalarType> ParseSavePrecision(const std::string& name);

}  // namespace lorad::networks
