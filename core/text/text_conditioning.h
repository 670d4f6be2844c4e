// Captions -> U-Net conditioning (sd-scripts library/train_util.py:get_hidden_states,
// get_hidden_states_sdxl, pool_workaround): cross-attention context and,
// for SDXL, the pooled bigG embedding that starts the added-conditioning vector y.
//
//   SD1.5: one CLIP-L; context = last_hidden_state (clip_skip 0/1) or
//          final_layer_norm(hidden_states[-clip_skip]).
//   SDXL:  context = cat(CLIP-L hidden_states[-2], bigG hidden_states[-2]) (no
//          final LN), pooled = bigG text_embeds of the first window.
// Long captions (max_token_length 150/225) are encoded as 2-3 windows of 77
// and reassembled to 2 + 75n tokens exactly as kohya does.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "absl/status/statusor.h"
#include "core/text/clip_text_encoder.h"
#include "core/text/tokenizer.h"

namespace lorad::text {

enum class TextFamily { kSd15, kSdxl };

struct TextConditionerOptions {
  TextFamily family = TextFamily::kSd15;
  int64_t max_token_length = 75;  // 75, 150 or 225
  int64_t clip_skip = 0;          // SD1.5 only: 0 or 1 = last layer; n = hidden_states[-n] + final LN
};

struct TextConditioning {
  torch::Tensor context;  // [B, 2 + 75n, D] (D = 768 SD1.5, 768 + 1280 SDXL)
  torch::Tensor pooled;   // [B, P] SDXL; undefined for SD1.5
};

// Token ids of a batch, one tensor per encoder: int64 [B, n, 77].
using TokenBatch = std::vector<torch::Tensor>;

// Not thread-safe for concurrent Encode calls on the same modules with grad
// (LibTorch modules are not); otherwise stateless.
class TextConditioner {
 public:
  // SD1.5: one encoder + tokenizer; SDXL: {CLIP-L, bigG} with their tokenizers
  // (the bigG one must have a projection). The tokenizers' pad ids are set
  // here (EOS for CLIP-L, 0 for bigG). INVALID_ARGUMENT for a wrong count, a
  // clip_skip out of range, a max_token_length other than 75/150/225, or a
  // tokenizer whose vocabulary does not match the encoder's token_embedding.
  static absl::StatusOr<TextConditioner> Create(const TextConditionerOptions& options,
                                                std::vector<ClipTextEncoder> encoders,
                                                std::vector<ClipTokenizer> tokenizers);

  // Tokenizes captions into windows (CPU tensors; cacheable).
  absl::StatusOr<TokenBatch> Tokenize(const std::vector<std::string>& captions) const;
  // Runs the encoders on tokenized captions. Respects the caller's grad mode,
  // so text-encoder training backpropagates through it.
  absl::StatusOr<TextConditioning> EncodeTokens(const TokenBatch& tokens) const;
  // Tokenize + EncodeTokens.
  absl::StatusOr<TextConditioning> Encode(const std::vector<std::string>& captions) const;

  const TextConditionerOptions& options() const { return options_; }
  // The encoders (holders share the modules: train or wrap them through these).
  std::vector<ClipTextEncoder> encoders() const { return encoders_; }
  const std::vector<ClipTokenizer>& tokenizers() const { return tokenizers_; }
  // Context width (sum of encoder widths) and pooled width (0 for SD1.5).
  int64_t context_dim() const;
  int64_t pooled_dim() const;

 private:
  TextConditioner(TextConditionerOptions options, std::vector<ClipTextEncoder> encoders,
                  std::vector<ClipTokenizer> tokenizers);
  TextConditionerOptions options_;
  std::vector<ClipTextEncoder> encoders_;
  std::vector<ClipTokenizer> tokenizers_;
};

// kohya's reassembly of per-window states [B, n*77, D] (n windows) into
// [B, 2 + 75n, D]: BOS of window 0, positions 1..75 of every window, the last
// position of the last window. n == 1 returns the input unchanged.
torch::Tensor ReassembleWindows(const torch::Tensor& states, int64_t num_windows);

}  // namespace lorad::text
