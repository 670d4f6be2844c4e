#include "core/text/tokenizer.h"

#include <zlib.h>

#include <algorithm>
#include <fstream>
#include <limits>
#include <sstream>

#include <nlohmann/json.hpp>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "core/base/status_macros.h"
#include "core/text/clip_bpe.h"

namespace lorad::text {

namespace fs = std::filesystem;

struct ClipTokenizer::Data {
  absl::flat_hash_map<std::string, int32_t> encoder;
  std::vector<std::string> decoder;  // id -> token ("" for unused ids)
  absl::flat_hash_map<std::string, int32_t> ranks;  // "a b" -> merge rank
  int32_t bos = 0;
  int32_t eos = 0;
  std::string source;

  // BPE of one pre-tokenized piece (CLIP's SimpleTokenizer.bpe): repeatedly
  // merge every occurrence of the lowest-ranked adjacent pair.
  void Bpe(const std::string& piece, std::vector<int32_t>* ids) const {
    std::vector<std::string> word = bpe::InitialSymbols(piece);
    while (word.size() > 1) {
      int32_t best_rank = std::numeric_limits<int32_t>::max();
      size_t best = 0;
      for (size_t i = 0; i + 1 < word.size(); ++i) {
        auto it = ranks.find(absl::StrCat(word[i], " ", word[i + 1]));
        if (it != ranks.end() && it->second < best_rank) {
          best_rank = it->second;
          best = i;
        }
      }
      if (best_rank == std::numeric_limits<int32_t>::max()) break;
      const std::string first = word[best], second = word[best + 1];
      std::vector<std::string> merged;
      merged.reserve(word.size());
      for (size_t i = 0; i < word.size();) {
        if (i + 1 < word.size() && word[i] == first && word[i + 1] == second) {
          merged.push_back(first + second);
          i += 2;
        } else {
          merged.push_back(word[i]);
          ++i;
        }
      }
      word = std::move(merged);
    }
    for (const auto& symbol : word) {
      auto it = encoder.find(symbol);
      // Hugging Face maps a token missing from the vocabulary to unk = <|endoftext|>.
      ids->push_back(it != encoder.end() ? it->second : eos);
    }
  }
};

namespace {

absl::StatusOr<std::string> ReadFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open tokenizer file ", path.string()));
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

absl::StatusOr<std::string> ReadGzip(const fs::path& path) {
  gzFile f = gzopen(path.c_str(), "rb");
  if (f == nullptr) return absl::NotFoundError(absl::StrCat("cannot open tokenizer file ", path.string()));
  std::string out;
  char buf[1 << 16];
  int n;
  while ((n = gzread(f, buf, sizeof(buf))) > 0) out.append(buf, n);
  int err = 0;
  const char* msg = gzerror(f, &err);
  const std::string message = msg ? msg : "";
  gzclose(f);
  if (n < 0 || (err != Z_OK && err != Z_STREAM_END)) {
    return absl::InvalidArgumentError(absl::StrCat("tokenizer file ", path.string(), " is not valid gzip: ", message));
  }
  return out;
}

// Merge lines "a b": skips blank lines and the header line (always for
// OpenAI's .gz, whose header is '"bpe_simple_vocab_16e6.txt#version: 0.2';
// when it starts with "#" for merges.txt).
absl::Status ParseMerges(const std::string& text, const std::string& what, size_t max_merges, bool skip_first_line,
                         std::vector<std::pair<std::string, std::string>>* merges) {
  size_t line_no = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty() || (line_no == 1 && (skip_first_line || absl::StartsWith(line, "#")))) continue;
    if (merges->size() >= max_merges) break;
    std::vector<std::string> parts = absl::StrSplit(line, ' ');
    if (parts.size() != 2 || parts[0].empty() || parts[1].empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, " line ", line_no, " is not a merge \"a b\": '", std::string(line), "'"));
    }
    merges->emplace_back(parts[0], parts[1]);
  }
  if (merges->empty()) return absl::InvalidArgumentError(absl::StrCat(what, " holds no merges"));
  return absl::OkStatus();
}

absl::Status FinishSpecials(ClipTokenizer::Data* d) {
  auto bos = d->encoder.find(bpe::kStartOfText);
  auto eos = d->encoder.find(bpe::kEndOfText);
  if (bos == d->encoder.end() || eos == d->encoder.end()) {
    return absl::InvalidArgumentError(absl::StrCat("tokenizer ", d->source, " lacks ", bpe::kStartOfText, " or ",
                                                   bpe::kEndOfText, " in its vocabulary"));
  }
  d->bos = bos->second;
  d->eos = eos->second;
  return absl::OkStatus();
}

