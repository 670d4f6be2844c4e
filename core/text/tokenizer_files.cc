// Finding tokenizer files, and writing lorad's small demo BPE vocabulary.
#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <map>
#include <set>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/base/status_macros.h"
#include "core/text/clip_bpe.h"
#include "core/text/tokenizer.h"

namespace lorad::text {

namespace fs = std::filesystem;

namespace {

bool HasTokenizerFiles(const fs::path& dir) {
  std::error_code ec;
  return (fs::exists(dir / "vocab.json", ec) && fs::exists(dir / "merges.txt", ec)) ||
         fs::exists(dir / "bpe_simple_vocab_16e6.txt.gz", ec);
}

fs::path DefaultHubCache() {
  if (const char* v = std::getenv("HF_HUB_CACHE"); v != nullptr && *v != '\0') return v;
  if (const char* v = std::getenv("HF_HOME"); v != nullptr && *v != '\0') return fs::path(v) / "hub";
  if (const char* v = std::getenv("HOME"); v != nullptr && *v != '\0') return fs::path(v) / ".cache/huggingface/hub";
  return fs::path(".cache/huggingface/hub");
}

// Snapshot folders of a cached hub repo, newest first (by modification time).
std::vector<fs::path> Snapshots(const fs::path& repo_dir) {
  std::vector<std::pair<fs::file_time_type, fs::path>> found;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(repo_dir / "snapshots", ec)) {
    if (entry.is_directory(ec)) found.emplace_back(entry.last_write_time(ec), entry.path());
  }
  std::sort(found.begin(), found.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  std::vector<fs::path> out;
  for (auto& f : found) out.push_back(std::move(f.second));
  return out;
}

}  // namespace

fs::path CompanionTokenizerDir(const fs::path& checkpoint) {
  return checkpoint.parent_path() / (checkpoint.stem().string() + ".tokenizer");
}

absl::StatusOr<ClipTokenizer> FindTokenizer(const TokenizerSearch& search, TokenizerRole role) {
  const bool big_g = role == TokenizerRole::kBigG;
  const char* sub = big_g ? "tokenizer_2" : "tokenizer";
  std::vector<std::string> looked;
  auto finish = [&](absl::StatusOr<ClipTokenizer> t) -> absl::StatusOr<ClipTokenizer> {
    if (!t.ok()) return t;
    return t->WithPadId(big_g ? 0 : t->eos_id());
  };
  std::error_code ec;

  if (!search.explicit_path.empty()) {
    const fs::path& p = search.explicit_path;
    if (fs::is_directory(p, ec) && HasTokenizerFiles(p / sub)) return finish(ClipTokenizer::Load(p / sub));
    if (fs::is_directory(p, ec) && HasTokenizerFiles(p)) return finish(ClipTokenizer::Load(p));
    if (fs::is_regular_file(p, ec)) return finish(ClipTokenizer::Load(p));
    looked.push_back(absl::StrCat(p.string(), " (tokenizer_path)"));
  }
  if (!search.model_path.empty()) {
    const fs::path& m = search.model_path;
    if (fs::is_directory(m, ec)) {
      if (HasTokenizerFiles(m / sub)) return finish(ClipTokenizer::Load(m / sub));
      looked.push_back((m / sub).string());
      // SDXL's two tokenizers share one vocabulary: tokenizer/ serves bigG too.
      if (big_g && HasTokenizerFiles(m / "tokenizer")) return finish(ClipTokenizer::Load(m / "tokenizer"));
    } else {
      const fs::path companion = CompanionTokenizerDir(m);
      if (HasTokenizerFiles(companion)) return finish(ClipTokenizer::Load(companion));
      looked.push_back(companion.string());
    }
  }
  const fs::path hub = search.hf_hub_cache.empty() ? DefaultHubCache() : search.hf_hub_cache;
  std::vector<std::string> repos = {"models--openai--clip-vit-large-patch14",
                                    "models--laion--CLIP-ViT-bigG-14-laion2B-39B-b160k"};
  if (big_g) std::swap(repos[0], repos[1]);
  for (const auto& repo : repos) {
    for (const auto& snapshot : Snapshots(hub / repo)) {
      if (HasTokenizerFiles(snapshot)) return finish(ClipTokenizer::Load(snapshot));
    }
    looked.push_back((hub / repo / "snapshots" / "*").string());
  }
  return absl::NotFoundError(absl::StrCat(
      "no CLIP tokenizer found for ", big_g ? "the bigG text encoder" : "the CLIP-L text encoder",
      "; looked in: ", absl::StrJoin(looked, ", "),
      ". Provide one with the `tokenizer_path` config key (a folder with vocab.json + merges.txt, or "
      "bpe_simple_vocab_16e6.txt.gz), use a diffusers model folder with ", sub,
      "/, or put openai/clip-vit-large-patch14 in the Hugging Face cache"));
}

absl::Status WriteDemoBpeVocabulary(const fs::path& dir, const std::vector<std::string>& captions,
                                    int64_t vocab_size) {
  const auto& bytes = bpe::ByteSymbolsInVocabOrder();
  const int64_t base = 2 * static_cast<int64_t>(bytes.size());
  if (vocab_size < base + 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("demo vocabulary size ", vocab_size, " is below the minimum ", base + 2, " (bytes + specials)"));
  }
  // Word frequencies after CLIP's pre-tokenization.
  std::map<std::vector<std::string>, int64_t> words;
  for (const auto& caption : captions) {
    for (const auto& piece : bpe::PreTokenize(caption)) {
      if (piece == bpe::kStartOfText || piece == bpe::kEndOfText) continue;
      ++words[bpe::InitialSymbols(piece)];
    }
  }
  std::vector<std::pair<std::vector<std::string>, int64_t>> corpus(words.begin(), words.end());

