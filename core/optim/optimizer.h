// Optimizers over parameter groups that reproduce their reference Python
// implementations step for step (each .cc names its reference file): torch AdamW, bitsandbytes
// AdamW8bit and SGD8bit, lion_pytorch Lion, transformers Adafactor, prodigyopt Prodigy,
// came_pytorch CAME, dadaptation's DAdapt* (Adam, AdamPreprint, Lion, SGD, AdaGrad, Adan),
// torch SGD (kohya's SGDNesterov) and LoRA_Easy_Training_Scripts' CAME and Compass.
// Created the kohya way: an `optimizer_type` name and a list
// of "key=value" `optimizer_args`.
//
// Usage per training step:
//   RETURN_IF_ERROR(scheduler.Apply(step, *optimizer));   // lr = base_lr x multiplier
//   loss.backward();
//   ASSIGN_OR_RETURN(double norm, ClipGradNorm(optimizer->AllParams(), max_grad_norm));
//   RETURN_IF_ERROR(optimizer->Step());
//   optimizer->ZeroGrad();
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/io/safetensors.h"

namespace lorad::optim {

// One parameter group ("unet", "text_encoder", ...) with its own base lr.
// Parameters are leaf tensors; their .grad() holds the gradient before Step().
struct ParamGroup {
  std::string name;
  std::vector<torch::Tensor> params;
  double lr = 0.0;
};

// Everything needed to resume an optimizer bit for bit: state tensors (keys
// "<group index>/<param index>/<state name>", e.g. "0/3/exp_avg") plus scalars
// (step counters, current lrs, Prodigy's d, ...) as strings (JSON numbers).
// Store `tensors` in a safetensors file and `values` in its __metadata__.
struct OptimizerState {
  io::NamedTensors tensors;
  std::map<std::string, std::string> values;
};

// Per-parameter state: the step count and named state tensors.
struct ParamState {
  int64_t step = 0;
  std::map<std::string, torch::Tensor> tensors;
  // Graph-safe mode only (Optimizer::EnableGraphSafeStep): the step counter as
  // a 0-dim tensor on the parameter's device (float32, float64 for float64
  // parameters, as torch's capturable `state_steps`), which Step() increments
  // and reads on the device. `step` is its host mirror: equal after every
  // eager Step(), and after every replay once RecordReplayedStep() ran. Not
  // saved (SaveState writes `step`); created once, then only written in place,
  // so a captured graph keeps pointing at it.
  torch::Tensor step_tensor;
};

class Optimizer {
 public:
  virtual ~Optimizer() = default;
  Optimizer(const Optimizer&) = delete;
  Optimizer& operator=(const Optimizer&) = delete;

  // One update of every parameter that has a gradient (parameters whose grad is
  // undefined are skipped, as torch does). Errors: non-float parameters,
  // gradient shape mismatch, or LibTorch failures.
  virtual absl::Status Step() = 0;
  // Drops every gradient (set_to_none, the torch 2.x default).
  void ZeroGrad();

  int num_groups() const { return static_cast<int>(groups_.size()); }
  const ParamGroup& group(int index) const { return groups_.at(index); }
  // All parameters of all groups, in order (for ClipGradNorm).
  std::vector<torch::Tensor> AllParams() const;

  // The group's current lr (what a scheduler last set) and the base lr it was
  // created with. SetLr rejects negative or non-finite values.
  double lr(int group) const { return lrs_.at(group); }
  double base_lr(int group) const { return groups_.at(group).lr; }
  absl::Status SetLr(int group, double lr);
  // The optimizer's "default lr" (torch `optimizer.defaults['lr']`): the lr of
  // the first group at creation. The polynomial schedule divides by it.
  double initial_lr() const { return initial_lr_; }

  // The lr to log for a group: lr for most optimizers, d*lr for Prodigy, the
  // internal relative-step lr of the group's first parameter for Adafactor
  // with relative_step (what kohya's "adafactor" scheduler reports).
  virtual double EffectiveLr(int group) const { return lr(group); }
  // True when the optimizer computes its own lr (Adafactor relative_step): the
  // trainer must use the "adafactor" schedule and ignore the groups' lrs.
  virtual bool UsesInternalLr() const { return false; }

