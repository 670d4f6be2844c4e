// Linear and Conv2d layers that a network adapter (LoRA, DoRA, LoHa, ...) can wrap
// at run time without touching the frozen base weights.
//
// Every Linear/Conv2d of the U-Net, VAE and text encoders is a `Layer`, so
// core/networks finds targets by walking named_modules() and attaches a
// `LayerAdapter`. The adapter is owned by the network (not registered here), so
// the model's own parameter names stay exactly the checkpoint's names.
#pragma once

#include <memory>
#include <vector>

#include <torch/torch.h>

namespace lorad::nn {

enum class LayerKind { kLinear, kConv2d };

struct LayerOptions {
  LayerKind kind = LayerKind::kLinear;
  int64_t in = 0;
  int64_t out = 0;
  int64_t kernel = 1;  // conv only
  int64_t stride = 1;  // conv only
  int64_t padding = 0; // conv only
  bool bias = true;
  // Device/dtype of the parameters. The meta device builds the structure
  // (names and shapes) of a full-size model without allocating it.
  torch::TensorOptions tensor_options = torch::TensorOptions().dtype(torch::kFloat32);
};

LayerOptions LinearOptions(int64_t in, int64_t out, bool bias = true,
                           torch::TensorOptions tensor_options = {});
LayerOptions Conv2dOptions(int64_t in, int64_t out, int64_t kernel, int64_t stride = 1, int64_t padding = 0,
                           bool bias = true, torch::TensorOptions tensor_options = {});

class LayerImpl;

// A module that replaces a layer's forward pass. Owns its own parameters.
class LayerAdapter : public torch::nn::Module {
 public:
  // The adapted layer's output for input x; `layer.BaseForward(x)` is the frozen path.
  virtual torch::Tensor Forward(const torch::Tensor& x, const LayerImpl& layer) = 0;
};

class LayerImpl : public torch::nn::Module {
 public:
  explicit LayerImpl(const LayerOptions& options);

  torch::Tensor forward(const torch::Tensor& x);

  // y = W x + b with the layer's own (frozen) weights.
  torch::Tensor BaseForward(const torch::Tensor& x) const;
  // Same op with a substitute weight (and bias, if defined), e.g. a DoRA-merged weight.
  torch::Tensor ForwardWithWeight(const torch::Tensor& x, const torch::Tensor& weight,
                                  const torch::Tensor& bias) const;

  // Kaiming-uniform(a=sqrt(5)) weight and uniform bias, as torch.nn does.
  void ResetParameters();

  const LayerOptions& options() const { return options_; }
  LayerKind kind() const { return options_.kind; }
  torch::Tensor& weight() { return weight_; }
  const torch::Tensor& weight() const { return weight_; }
  const torch::Tensor& bias() const { return bias_; }

  void SetAdapter(std::shared_ptr<LayerAdapter> adapter) { adapter_ = std::move(adapter); }
  const std::shared_ptr<LayerAdapter>& adapter() const { return adapter_; }

 private:
  LayerOptions options_;
  torch::Tensor weight_;
  torch::Tensor bias_;
  std::shared_ptr<LayerAdapter> adapter_;
};
TORCH_MODULE(Layer);

// While alive, Layers (and other lorad modules) constructed on this thread leave
// their parameters uninitialised (torch::empty): for loaders that overwrite
// every parameter, so a multi-GB model is not randomly initialised first.
class NoInitGuard {
 public:
  NoInitGuard();
  ~NoInitGuard();
  NoInitGuard(const NoInitGuard&) = delete;
  NoInitGuard& operator=(const NoInitGuard&) = delete;
  static bool active();

 private:
  bool previous_;
};

// Every Layer under `root`, with its dotted path relative to root.
std::vector<std::pair<std::string, std::shared_ptr<LayerImpl>>> FindLayers(torch::nn::Module& root);

}  // namespace lorad::nn
