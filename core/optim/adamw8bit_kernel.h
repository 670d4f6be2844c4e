// The bitsandbytes AdamW8bit block-wise step (csrc/kernels.cu) in two implementations
// that give bit-identical results: a fused CPU kernel (one pass per 256-element
// block, a table lookup instead of a search over the quantisation map) and a
// torch-ops version for every other device. Internal to core/optim; the header
// exists so that a test can run both on the same data.
#pragma once

#include <cstdint>
#include <vector>

#include <torch/torch.h>

namespace lorad::optim {

inline constexpr int64_t kAdam8bitBlock = 256;

struct Adam8bitHyper {
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.01;
};

// One parameter's 8-bit state: uint8 codes (n) and per-block float absmax
// (ceil(n / 256)). Updated in place.
struct Adam8bitState {
  torch::Tensor state1, state2, absmax1, absmax2;
};

// bitsandbytes' signed (m) and unsigned (v) dynamic maps, their midpoints, and
// the CPU lookup tables that find the nearest code without a search.
class DynamicMaps {
 public:
  DynamicMaps();

  // Maps and midpoints on `device` (cached for the last device asked for).
  struct OnDevice {
    torch::Tensor qmap1, qmap2, mid1, mid2;
  };
  const OnDevice& On(const torch::Device& device);

  // torch.searchsorted(mid, x) (the nearest code, ties to the lower one; NaN
  // -> 255) for one float, through the table: exact for every float.
  int NearestCode(bool is_signed, float x) const;

  int64_t zero_code1() const { return zero_code1_; }
  const float* qmap(bool is_signed) const { return is_signed ? qmap1_f_.data() : qmap2_f_.data(); }
  // 256 midpoints, the last one +inf (never below a non-NaN value).
  const float* mid(bool is_signed) const { return is_signed ? mid1_f_.data() : mid2_f_.data(); }
  // Per bucket of float bits (sign, exponent, 8 mantissa bits in an
  // order-preserving key): searchsorted at the bucket's lowest value. A bucket
  // holds at most one midpoint, so the code is this or one more.
  const uint8_t* lut(bool is_signed) const { return is_signed ? lut1_.data() : lut2_.data(); }

  static constexpr int kKeyShift = 15;

 private:
  OnDevice cpu_, device_;
  std::vector<float> qmap1_f_, qmap2_f_, mid1_f_, mid2_f_;
  std::vector<uint8_t> lut1_, lut2_;
  int64_t zero_code1_ = 0;
};

// One step for one parameter whose tensor has >= min_8bit_size elements; the
// math runs in float32 whatever the parameter's dtype. `step` is the 1-based
// step count of this parameter.
// The fused CPU kernel: param, grad and state must be CPU tensors. It uses
// AVX2+FMA when the CPU has them; `portable_only` forces the plain C++ version
// (same results; for tests).
void Adam8bitStepFusedCpu(DynamicMaps& maps, const Adam8bitHyper& h, double lr, int64_t step, const torch::Tensor& param,
                          const torch::Tensor& grad, const Adam8bitState& state, bool portable_only = false);
// The same step with torch ops, on any device.
void Adam8bitStepTorchOps(DynamicMaps& maps, const Adam8bitHyper& h, double lr, int64_t step, const torch::Tensor& param,
                          const torch::Tensor& grad, const Adam8bitState& state);

}  // namespace lorad::optim