  // kohya's ss_optimizer value: Python class path plus "(args)" when args were
  // given, e.g. "torch.optim.adamw.AdamW(weight_decay=0.1,betas=(0.9, 0.99))".
  std::string Describe() const;
  // The canonical short name ("AdamW", "AdamW8bit", "Lion", "Adafactor", "Prodigy", "CAME",
  // "LoraEasyCAME", "Compass", "DAdaptAdam", ..., "SGD", "SGDNesterov", "SGDNesterov8bit", "SGD8bit").
  virtual std::string_view name() const = 0;
  // Python class path, e.g. "prodigyopt.prodigy.Prodigy".
  virtual std::string_view class_path() const = 0;

  // Number of optimizer steps taken (Step() calls that updated anything).
  int64_t step_count() const { return step_count_; }
  // One parameter's state (step counters, state tensors), read-only: for
  // tests and reports.
  const ParamState& param_state(int group, int param) const { return states_.at(group).at(param); }
  // Bytes held by optimizer state tensors (for memory reports and the benchmark).
  int64_t StateBytes() const;

  // Multi-tensor kernels on CUDA (on by default): AdamW steps a group's CUDA
  // float32 parameters in one at::_fused_adamw_ call and Lion in at::_foreach_*
  // ops, on LibTorch 2.x. The state they keep is the per-parameter path's, so
  // SaveState/LoadState work across both. Off: one parameter at a time (the
  // eager baseline the benchmark compares against). CPU parameters always take
  // the per-parameter path.
  void set_fused_kernels(bool on) { fused_kernels_ = on; }
  bool fused_kernels() const { return fused_kernels_; }

  // Snapshot (deep copies) of the full state, and restore into an optimizer
  // created with the same type, args and parameter shapes. LoadState validates
  // names, shapes and dtypes and reports the first mismatch. Either works in
  // both modes (normal and graph-safe) and a state saved in one resumes in the
  // other; in graph-safe mode LoadState writes the loaded lrs, step counters
  // and state tensors into the existing device tensors (in place, where the
  // shapes agree), so a graph captured before reads the loaded values.
  absl::StatusOr<OptimizerState> SaveState() const;
  absl::Status LoadState(const OptimizerState& state);

  // Graph-safe stepping, for CUDA graph capture: every group's lr lives in a
  // 0-dim tensor on `device` that Step() reads, and each parameter's step
  // counter in a device tensor (ParamState::step_tensor), so a captured
  // Step() replayed later uses the lr SetLr wrote since and counts its steps
  // on the device. The lr tensor is float64 (the host lr exactly, so the
  // graph-safe step computes what the normal one does; the fused CUDA AdamW
  // kernel gets a float32 copy made on the device). Supported by AdamW and
  // Lion (others: UNIMPLEMENTED naming the optimizer and the fix "cuda_graphs =
  // false or optimizer_type AdamW / Lion"); every parameter must be on
  // `device` (a CUDA device without index takes the parameters' index).
  // Call before the first Step() (later works too: the device counters start
  // from the host ones). Calling it again with the same device does nothing;
  // there is no way back to the normal mode. CPU devices work too (the same
  // math, used by the tests).
  //
  // Capture rules (as torch's): run eager Step()s before capturing (at least
  // one per parameter the captured step updates: the first update of a
  // parameter creates its state tensors, which must not happen in a capture),
  // and never reallocate gradients between capture and replay. Step() is
  // host code: called during a capture it records the kernels without running
  // them but still advances the host mirrors as if it had run. So either
  // count the capture as the first replay (replay once right after it without
  // RecordReplayedStep) or call DiscardCapturedStep() after the capture; then
  // RecordReplayedStep() after every (other) replay.
  absl::Status EnableGraphSafeStep(const torch::Device& device);
  bool graph_safe_step() const { return graph_safe_; }
  // After a replayed (captured) step: the host mirrors of the step counters
  // (ParamState::step of every parameter the captured step updated,
  // step_count()) advance by one, exactly as a Step() call would have advanced
  // them. "The captured step" is the most recent Step() call. No device
  // access. Does nothing outside graph-safe mode.
  void RecordReplayedStep();
  // After capturing Step() (kernels recorded, nothing ran): takes back what
  // that Step() call advanced on the host (each updated parameter's
  // ParamState::step and step_count(), by one), so the host mirrors again
  // equal the device counters. No device access. Does nothing outside
  // graph-safe mode.
  void DiscardCapturedStep();

