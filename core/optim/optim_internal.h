// Shared pieces of the optimizer implementations (not part of the public API).
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <torch/torch.h>
#include <torch/version.h>

#include "absl/status/statusor.h"
#include "core/optim/optimizer.h"
#include "core/optim/optimizer_args.h"

namespace lorad::optim {

// A parameter and its gradient in the dtype the math runs in: the parameter's
// own dtype for float32/float64; float32 working copies for float16/bfloat16
// (as transformers/CAME do), written back by Commit().
struct WorkTensor {
  torch::Tensor param;  // updated in place
  torch::Tensor grad;
  torch::Tensor original;

  void Commit() {
    if (!original.is_same(param)) original.detach().copy_(param);
  }
};

// nullopt when the parameter has no gradient (skipped, as torch does); an
// error for non-floating parameters or a gradient of another shape.
absl::StatusOr<std::optional<WorkTensor>> PrepareParam(const torch::Tensor& param, std::string_view optimizer);

// transformers' Adafactor._rms: ||x||_2 / sqrt(numel), as a 0-d tensor.
torch::Tensor Rms(const torch::Tensor& x);
// Adafactor/CAME _approx_sq_grad: (row / mean(row))^-1/2 outer col^-1/2.
torch::Tensor ApproxSqGrad(const torch::Tensor& row, const torch::Tensor& col);

using OptimizerFactory = absl::StatusOr<std::unique_ptr<Optimizer>> (*)(const OptimizerArgs& args,
                                                                        std::vector<ParamGroup> groups,
                                                                        std::string class_path);

absl::StatusOr<std::unique_ptr<Optimizer>> MakeAdamW(const OptimizerArgs&, std::vector<ParamGroup>, std::string);
absl::StatusOr<std::unique_ptr<Optimizer>> MakeAdamW8bit(const OptimizerArgs&, std::vector<ParamGroup>, std::string);
absl::StatusOr<std::unique_ptr<Optimizer>> MakeLion(const OptimizerArgs&, std::vector<ParamGroup>, std::string);
absl::StatusOr<std::unique_ptr<Optimizer>> MakeAdafactor(const OptimizerArgs&, std::vector<ParamGroup>, std::string);
absl::StatusOr<std::unique_ptr<Optimizer>> MakeProdigy(const OptimizerArgs&, std::vector<ParamGroup>, std::string);
absl::StatusOr<std::unique_ptr<Optimizer>> MakeCame(const OptimizerArgs&, std::vector<ParamGroup>, std::string);
absl::StatusOr<std::unique_ptr<Optimizer>> MakeLoraEasyCame(const OptimizerArgs&, std::vector<ParamGroup>, std::string);
absl::StatusOr<std::unique_ptr<Optimizer>> MakeCompass(const OptimizerArgs&, std::vector<ParamGroup>, std::string);
absl::StatusOr<std::unique_ptr<Optimizer>> MakeDAdaptAdam(const OptimizerArgs&, std::vector<ParamGroup>, std::string);
absl::StatusOr<std::unique_ptr<Optimizer>> MakeDAdaptAdamPreprint(const OptimizerArgs&, std::vector<ParamGroup>,
                                                                  std::string);
absl::StatusOr<std::unique_ptr<Optimizer>> MakeDAdaptLion(const OptimizerArgs&, std::vector<ParamGroup>, std::string);
absl::StatusOr<std::unique_ptr<Optimizer>> MakeDAdaptSgd(const OptimizerArgs&, std::vector<ParamGroup>, std::string);
absl::StatusOr<std::unique_ptr<Optimizer>> MakeDAdaptAdaGrad(const OptimizerArgs&, std::vector<ParamGroup>, std::string);
absl::StatusOr<std::unique_ptr<Optimizer>> MakeDAdaptAdan(const OptimizerArgs&, std::vector<ParamGroup>, std::string);
// torch.optim.SGD / bitsandbytes SGD8bit; kohya_nesterov: the SGDNesterov(8bit)
// spelling (nesterov=True set by kohya, momentum 0.9 unless given).
absl::StatusOr<std::unique_ptr<Optimizer>> MakeSgd(const OptimizerArgs&, std::vector<ParamGroup>, std::string,
                                                   bool kohya_nesterov);
absl::StatusOr<std::unique_ptr<Optimizer>> MakeSgd8bit(const OptimizerArgs&, std::vector<ParamGroup>, std::string,
                                                       bool kohya_nesterov);

// Writes float32 `source` into bfloat16 `target` with stochastic rounding: a
// random 16-bit integer is added to the low half of each float's bits, which
// are then cut (LoRA_Easy_Training_Scripts' copy_stochastic_, after Nerogar).
void CopyStochasticBf16(const torch::Tensor& target, const torch::Tensor& source);

// Wraps a LibTorch failure inside Step() into a status naming the optimizer.
absl::Status TorchError(std::string_view optimizer, const c10::Error& e);

// The parameters of one group that have gradients, for one multi-tensor
// (fused / foreach) kernel call: CUDA float32 parameters with float32 gradients
// of their shape, and their states.
struct FusedGroup {
  std::vector<torch::Tensor> params;
  std::vector<torch::Tensor> grads;
  std::vector<ParamState*> states;
  std::vector<int> indices;  // of the parameters in their group
};

// LibTorch 2.1 added the multi-tensor overloads that take a 0-dim tensor where
// a host scalar was (at::_fused_adamw_ with `const Tensor& lr`,
// at::_foreach_mul_(TensorList, const Tensor&)), which the graph-safe fused
// steps need.
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 1)
#define LORAD_TORCH_TENSOR_SCALAR_KERNELS 1
#else
#define LORAD_TORCH_TENSOR_SCALAR_KERNELS 0
#endif