void AddRanks(const std::vector<std::pair<std::string, std::string>>& merges, ClipTokenizer::Data* d) {
  for (size_t i = 0; i < merges.size(); ++i) {
    d->ranks.emplace(absl::StrCat(merges[i].first, " ", merges[i].second), static_cast<int32_t>(i));
  }
}

}  // namespace

ClipTokenizer::ClipTokenizer(std::shared_ptr<const Data> data) : data_(std::move(data)), pad_id_(data_->eos) {}

absl::StatusOr<ClipTokenizer> ClipTokenizer::FromVocabAndMerges(const fs::path& vocab_json,
                                                                const fs::path& merges_txt) {
  auto d = std::make_shared<Data>();
  d->source = vocab_json.parent_path().string();
  ASSIGN_OR_RETURN(const std::string vocab_text, ReadFile(vocab_json));
  ASSIGN_OR_RETURN(const std::string merges_text, ReadFile(merges_txt));
  try {
    const auto vocab = nlohmann::json::parse(vocab_text);
    if (!vocab.is_object()) return absl::InvalidArgumentError(absl::StrCat(vocab_json.string(), " is not a JSON object"));
    for (const auto& [token, id] : vocab.items()) {
      const auto value = id.get<int64_t>();
      if (value < 0 || value > std::numeric_limits<int32_t>::max()) {
        return absl::InvalidArgumentError(absl::StrCat(vocab_json.string(), ": id ", value, " of '", token,
                                                       "' is out of range"));
      }
      d->encoder[token] = static_cast<int32_t>(value);
      if (static_cast<size_t>(value) >= d->decoder.size()) d->decoder.resize(value + 1);
      d->decoder[value] = token;
    }
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(vocab_json.string(), " is not a valid vocab.json: ", e.what()));
  }
  std::vector<std::pair<std::string, std::string>> merges;
  RETURN_IF_ERROR(ParseMerges(merges_text, merges_txt.string(), std::numeric_limits<size_t>::max(), false, &merges));
  AddRanks(merges, d.get());
  RETURN_IF_ERROR(FinishSpecials(d.get()));
  return ClipTokenizer(std::move(d));
}

absl::StatusOr<ClipTokenizer> ClipTokenizer::FromBpeGz(const fs::path& path) {
  ASSIGN_OR_RETURN(const std::string text, ReadGzip(path));
  // As OpenAI CLIP's SimpleTokenizer: the first 49152 - 256 - 2 merges after
  // the header; vocabulary = bytes, bytes + "</w>", merged pairs, specials.
  constexpr size_t kMerges = 49152 - 256 - 2;
  std::vector<std::pair<std::string, std::string>> merges;
  RETURN_IF_ERROR(ParseMerges(text, path.string(), kMerges, true, &merges));
  auto d = std::make_shared<Data>();
  d->source = path.string();
  auto add = [&](const std::string& token) {
    // A duplicate string keeps the later id, as dict(zip(vocab, range)) does.
    d->encoder[token] = static_cast<int32_t>(d->decoder.size());
    d->decoder.push_back(token);
  };
  for (const auto& s : bpe::ByteSymbolsInVocabOrder()) add(s);
  for (const auto& s : bpe::ByteSymbolsInVocabOrder()) add(s + bpe::kEndOfWord);
  for (const auto& [a, b] : merges) add(a + b);
  add(bpe::kStartOfText);
  add(bpe::kEndOfText);
  AddRanks(merges, d.get());
  RETURN_IF_ERROR(FinishSpecials(d.get()));
  return ClipTokenizer(std::move(d));
}

absl::StatusOr<ClipTokenizer> ClipTokenizer::Load(const fs::path& path) {
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    if (fs::exists(path / "vocab.json") && fs::exists(path / "merges.txt")) {
      return FromVocabAndMerges(path / "vocab.json", path / "merges.txt");
    }
    if (fs::exists(path / "bpe_simple_vocab_16e6.txt.gz")) return FromBpeGz(path / "bpe_simple_vocab_16e6.txt.gz");
    return absl::NotFoundError(absl::StrCat("tokenizer folder ", path.string(),
                                            " holds neither vocab.json + merges.txt nor bpe_simple_vocab_16e6.txt.gz"));
  }
  if (!fs::exists(path, ec)) return absl::NotFoundError(absl::StrCat("tokenizer path ", path.string(), " does not exist"));
  const std::string name = path.filename().string();
  if (absl::EndsWith(name, ".gz")) return FromBpeGz(path);
  if (name == "vocab.json") return FromVocabAndMerges(path, path.parent_path() / "merges.txt");
  if (name == "merges.txt") return FromVocabAndMerges(path.parent_path() / "vocab.json", path);
  return absl::InvalidArgumentError(absl::StrCat("tokenizer path ", path.string(),
                                                 " is not a folder, vocab.json, merges.txt or a .txt.gz BPE file"));
}

