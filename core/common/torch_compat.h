// The one place where LibTorch version differences live (Debian 1.13 vs pip 2.x).
#pragma once

#include <torch/torch.h>
#include <torch/version.h>
#include <ATen/autocast_mode.h>

namespace lorad::compat {

inline constexpr bool kTorch2 = TORCH_VERSION_MAJOR >= 2;

// Scaled dot-product attention: q,k,v [B, heads, L, head_dim]; optional additive
// or boolean mask broadcastable to [B, heads, Lq, Lk]. Uses the fused kernel on
// LibTorch 2.x and the explicit softmax(QK^T*scale)V on 1.13.
inline torch::Tensor ScaledDotProductAttention(const torch::Tensor& q, const torch::Tensor& k,
                                               const torch::Tensor& v,
                                               const torch::Tensor& mask = {},
                                               bool is_causal = false) {
#if TORCH_VERSION_MAJOR >= 2
  std::optional<at::Tensor> m;
  if (mask.defined()) m = mask;
  return at::scaled_dot_product_attention(q, k, v, m, 0.0, is_causal && !mask.defined());
#else
  const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(-1)));
  auto scores = torch::matmul(q, k.transpose(-2, -1)) * scale;
  if (is_causal && !mask.defined()) {
    auto causal = torch::ones({q.size(-2), k.size(-2)}, torch::TensorOptions().dtype(torch::kBool).device(q.device()))
                      .tril();
    scores = scores.masked_fill(causal.logical_not(), -std::numeric_limits<float>::infinity());
  } else if (mask.defined()) {
    if (mask.scalar_type() == torch::kBool) {
      scores = scores.masked_fill(mask.logical_not(), -std::numeric_limits<float>::infinity());
    } else {
      scores = scores + mask;
    }
  }
  return torch::matmul(torch::softmax(scores, -1), v);
#endif
}

// Autocast (automatic mixed precision) state, captured and restored around a
// recomputation (gradient checkpointing).
struct AutocastState {
  bool gpu_enabled = false;
  bool cpu_enabled = false;
  at::ScalarType gpu_dtype = at::kHalf;
  at::ScalarType cpu_dtype = at::kBFloat16;
};

inline AutocastState CaptureAutocast() {
  AutocastState s;
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
  s.gpu_enabled = at::autocast::is_autocast_enabled(at::kCUDA);
  s.cpu_enabled = at::autocast::is_autocast_enabled(at::kCPU);
  s.gpu_dtype = at::autocast::get_autocast_dtype(at::kCUDA);
  s.cpu_dtype = at::autocast::get_autocast_dtype(at::kCPU);
#else
  s.gpu_enabled = at::autocast::is_enabled();
  s.cpu_enabled = at::autocast::is_cpu_enabled();
  s.gpu_dtype = at::autocast::get_autocast_gpu_dtype();
  s.cpu_dtype = at::autocast::get_autocast_cpu_dtype();
#endif
  return s;
}

inline void RestoreAutocast(const AutocastState& s) {
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
  at::autocast::set_autocast_enabled(at::kCUDA, s.gpu_enabled);
  at::autocast::set_autocast_enabled(at::kCPU, s.cpu_enabled);
  at::autocast::set_autocast_dtype(at::kCUDA, s.gpu_dtype);
  at::autocast::set_autocast_dtype(at::kCPU, s.cpu_dtype);
#else
  at::autocast::set_enabled(s.gpu_enabled);
  at::autocast::set_cpu_enabled(s.cpu_enabled);
  at::autocast::set_autocast_gpu_dtype(s.gpu_dtype);
  at::autocast::set_autocast_cpu_dtype(s.cpu_dtype);
#endif
}

// LibTorch version string, e.g. "1.13.1".
inline std::string TorchVersion() { return TORCH_VERSION; }

}  // namespace lorad::compat
