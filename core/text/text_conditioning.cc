#include "core/text/text_conditioning.h"

#include "absl/strings/str_cat.h"
#include "core/base/status_macros.h"

namespace lorad::text {

torch::Tensor ReassembleWindows(const torch::Tensor& states, int64_t num_windows) {
  if (num_windows <= 1) return states;
  std::vector<torch::Tensor> parts = {states.narrow(1, 0, 1)};  // BOS of window 0
  for (int64_t i = 0; i < num_windows; ++i) {
    parts.push_back(states.narrow(1, i * kClipContextLength + 1, kClipChunkTokens));
  }
  parts.push_back(states.narrow(1, states.size(1) - 1, 1));  // last position of the last window
  return torch::cat(parts, 1);
}

TextConditioner::TextConditioner(TextConditionerOptions options, std::vector<ClipTextEncoder> encoders,
                                 std::vector<ClipTokenizer> tokenizers)
    : options_(options), encoders_(std::move(encoders)), tokenizers_(std::move(tokenizers)) {}

absl::StatusOr<TextConditioner> TextConditioner::Create(const TextConditionerOptions& options,
                                                        std::vector<ClipTextEncoder> encoders,
                                                        std::vector<ClipTokenizer> tokenizers) {
  RETURN_IF_ERROR(ValidateMaxTokenLength(options.max_token_length));
  const bool sdxl = options.family == TextFamily::kSdxl;
  const size_t want = sdxl ? 2 : 1;
  if (encoders.size() != want || tokenizers.size() != want) {
    return absl::InvalidArgumentError(absl::StrCat(sdxl ? "SDXL" : "SD1.5", " text conditioning needs ", want,
                                                   " text encoder(s) and tokenizer(s), got ", encoders.size(), " and ",
                                                   tokenizers.size()));
  }
  for (size_t i = 0; i < want; ++i) {
    if (!encoders[i]) return absl::InvalidArgumentError(absl::StrCat("text encoder ", i + 1, " is null"));
    const auto& config = encoders[i]->config();
    const auto& tok = tokenizers[i];
    if (tok.eos_id() != config.eos_token_id() || tok.vocab_size() > config.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tokenizer ", tok.source(), " (", tok.vocab_size(), " ids, <|endoftext|> = ", tok.eos_id(),
          ") does not fit text encoder ", i + 1, " (token_embedding of ", config.vocab_size,
          " rows, <|endoftext|> = ", config.eos_token_id(),
          "); use the model's own tokenizer (for a tiny lorad-mkmodel checkpoint: its .tokenizer folder)"));
    }
    // Pad as kohya: EOS for CLIP-L, 0 for bigG (SDXL's second tokenizer).
    tokenizers[i] = tok.WithPadId(sdxl && i == 1 ? 0 : tok.eos_id());
  }
  if (!sdxl && (options.clip_skip < 0 || options.clip_skip > encoders[0]->config().num_layers)) {
    return absl::InvalidArgumentError(absl::StrCat("clip_skip ", options.clip_skip, " is out of range 0..",
                                                   encoders[0]->config().num_layers));
  }
  if (sdxl && encoders[1]->config().projection_dim == 0) {
    return absl::InvalidArgumentError("SDXL text encoder 2 (bigG) has no text_projection for the pooled embedding");
  }
  return TextConditioner(options, std::move(encoders), std::move(tokenizers));
}

int64_t TextConditioner::context_dim() const {
  int64_t d = 0;
  for (const auto& e : encoders_) d += e->config().hidden_size;
  return d;
}

int64_t TextConditioner::pooled_dim() const {
  return options_.family == TextFamily::kSdxl ? encoders_[1]->config().projection_dim : 0;
}

absl::StatusOr<TokenBatch> TextConditioner::Tokenize(const std::vector<std::string>& captions) const {
  const int64_t b = static_cast<int64_t>(captions.size());
  const int64_t n = options_.max_token_length / kClipChunkTokens;
  TokenBatch batch;
  for (const auto& tok : tokenizers_) {
    auto ids = torch::empty({b, n, kClipContextLength}, torch::kLong);
    auto acc = ids.accessor<int64_t, 3>();
    for (int64_t i = 0; i < b; ++i) {
      ASSIGN_OR_RETURN(auto windows, tok.EncodeWindows(captions[i], options_.max_token_length));
      for (int64_t w = 0; w < n; ++w) {
        for (int64_t t = 0; t < kClipContextLength; ++t) acc[i][w][t] = windows[w][t];
      }
    }
    batch.push_back(ids);
  }
  return batch;
}

absl::StatusOr<TextConditioning> TextConditioner::EncodeTokens(const TokenBatch& tokens) const {
  if (tokens.size() != encoders_.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("expected token ids for ", encoders_.size(), " encoder(s), got ", tokens.size()));
  }
  const bool sdxl = options_.family == TextFamily::kSdxl;
  TextConditioning result;
  std::vector<torch::Tensor> contexts;
  for (size_t e = 0; e < encoders_.size(); ++e) {
    const auto& ids = tokens[e];
    if (!ids.defined() || ids.dim() != 3 || ids.size(2) != kClipContextLength || ids.size(0) != tokens[0].size(0)) {
      return absl::InvalidArgumentError(absl::StrCat("token ids for encoder ", e + 1, " must be [B, n, 77], got ",
                                                     ids.defined() ? c10::str(ids.sizes()) : "undefined"));
    }
    const int64_t b = ids.size(0), n = ids.size(1);
    try {
      ClipTextEncoder encoder = encoders_[e];  // holders share the module; forward is non-const
      const auto out = encoder->forward(ids.reshape({b * n, kClipContextLength}));
      const auto& hs = out.hidden_states;
      torch::Tensor states;
      if (sdxl) {
        states = hs[hs.size() - 2];  // penultimate, no final LN (CLIP-L: hidden_states[11] of 12 layers)
      } else if (options_.clip_skip <= 1) {
        states = out.last_hidden_state;
      } else {
        states = encoder->text_model->final_layer_norm->forward(hs[hs.size() - options_.clip_skip]);
      }
      contexts.push_back(ReassembleWindows(states.reshape({b, n * kClipContextLength, states.size(-1)}), n));
      if (sdxl && e == 1) {
        // kohya takes the pooled embedding of the first window only.
        result.pooled = out.text_embeds.reshape({b, n, out.text_embeds.size(-1)}).select(1, 0);
      }
    } catch (const c10::Error& err) {
      return absl::InternalError(absl::StrCat("text encoder ", e + 1, " failed: ", err.what_without_backtrace()));
    }
  }
  result.context = contexts.size() == 1 ? contexts[0] : torch::cat(contexts, -1);
  return result;
}

absl::StatusOr<TextConditioning> TextConditioner::Encode(const std::vector<std::string>& captions) const {
  ASSIGN_OR_RETURN(auto tokens, Tokenize(captions));
  return EncodeTokens(tokens);
}

}  // namespace lorad::text