std::vector<int32_t> ClipTokenizer::Encode(const std::string& text) const {
  std::vector<int32_t> ids;
  for (const auto& piece : bpe::PreTokenize(text)) {
    if (piece == bpe::kStartOfText) {
      ids.push_back(data_->bos);
    } else if (piece == bpe::kEndOfText) {
      ids.push_back(data_->eos);
    } else {
      data_->Bpe(piece, &ids);
    }
  }
  return ids;
}

std::string ClipTokenizer::Decode(const std::vector<int32_t>& ids) const {
  std::string joined;
  for (int32_t id : ids) {
    if (id >= 0 && static_cast<size_t>(id) < data_->decoder.size()) joined += data_->decoder[id];
  }
  std::string text = absl::StrReplaceAll(joined, {{bpe::kEndOfWord, " "}});
  return bpe::SymbolsToBytes(text);
}

int32_t ClipTokenizer::bos_id() const { return data_->bos; }
int32_t ClipTokenizer::eos_id() const { return data_->eos; }
int64_t ClipTokenizer::vocab_size() const { return static_cast<int64_t>(data_->decoder.size()); }
const std::string& ClipTokenizer::source() const { return data_->source; }

ClipTokenizer ClipTokenizer::WithPadId(int32_t pad_id) const {
  ClipTokenizer copy(*this);
  copy.pad_id_ = pad_id;
  return copy;
}

std::vector<int32_t> ClipTokenizer::PadAndTruncate(const std::vector<int32_t>& ids, int64_t max_length) const {
  std::vector<int32_t> out;
  out.reserve(max_length);
  out.push_back(data_->bos);
  const int64_t n = std::min<int64_t>(static_cast<int64_t>(ids.size()), std::max<int64_t>(max_length - 2, 0));
  out.insert(out.end(), ids.begin(), ids.begin() + n);
  out.push_back(data_->eos);
  while (static_cast<int64_t>(out.size()) < max_length) out.push_back(pad_id_);
  return out;
}

absl::Status ValidateMaxTokenLength(int64_t max_token_length) {
  if (max_token_length == 75 || max_token_length == 150 || max_token_length == 225) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("max_token_length must be 75, 150 or 225 (1, 2 or 3 windows of 75 tokens), got ", max_token_length));
}

absl::StatusOr<std::vector<std::vector<int32_t>>> ClipTokenizer::SplitWindows(const std::vector<int32_t>& ids,
                                                                              int64_t max_token_length) const {
  RETURN_IF_ERROR(ValidateMaxTokenLength(max_token_length));
  const auto full = PadAndTruncate(ids, max_token_length + 2);
  if (max_token_length == kClipChunkTokens) return std::vector<std::vector<int32_t>>{full};
  std::vector<std::vector<int32_t>> windows;
  // kohya get_input_ids: i = 1, 76, 151, ...
  for (int64_t i = 1; i < max_token_length + 2 - kClipContextLength + 2; i += kClipChunkTokens) {
    std::vector<int32_t> w;
    w.reserve(kClipContextLength);
    w.push_back(full.front());
    w.insert(w.end(), full.begin() + i, full.begin() + i + kClipChunkTokens);
    w.push_back(full.back());
    if (pad_id_ != data_->eos) {  // SD2 / SDXL fix-ups (PAD != EOS)
      if (w[w.size() - 2] != data_->eos && w[w.size() - 2] != pad_id_) w.back() = data_->eos;
      if (w[1] == pad_id_) w[1] = data_->eos;
    }
    windows.push_back(std::move(w));
  }
  return windows;
}

absl::StatusOr<std::vector<std::vector<int32_t>>> ClipTokenizer::EncodeWindows(const std::string& text,
                                                                               int64_t max_token_length) const {
  return SplitWindows(Encode(text), max_token_length);
}

}  // namespace lorad::text
