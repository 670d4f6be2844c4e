// The CLIP BPE tokenizer (openai/CLIP clip/simple_tokenizer.py; kohya's chunking:
// sd-scripts library/train_util.py:get_input_ids): vocab.json + merges.txt (Hugging Face) or
// bpe_simple_vocab_16e6.txt.gz (OpenAI CLIP), exact CLIP pre-tokenization
// (NFC, whitespace collapsed, lowercased, CLIP's regex, byte-to-unicode, "</w>"),
// 77-token windows and kohya's long-caption chunking; plus finding the files
// and writing a small demo vocabulary.
//
// Ids: <|startoftext|> and <|endoftext|> are the last two ids of every
// vocabulary lorad writes or the real CLIP one (49406 / 49407 of 49,408); a
// model's token_embedding must have exactly vocab_size() rows, which
// TextConditioner checks. A tiny demo model therefore uses a small vocabulary
// (kDemoVocabularySize rows) instead of the 49,408-row one.
//
// Thread-safe: a ClipTokenizer is immutable after loading (copies share data).
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace lorad::text {

inline constexpr int64_t kClipContextLength = 77;      // BOS + 75 tokens + EOS
inline constexpr int64_t kClipChunkTokens = 75;        // tokens per window
// Vocabulary size of the demo vocabularies lorad-mkmodel writes next to tiny
// checkpoints (and the tiny token_embedding's row count): 512 byte tokens,
// learned merges, reserved fillers, then BOS and EOS as the last two ids.
inline constexpr int64_t kDemoVocabularySize = 1024;

class ClipTokenizer {
 public:
  // Hugging Face files: vocab.json (token -> id) and merges.txt ("#version" line optional).
  static absl::StatusOr<ClipTokenizer> FromVocabAndMerges(const std::filesystem::path& vocab_json,
                                                          const std::filesystem::path& merges_txt);
  // OpenAI's bpe_simple_vocab_16e6.txt.gz (gzip; the vocabulary is derived
  // from the merges exactly as CLIP's SimpleTokenizer does).
  static absl::StatusOr<ClipTokenizer> FromBpeGz(const std::filesystem::path& path);
  // A folder holding vocab.json + merges.txt or bpe_simple_vocab_16e6.txt.gz,
  // a vocab.json / merges.txt file (its sibling is used), or a .txt.gz file.
  static absl::StatusOr<ClipTokenizer> Load(const std::filesystem::path& path);

  // Token ids of `text` without BOS/EOS/padding/truncation.
  std::vector<int32_t> Encode(const std::string& text) const;
  // Token strings of the ids (for debugging and tests).
  std::string Decode(const std::vector<int32_t>& ids) const;

  int32_t bos_id() const;
  int32_t eos_id() const;
  int32_t pad_id() const { return pad_id_; }
  int64_t vocab_size() const;
  // Where it was loaded from.
  const std::string& source() const;

  // A copy padding with `pad_id`: EOS for SD1.5 / CLIP-L, 0 for bigG (kohya).
  ClipTokenizer WithPadId(int32_t pad_id) const;

  // [BOS] + ids[:max_length-2] + [EOS] + padding to max_length (HF
  // truncation=True, padding="max_length").
  std::vector<int32_t> PadAndTruncate(const std::vector<int32_t>& ids, int64_t max_length) const;

  // kohya's get_input_ids: max_token_length 75 -> one 77-token window; 150 or
  // 225 -> tokenized to max_token_length + 2, split into n = max/75 windows of
  // [BOS] + ids[i:i+75] + [last token]; with pad != EOS (bigG) a window whose
  // second-to-last token is neither EOS nor PAD ends in EOS, and an empty
  // window (second token PAD) gets EOS there. INVALID_ARGUMENT for other lengths.
  absl::StatusOr<std::vector<std::vector<int32_t>>> EncodeWindows(const std::string& text,
                                                                  int64_t max_token_length) const;
  absl::StatusOr<std::vector<std::vector<int32_t>>> SplitWindows(const std::vector<int32_t>& ids,
                                                                 int64_t max_token_length) const;

  struct Data;

 private:
  explicit ClipTokenizer(std::shared_ptr<const Data> data);
  std::shared_ptr<const Data> data_;
  int32_t pad_id_ = 0;
};

// INVALID_ARGUMENT unless max_token_length is 75, 150 or 225.
absl::Status ValidateMaxTokenLength(int64_t max_token_length);

// Which of a model's tokenizers: CLIP-L (tokenizer/) or bigG (tokenizer_2/).
enum class TokenizerRole { kClipL, kBigG };

struct TokenizerSearch {
  // The `tokenizer_path` config key: a file or a folder (for kBigG a folder
  // with a tokenizer_2/ subfolder is used through it). Searched first.
  std::filesystem::path explicit_path;
  // The model: a diffusers folder (tokenizer/, tokenizer_2/) or a single
  // file (its companion folder, see CompanionTokenizerDir).
  std::filesystem::path model_path;
  // The Hugging Face hub cache; empty = $HF_HUB_CACHE, else $HF_HOME/hub,
  // else ~/.cache/huggingface/hub.
  std::filesystem::path hf_hub_cache;
};

// Where lorad-mkmodel puts a checkpoint's demo vocabulary: <dir>/<stem>.tokenizer/.
std::filesystem::path CompanionTokenizerDir(const std::filesystem::path& checkpoint);

// Finds and loads the tokenizer for `role`, in this order: explicit path,
// diffusers tokenizer/ (or tokenizer_2/), the checkpoint's companion folder,
// the Hugging Face cache (models--openai--clip-vit-large-patch14,
// models--laion--CLIP-ViT-bigG-14-laion2B-39B-b160k, any snapshot; either
// serves both roles, they share one vocabulary). The pad id is set for the
// role (EOS for kClipL, 0 for kBigG). NOT_FOUND lists every place it looked
// and how to provide one (the `tokenizer_path` config key).
absl::StatusOr<ClipTokenizer> FindTokenizer(const TokenizerSearch& search, TokenizerRole role);

// Learns a small real CLIP-format BPE from `captions` (same pre-tokenization
// as Encode) and writes dir/vocab.json + dir/merges.txt with exactly
// `vocab_size` ids: 512 byte tokens, up to vocab_size - 514 learned merges
// (most frequent pair first, ties broken by the pair's text, so deterministic),
// "<|reserved_N|>" fillers if the captions run out of pairs, then
// <|startoftext|> = vocab_size - 2 and <|endoftext|> = vocab_size - 1.
absl::Status WriteDemoBpeVocabulary(const std::filesystem::path& dir, const std::vector<std::string>& captions,
                                    int64_t vocab_size = kDemoVocabularySize);

}  // namespace lorad::text