  std::vector<std::string> vocab;
  std::set<std::string> known;
  for (const auto& s : bytes) vocab.push_back(s);
  for (const auto& s : bytes) vocab.push_back(s + bpe::kEndOfWord);
  known.insert(vocab.begin(), vocab.end());
  std::vector<std::pair<std::string, std::string>> merges;
  const int64_t learnable = vocab_size - 2;
  while (static_cast<int64_t>(vocab.size()) < learnable) {
    std::map<std::pair<std::string, std::string>, int64_t> pairs;  // ordered: ties -> smallest pair
    for (const auto& [word, count] : corpus) {
      for (size_t i = 0; i + 1 < word.size(); ++i) pairs[{word[i], word[i + 1]}] += count;
    }
    if (pairs.empty()) break;
    auto best = pairs.begin();
    for (auto it = pairs.begin(); it != pairs.end(); ++it) {
      if (it->second > best->second) best = it;
    }
    const auto [a, b] = best->first;
    merges.emplace_back(a, b);
    if (known.insert(a + b).second) vocab.push_back(a + b);
    for (auto& [word, count] : corpus) {
      std::vector<std::string> merged;
      for (size_t i = 0; i < word.size();) {
        if (i + 1 < word.size() && word[i] == a && word[i + 1] == b) {
          merged.push_back(a + b);
          i += 2;
        } else {
          merged.push_back(word[i++]);
        }
      }
      word = std::move(merged);
    }
  }
  // Unused fillers keep BOS/EOS at the last two ids of a fixed-size vocabulary.
  for (int64_t i = 0; static_cast<int64_t>(vocab.size()) < learnable; ++i) vocab.push_back(absl::StrCat("<|reserved_", i, "|>"));
  vocab.push_back(bpe::kStartOfText);
  vocab.push_back(bpe::kEndOfText);

  nlohmann::ordered_json vocab_json = nlohmann::ordered_json::object();
  for (size_t i = 0; i < vocab.size(); ++i) vocab_json[vocab[i]] = i;
  std::string merges_txt = "#version: 0.2 (lorad demo vocabulary)\n";
  for (const auto& [a, b] : merges) absl::StrAppend(&merges_txt, a, " ", b, "\n");

  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", dir.string(), ": ", ec.message()));
  for (const auto& [name, content] :
       {std::pair<std::string, std::string>{"vocab.json", vocab_json.dump()}, {"merges.txt", merges_txt}}) {
    const fs::path tmp = dir / (name + ".tmp");
    {
      std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
      out << content;
      if (!out.flush()) return absl::InternalError(absl::StrCat("cannot write ", tmp.string()));
    }
    fs::rename(tmp, dir / name, ec);
    if (ec) return absl::InternalError(absl::StrCat("cannot write ", (dir / name).string(), ": ", ec.message()));
  }
  return absl::OkStatus();
}

}  // namespace lorad::text
