// The one place where LibTorch version differences live (Debian 1.13 vs pip 2.x).
#pragma once

#include <torch/torch.h>
#include <torch/version.h>

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

// LibTorch version string, e.g. "1.13.1".
inline std::string TorchVersion() { return TORCH_VERSION; }

}  // namespace lorad::compat
