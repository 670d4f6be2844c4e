// The small model the network tests train: conv3x3 -> gelu -> conv1x1 ->
// spatial mean -> linear, inside one "Block" container, with frozen weights
// from a fixed seed. With `unused_layer`, the block also holds a linear layer
// ("side") that its forward never calls.
#pragma once

#include <vector>

#include <torch/torch.h>

#include "core/networks/targets.h"
#include "core/nn/layer.h"

namespace lorad::networks::test_models {

struct BlockImpl : torch::nn::Module {
  explicit BlockImpl(bool unused_layer = false) {
    conv3 = register_module("conv3", nn::Layer(nn::Conv2dOptions(4, 8, 3, 1, 1)));
    conv1 = register_module("conv1", nn::Layer(nn::Conv2dOptions(8, 8, 1)));
    proj = register_module("proj", nn::Layer(nn::LinearOptions(8, 4)));
    if (unused_layer) side = register_module("side", nn::Layer(nn::LinearOptions(8, 4)));
  }
  torch::Tensor forward(const torch::Tensor& x) {
    auto h = conv1->forward(torch::gelu(conv3->forward(x)));
    return proj->forward(h.mean({2, 3}));
  }
  nn::Layer conv3{nullptr}, conv1{nullptr}, proj{nullptr}, side{nullptr};
};
TORCH_MODULE(Block);

struct TinyModel : torch::nn::Module {
  explicit TinyModel(bool unused_layer = false) {
    torch::manual_seed(0);
    block = register_module("block", Block(unused_layer));
    for (auto& p : parameters()) p.set_requires_grad(false);
  }
  Block block{nullptr};
};

// The block's layers as kohya names them ("lora_unet_block_conv1", ...); kxk: the 3x3 conv too.
inline std::vector<TargetLayer> Targets(TinyModel& model, bool kxk) {
  return FindLayersInContainers(
      model, "lora_unet", [](const torch::nn::Module& m) { return dynamic_cast<const BlockImpl*>(&m) != nullptr; },
      kxk);
}

}  // namespace lorad::networks::test_models
