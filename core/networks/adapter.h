// Adapters that wrap one frozen nn::Layer at run time: LoRA / LoCon (kohya
// networks/lora.py LoRAModule, LyCORIS LoConModule incl. Tucker), LoHa, LoKr,
// each optionally with DoRA weight decomposition (LyCORIS `dora_wd`). The base
// layer's weights are never modified; the adapter owns its parameters.
//
// Scale convention: DeltaWeight() applies alpha/dim ONCE, as ComfyUI and A1111
// do when they load a file. (LyCORIS' own LoHa/LoKr get_diff_weight / merge_to
// apply it twice; its forward applies it once. We follow the loaders.)
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/io/safetensors.h"
#include "core/networks/compute_copies.h"
#include "core/networks/network_config.h"
#include "core/nn/layer.h"

namespace lorad::networks {

struct AdapterSpec {
  Algo algo = Algo::kLora;
  int64_t dim = 4;
  double alpha = 1.0;  // 0 -> dim (scale 1), as kohya and LyCORIS
  bool dora = false;
  bool wd_on_output = false;
  bool use_tucker = false;  // LoCon / LoHa / LoKr on kxk convs
  int64_t factor = -1;      // LoKr
  bool decompose_both = false;
  bool unbalanced_factorization = false;
  double dropout = 0.0;
  double rank_dropout = 0.0;
  double module_dropout = 0.0;
};

// The generator the adapters of one network draw their training-time dropout
// masks from (kohya's order: module dropout torch.rand(1), dropout mask,
// rank-dropout torch.rand([B, dim])). Unset = the device's default generator.
struct DropoutRng {
  std::optional<at::Generator> generator;
};

// Not thread-safe: one training loop drives it.
class Adapter : public nn::LayerAdapter {
 public:
  explicit Adapter(const AdapterSpec& spec, const nn::LayerImpl& layer);

  // Tensors as saved, keys relative to the module name ("lora_down.weight",
  // "lora_up.weight", "alpha", "dora_scale", "hada_w1_a", "lokr_w1", ...).
  virtual io::NamedTensors StateDict() const = 0;
  // Overwrites the parameters from `tensors` (relative keys, any float dtype).
  // INVALID_ARGUMENT names missing keys, unexpected keys and shape mismatches.
  absl::Status LoadStateDict(const std::map<std::string, torch::Tensor>& tensors);

  // Layer-shaped delta at multiplier 1 with the scale applied once (no DoRA).
  virtual torch::Tensor DeltaWeight() const = 0;
  // The weight with this adapter merged at `multiplier`, as ComfyUI / A1111
  // compute it (DoRA: W' = (W + dW) * dora_scale / ||W + dW||, blended by the multiplier).
  torch::Tensor MergedWeight(const nn::LayerImpl& layer, double multiplier) const;

  torch::Tensor Forward(const torch::Tensor& x, const nn::LayerImpl& layer) override;

  const AdapterSpec& spec() const { return spec_; }
  double scale() const { return scale_; }
  double alpha() const { return alpha_; }  // the saved alpha
  double multiplier() const { return multiplier_; }
  void set_multiplier(double multiplier) { multiplier_ = multiplier; }
  void set_dropout_rng(std::shared_ptr<DropoutRng> rng) { rng_ = std::move(rng); }
  void set_compute_copies(std::shared_ptr<const ComputeCopies> copies) { copies_ = std::move(copies); }
  // The weights a training forward reads exactly once, which may come from
  // ComputeCopies (LoRA / LoCon without DoRA; the others rebuild their delta).
  virtual std::vector<torch::Tensor> SingleUseWeights() const { return {}; }
  bool has_dora() const { return dora_scale_.defined(); }
  const torch::Tensor& dora_scale() const { return dora_scale_; }
  // Parameters LoRA+ treats as "up" (lora_up, hada_w*_a, lokr_w*... per kohya/LyCORIS naming).
  virtual std::vector<torch::Tensor> UpParameters() const = 0;

  // Max-norm regularisation (`scale_weight_norms`) shrinks the delta by `ratio`
  // (< 1) the way the network module does it. kohya networks.lora: lora_up and
  // lora_down times sqrt(ratio) (apply_max_norm_regularization). LyCORIS
  // (lycoris/modules/*.py apply_max_norm): LoCon and LoHa multiply their
  // non-trained `scalar`, which the saved file folds into the first factor;
  // LoKr multiplies each of its n factors by ratio^(1/n).
  virtual void ScaleDelta(double ratio, NetworkModule module) { scalar_ *= ratio; }
  // LyCORIS' scalar (1 until a max-norm pass scales it; reset to 1 by LoadStateDict).
  double scalar() const { return scalar_; }

 protected:
  // Non-DoRA training forward: base(x) + adapter path * multiplier.
  virtual torch::Tensor ForwardDelta(const torch::Tensor& x, const nn::LayerImpl& layer, bool training) = 0;
  // Layer-shaped delta used in the DoRA / rebuild forward; may apply
  // training-time dropouts (LoHa/LoKr rank dropout on output rows).
  virtual torch::Tensor TrainingDeltaWeight(bool training) { return DeltaWeight(); }
  // Applies DoRA to a full weight (W + dW), with the multiplier blend of LyCORIS.
  torch::Tensor ApplyWeightDecompose(const torch::Tensor& weight, double multiplier) const;
  // Relative key -> tensor reference for LoadStateDict (parameters and dora_scale).
  virtual std::vector<std::pair<std::string, torch::Tensor>> LoadableTensors() const = 0;
  void AppendCommonState(io::NamedTensors* out) const;  // alpha (+ dora_scale)
  // scale = alpha / dim (LoKr with two full factors: always 1).
  virtual void RecomputeScale();

  std::optional<at::Generator> GeneratorFor(const torch::Device& device) const;
  // `weight` as a forward on `input` computes with it: its compute copy while
  // the network's ComputeCopies scope is open, else weight.to(input's dtype).
  torch::Tensor ComputeWeight(const torch::Tensor& weight, const torch::Tensor& input) const {
    return copies_ ? copies_->For(weight, input) : weight.to(input.scalar_type());
  }
  bool ModuleDropped(bool training);

  AdapterSpec spec_;
  nn::LayerKind kind_;
  std::vector<int64_t> weight_shape_;
  double alpha_ = 1.0;
  double scale_ = 1.0;
  double multiplier_ = 1.0;
  double scalar_ = 1.0;
  torch::Tensor dora_scale_;
  std::shared_ptr<DropoutRng> rng_;
  std::shared_ptr<const ComputeCopies> copies_;
};

// Builds the adapter for `layer` with the algorithm's initialisation
// (LoRA: kohya's - down Kaiming-uniform a=sqrt(5) after the two constructor
// draws, up zeros - so a seeded generator reproduces kohya's values; the
// adapter starts as the identity). Initial draws come from `init_generator`
// (default CPU generator when unset). INVALID_ARGUMENT for a bad spec.
absl::StatusOr<std::shared_ptr<Adapter>> CreateAdapter(const nn::LayerImpl& layer, const AdapterSpec& spec,
                                                       std::optional<at::Generator> init_generator = std::nullopt);

// LyCORIS' factorization(dimension, factor) for LoKr: (m, n) with m <= n, m * n = dimension.
std::pair<int64_t, int64_t> Factorization(int64_t dimension, int64_t factor);

}  // namespace lorad::networks