// Optimizers whose update reads one parameter at a time (all but Prodigy, whose
// d estimate needs a pass over every parameter first). Step() walks the groups,
// prepares working copies, commits them and counts the step; subclasses write
// only the per-parameter update.
class PerParameterOptimizer : public Optimizer {
 public:
  absl::Status Step() final;

 protected:
  using Optimizer::Optimizer;
  // Updates one parameter with its group's current lr.
  virtual void StepParam(double lr, WorkTensor& w, ParamState& s) = 0;
  // Updates a whole group in multi-tensor kernels, the same math as StepParam
  // on each; false when the optimizer has no such kernels (the per-parameter
  // path runs instead). Called only on LibTorch 2.x with fused_kernels() on and
  // a non-empty group of CUDA float32 parameters.
  virtual bool StepFused(double lr, FusedGroup& group) {
    (void)lr;
    (void)group;
    return false;
  }
  // The graph-safe variants (EnableGraphSafeStep), for optimizers whose
  // SupportsGraphSafeStep() is true: `lr` is the group's 0-dim float64 lr
  // tensor on the device; the step counter to advance and read is
  // s.step_tensor (and s.step on the host). No read-back, no tensor made from
  // a host value that changes between steps, no branch on tensor contents.
  virtual void StepParamGraphSafe(const torch::Tensor& lr, WorkTensor& w, ParamState& s);
  // Called only on LibTorch >= 2.1 (LORAD_TORCH_TENSOR_SCALAR_KERNELS) with
  // fused_kernels() on and a non-empty group of CUDA float32 parameters.
  virtual bool StepFusedGraphSafe(const torch::Tensor& lr, FusedGroup& group) {
    (void)lr;
    (void)group;
    return false;
  }

 private:
  // Group g as a FusedGroup, or nullopt when any parameter with a gradient is
  // not a CUDA float32 tensor with a float32 gradient of its shape (the
  // per-parameter path then takes the group and reports any error).
  std::optional<FusedGroup> CollectFused(int g);
};

}  // namespace lorad::optim