 protected:
  Optimizer(std::vector<ParamGroup> groups, std::vector<std::string> describe_args);

  // True for optimizers with a graph-safe Step() (EnableGraphSafeStep).
  virtual bool SupportsGraphSafeStep() const { return false; }

  // Optimizer-specific scalars (Prodigy's d, ...) for Save/LoadState.
  virtual void SaveExtraValues(std::map<std::string, std::string>* values) const { (void)values; }
  virtual absl::Status LoadExtraValues(const std::map<std::string, std::string>& values) {
    (void)values;
    return absl::OkStatus();
  }

  ParamState& state(int group, int param) { return states_[group][param]; }
  const ParamState& state(int group, int param) const { return states_[group][param]; }

  std::vector<ParamGroup> groups_;
  std::vector<double> lrs_;
  std::vector<std::vector<ParamState>> states_;
  double initial_lr_ = 0.0;
  int64_t step_count_ = 0;
  std::vector<std::string> describe_args_;
  bool fused_kernels_ = true;
  // Graph-safe mode: per group, the lr as a 0-dim float64 tensor on the device
  // (written in place by SetLr/LoadState, read by Step()).
  bool graph_safe_ = false;
  std::vector<torch::Tensor> lr_tensors_;
  // (group, parameter) of every parameter the last graph-safe Step() updated,
  // for RecordReplayedStep / DiscardCapturedStep.
  std::vector<std::pair<int, int>> last_updated_;
};

// Builds an optimizer from kohya's `optimizer_type` (case-insensitive: AdamW,
// AdamW8bit, bitsandbytes.optim.AdamW8bit, Lion, lion_pytorch.Lion, Adafactor,
// transformers.optimization.Adafactor, Prodigy, prodigyopt.Prodigy, CAME,
// came_pytorch.CAME, DAdaptation (= DAdaptAdamPreprint), DAdaptAdam, DAdaptLion,
// DAdaptSGD, DAdaptAdaGrad, DAdaptAdan, SGDNesterov, SGDNesterov8bit, SGD,
// torch.optim.SGD, LoraEasyCustomOptimizer.came.CAME, LoraEasyCustomOptimizer.compass.Compass, ...) and
// `optimizer_args` ("weight_decay=0.1", "betas=0.9,0.999", "decouple=True",
// "beta1=None"). Each group's lr is its base lr. Errors name the offending
// type/arg and list the accepted ones.
absl::StatusOr<std::unique_ptr<Optimizer>> CreateOptimizer(std::string_view optimizer_type,
                                                           const std::vector<std::string>& optimizer_args,
                                                           std::vector<ParamGroup> groups);

// Every optimizer_type spelling CreateOptimizer accepts.
std::vector<std::string> AcceptedOptimizerTypes();

// torch.nn.utils.clip_grad_norm_: scales all gradients by
// max_norm / (total_norm + 1e-6) when that is < 1, where total_norm is the
// global L2 norm over every gradient. Returns total_norm (computed even when
// max_norm is 0, which disables clipping). Parameters without grad are ignored.
// ClipGradNormOnDevice plus one read-back of the norm.
absl::StatusOr<double> ClipGradNorm(const std::vector<torch::Tensor>& params, double max_norm);

// ClipGradNorm without the read-back: the 0-dim total norm on the gradients'
// device, float32 (float64 when the gradients are float64), or an undefined
// tensor when no parameter has a gradient. Graph-safe: the clip factor is
// clamp(max_norm / (norm + 1e-6), max=1) applied on the device, with no
// branch on the norm's value (max_norm 0 skips the scaling on the host side).
absl::StatusOr<torch::Tensor> ClipGradNormOnDevice(const std::vector<torch::Tensor>& params, double max_norm);

}  // namespace lorad::optim
