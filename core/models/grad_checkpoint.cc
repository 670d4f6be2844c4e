#include "core/models/grad_checkpoint.h"

#include <ATen/core/ivalue.h>
#include <torch/csrc/autograd/custom_function.h>

#include "core/common/torch_compat.h"

namespace lorad::models {
namespace {

thread_local bool rng_free_checkpoints = false;

// Per-call state that the recomputation needs, kept in the autograd context.
struct CallState : torch::CustomClassHolder {
  CheckpointFn fn;
  std::vector<bool> defined;        // which inputs were defined
  std::vector<bool> requires_grad;  // which defined inputs required grad
  compat::AutocastState autocast;
  std::vector<std::pair<torch::Device, torch::Tensor>> rng_states;
};

std::vector<torch::Device> RngDevices(const std::vector<torch::Tensor>& inputs) {
  std::vector<torch::Device> devices = {torch::kCPU};
  for (const auto& t : inputs) {
    if (t.defined() && t.device().type() != torch::kCPU &&
        std::find(devices.begin(), devices.end(), t.device()) == devices.end()) {
      devices.push_back(t.device());
    }
  }
  return devices;
}

torch::Tensor GetRngState(const torch::Device& device) {
  auto gen = at::globalContext().defaultGenerator(device);
  std::lock_guard<std::mutex> lock(gen.mutex());
  return gen.get_state();
}

void SetRngState(const torch::Device& device, const torch::Tensor& state) {
  auto gen = at::globalContext().defaultGenerator(device);
  std::lock_guard<std::mutex> lock(gen.mutex());
  gen.set_state(state);
}

class CheckpointFunction : public torch::autograd::Function<CheckpointFunction> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx,
                                                c10::intrusive_ptr<CallState> state, at::TensorList inputs) {
    std::vector<torch::Tensor> args(inputs.begin(), inputs.end());
    ctx->save_for_backward(args);
    ctx->saved_data["state"] = c10::IValue::make_capsule(state);
    for (size_t i = 0; i < args.size(); ++i) {
      if (!state->defined[i]) args[i] = torch::Tensor();
    }
    torch::Tensor out = state->fn(args);
    return {out};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    auto state = c10::static_intrusive_pointer_cast<CallState>(ctx->saved_data["state"].toCapsule());
    auto saved = ctx->get_saved_variables();
    std::vector<torch::Tensor> inputs(saved.size());
    for (size_t i = 0; i < saved.size(); ++i) {
      if (!state->defined[i]) continue;
      inputs[i] = saved[i].detach();
      if (state->requires_grad[i]) inputs[i].requires_grad_(true);
    }

    // Recompute under the original call's autocast and RNG state, then put the
    // current state back.
    std::vector<std::pair<torch::Device, torch::Tensor>> current_rng;
    for (const auto& [device, s] : state->rng_states) {
      current_rng.emplace_back(device, GetRngState(device));
      SetRngState(device, s);
    }
    const compat::AutocastState current_autocast = compat::CaptureAutocast();
    compat::RestoreAutocast(state->autocast);
    torch::Tensor out;
    {
      torch::AutoGradMode grad_on(true);
      out = state->fn(inputs);
    }
    compat::RestoreAutocast(current_autocast);
    for (const auto& [device, s] : current_rng) SetRngState(device, s);

    if (out.requires_grad()) {
      torch::autograd::backward({out}, {grad_outputs[0]});
    }
    torch::autograd::variable_list grads;
    grads.reserve(inputs.size() + 1);
    grads.emplace_back();  // the CallState argument
    for (size_t i = 0; i < inputs.size(); ++i) {
      grads.push_back(inputs[i].defined() && state->requires_grad[i] ? inputs[i].grad() : torch::Tensor());
    }
    return grads;
  }
};

}  // namespace

torch::Tensor CheckpointedCall(const CheckpointFn& fn, const std::vector<torch::Tensor>& inputs) {
  if (!torch::GradMode::is_enabled()) return fn(inputs);
  auto state = c10::make_intrusive<CallState>();
  state->fn = fn;
  state->autocast = compat::CaptureAutocast();
  if (!rng_free_checkpoints) {
    for (const auto& device : RngDevices(inputs)) state->rng_states.emplace_back(device, GetRngState(device));
  }

  // An always-requires-grad anchor makes the output part of the graph even when
  // no input requires grad: gradients for parameters inside fn (e.g. LoRA
  // weights on a frozen model) still flow through the recomputation.
  std::vector<torch::Tensor> args;
  args.reserve(inputs.size() + 1);
  args.push_back(torch::zeros({}, torch::TensorOptions().dtype(torch::kFloat32)).requires_grad_(true));
  state->defined.push_back(true);
  state->requires_grad.push_back(false);
  for (const auto& t : inputs) {
    // Undefined inputs travel as empty placeholders: TensorList cannot hold undefined tensors.
    args.push_back(t.defined() ? t : torch::empty({0}));
    state->defined.push_back(t.defined());
    state->requires_grad.push_back(t.defined() && t.requires_grad());
  }
  const CheckpointFn inner = fn;
  state->fn = [inner](const std::vector<torch::Tensor>& with_anchor) {
    return inner(std::vector<torch::Tensor>(with_anchor.begin() + 1, with_anchor.end()));
  };
  return CheckpointFunction::apply(state, at::TensorList(args))[0];
}

RngFreeCheckpointScope::RngFreeCheckpointScope() : previous_(rng_free_checkpoints) { rng_free_checkpoints = true; }
RngFreeCheckpointScope::~RngFreeCheckpointScope() { rng_free_checkpoints = previous_; }

}  // namespace lorad::models
