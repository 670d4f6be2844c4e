#include "core/text/tokenizer.h"

#include <unistd.h>

#include <fstream>
#include <sstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "core/common/fixtures.h"
#include "core/base/testing/scoped_temp_dir.h"

namespace lorad::text {
namespace {

namespace fs = std::filesystem;

const ClipTokenizer& Clip() {
  static const ClipTokenizer tokenizer = [] {
    auto t = ClipTokenizer::Load(FixturePath("clip/bpe_simple_vocab_16e6.txt.gz"));
    EXPECT_TRUE(t.ok()) << t.status();
    return *t;
  }();
  return tokenizer;
}

nlohmann::json Reference() {
  std::ifstream in(FixturePath("tokenizer_reference.json"));
  return nlohmann::json::parse(in);
}

using TempDir = lorad::testing::ScopedTempDir;

TEST(ClipTokenizer, SpecialIdsMatchReference) {
  const auto ref = Reference();
  EXPECT_EQ(Clip().bos_id(), ref["bos"].get<int32_t>());
  EXPECT_EQ(Clip().eos_id(), ref["eos"].get<int32_t>());
  EXPECT_EQ(Clip().vocab_size(), Clip().eos_id() + 1);
}

TEST(ClipTokenizer, EveryReferenceCaptionExactly) {
  const auto ref = Reference();
  ASSERT_FALSE(ref["cases"].empty());
  for (const auto& c : ref["cases"]) {
    const auto want = c["ids"].get<std::vector<int32_t>>();
    EXPECT_EQ(Clip().Encode(c["text"].get<std::string>()), want) << "caption: " << c["text"];
  }
}

TEST(ClipTokenizer, NormalizesCaseWhitespaceAndNfc) {
  // "e" + combining acute composes to "é"; case and whitespace runs do not matter.
  EXPECT_EQ(Clip().Encode("CAFE\xcc\x81  \t\n Photo"), Clip().Encode("café photo"));
  EXPECT_EQ(Clip().Decode(Clip().Encode("A Photo of a Cat!!")), "a photo of a cat !! ");
}

// The windows kohya's get_input_ids (sd-scripts library/train_util.py) builds, made independently of
// SplitWindows from the full max_token_length + 2 sequence.
std::vector<std::vector<int32_t>> SpecWindows(const std::vector<int32_t>& ids, int64_t max_token_length, int32_t bos,
                                              int32_t eos, int32_t pad) {
  std::vector<int32_t> full = {bos};
  for (size_t i = 0; i < ids.size() && static_cast<int64_t>(i) < max_token_length; ++i) full.push_back(ids[i]);
  full.push_back(eos);
  while (static_cast<int64_t>(full.size()) < max_token_length + 2) full.push_back(pad);
  std::vector<std::vector<int32_t>> out;
  for (int64_t i = 1; i < max_token_length; i += 75) {
    std::vector<int32_t> w = {full.front()};
    w.insert(w.end(), full.begin() + i, full.begin() + i + 75);
    w.push_back(full.back());
    if (pad != eos) {
      if (w[75] != eos && w[75] != pad) w[76] = eos;
      if (w[1] == pad) w[1] = eos;
    }
    out.push_back(w);
  }
  return out;
}

TEST(ClipTokenizer, WindowsFollowTheSpecForEveryCaption) {
  const auto ref = Reference();
  for (int32_t pad : {Clip().eos_id(), 0}) {
    const auto tok = Clip().WithPadId(pad);
    for (const auto& c : ref["cases"]) {
      const auto ids = c["ids"].get<std::vector<int32_t>>();
      for (int64_t max_len : {75, 150, 225}) {
        auto windows = tok.EncodeWindows(c["text"].get<std::string>(), max_len);
        ASSERT_TRUE(windows.ok()) << windows.status();
        ASSERT_EQ(windows->size(), static_cast<size_t>(max_len / 75));
        for (const auto& w : *windows) ASSERT_EQ(w.size(), 77u);
        EXPECT_EQ(*windows, SpecWindows(ids, max_len, tok.bos_id(), tok.eos_id(), pad))
            << "max " << max_len << " pad " << pad << " caption " << c["text"];
      }
    }
  }
}

TEST(ClipTokenizer, WindowFixUpsOnHandMadeIds) {
  const auto g = Clip().WithPadId(0);
  const int32_t bos = g.bos_id(), eos = g.eos_id();
  std::vector<int32_t> ids80(80);
  for (int i = 0; i < 80; ++i) ids80[i] = 1000 + i;
  auto w = g.SplitWindows(ids80, 150);
  ASSERT_TRUE(w.ok());
  // Window 0: full, its last token (the sequence's last, PAD) becomes EOS.
  EXPECT_EQ((*w)[0][0], bos);
  EXPECT_EQ((*w)[0][75], 1074);
  EXPECT_EQ((*w)[0][76], eos);
  // Window 1: ids 75..79, EOS, PAD...; unchanged.
  EXPECT_EQ((*w)[1][1], 1075);
  EXPECT_EQ((*w)[1][5], 1079);
  EXPECT_EQ((*w)[1][6], eos);
  EXPECT_EQ((*w)[1][76], 0);
  // A short caption's empty second window gets EOS after BOS (bigG only).
  auto empty_second = g.SplitWindows({5, 6, 7}, 150);
  ASSERT_TRUE(empty_second.ok());
  EXPECT_EQ((*empty_second)[1][1], eos);
  EXPECT_EQ((*empty_second)[1][2], 0);
  auto clip_l = Clip().SplitWindows({5, 6, 7}, 150);
  ASSERT_TRUE(clip_l.ok());
  std::vector<int32_t> padded_with_eos(77, eos);  // CLIP-L pads with EOS: no fix-ups
  padded_with_eos[0] = bos;
  EXPECT_EQ((*clip_l)[1], padded_with_eos);
  // Exactly 150 tokens: both windows full, the last one ends in EOS.
  std::vector<int32_t> ids150(150, 900);
  auto full = g.SplitWindows(ids150, 150);
  ASSERT_TRUE(full.ok());
  EXPECT_EQ((*full)[0][76], eos);
  EXPECT_EQ((*full)[1][76], eos);
  EXPECT_EQ((*full)[1][75], 900);
}

TEST(ClipTokenizer, RejectsOtherMaxTokenLengths) {
  auto r = Clip().EncodeWindows("a cat", 100);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(std::string(r.status().message()).find("75, 150 or 225"), std::string::npos);
}

TEST(DemoVocabulary, LearnsARealBpeWithSpecialsLast) {
  TempDir dir("lorad_demo_vocab");
  const std::vector<std::string> captions = {"a photo of a red fox in the snow", "a photo of a blue bird",
                                             "watercolor painting of a fox, soft light", "1girl, solo, smile"};
  ASSERT_TRUE(WriteDemoBpeVocabulary(dir.path(), captions, 600).ok());
  auto tok = ClipTokenizer::Load(dir.path());
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ(tok->vocab_size(), 600);
  EXPECT_EQ(tok->bos_id(), 598);
  EXPECT_EQ(tok->eos_id(), 599);
  // Frequent words became single tokens; round trip through Decode.
  EXPECT_EQ(tok->Encode("photo").size(), 1u);
  EXPECT_EQ(tok->Encode("fox").size(), 1u);
  EXPECT_EQ(tok->Decode(tok->Encode("A photo of a FOX")), "a photo of a fox ");
  // Unseen text still tokenizes (byte symbols), every id inside the vocabulary.
  for (int32_t id : tok->Encode("zebra ünïcode 東京")) {
    EXPECT_GE(id, 0);
    EXPECT_LT(id, 598);
  }
  // Deterministic.
  TempDir again("lorad_demo_vocab2");
  ASSERT_TRUE(WriteDemoBpeVocabulary(again.path(), captions, 600).ok());
  auto slurp = [](const fs::path& p) {
    std::ifstream in(p);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  };
  EXPECT_EQ(slurp(dir.path() / "merges.txt"), slurp(again.path() / "merges.txt"));
  EXPECT_EQ(slurp(dir.path() / "vocab.json"), slurp(again.path() / "vocab.json"));
  // Few captions: the vocabulary is filled up to the requested size.
  TempDir tiny("lorad_demo_vocab3");
  ASSERT_TRUE(WriteDemoBpeVocabulary(tiny.path(), {"ab"}, kDemoVocabularySize).ok());
  auto t2 = ClipTokenizer::Load(tiny.path() / "vocab.json");
  ASSERT_TRUE(t2.ok()) << t2.status();
  EXPECT_EQ(t2->vocab_size(), kDemoVocabularySize);
  EXPECT_EQ(t2->eos_id(), kDemoVocabularySize - 1);
  EXPECT_EQ(t2->Encode("ab").size(), 1u);
  EXPECT_FALSE(WriteDemoBpeVocabulary(tiny.path(), {"x"}, 100).ok());
}

TEST(FindTokenizer, ErrorListsEveryPlaceAndTheConfigKey) {
  TempDir dir("lorad_find_tok");
  TokenizerSearch search;
  search.explicit_path = dir.path() / "nope";
  search.model_path = dir.path() / "model.safetensors";
  search.hf_hub_cache = dir.path() / "hub";
  auto r = FindTokenizer(search, TokenizerRole::kClipL);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kNotFound);
  const std::string msg(r.status().message());
  for (const std::string& part :
       {(dir.path() / "nope").string(), CompanionTokenizerDir(search.model_path).string(),
        (dir.path() / "hub" / "models--openai--clip-vit-large-patch14").string(),
        (dir.path() / "hub" / "models--laion--CLIP-ViT-bigG-14-laion2B-39B-b160k").string(), std::string("tokenizer_path")}) {
    EXPECT_NE(msg.find(part), std::string::npos) << "missing '" << part << "' in: " << msg;
  }
}

TEST(FindTokenizer, FindsDiffusersCompanionAndCacheWithRolePadding) {
  TempDir dir("lorad_find_tok2");
  const std::vector<std::string> captions = {"a cat"};
  // Hugging Face cache snapshot.
  const fs::path snapshot = dir.path() / "hub" / "models--openai--clip-vit-large-patch14" / "snapshots" / "abc123";
  ASSERT_TRUE(WriteDemoBpeVocabulary(snapshot, captions, 600).ok());
  TokenizerSearch search;
  search.hf_hub_cache = dir.path() / "hub";
  auto l = FindTokenizer(search, TokenizerRole::kClipL);
  ASSERT_TRUE(l.ok()) << l.status();
  EXPECT_EQ(l->vocab_size(), 600);
  EXPECT_EQ(l->pad_id(), l->eos_id());
  auto g = FindTokenizer(search, TokenizerRole::kBigG);
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_EQ(g->pad_id(), 0);
  // A diffusers folder wins over the cache; tokenizer_2/ for bigG.
  ASSERT_TRUE(WriteDemoBpeVocabulary(dir.path() / "model" / "tokenizer", captions, 700).ok());
  ASSERT_TRUE(WriteDemoBpeVocabulary(dir.path() / "model" / "tokenizer_2", captions, 800).ok());
  search.model_path = dir.path() / "model";
  EXPECT_EQ(FindTokenizer(search, TokenizerRole::kClipL)->vocab_size(), 700);
  EXPECT_EQ(FindTokenizer(search, TokenizerRole::kBigG)->vocab_size(), 800);
  // A single-file checkpoint's companion folder.
  ASSERT_TRUE(WriteDemoBpeVocabulary(CompanionTokenizerDir(dir.path() / "tiny.safetensors"), captions, 900).ok());
  search.model_path = dir.path() / "tiny.safetensors";
  EXPECT_EQ(FindTokenizer(search, TokenizerRole::kBigG)->vocab_size(), 900);
  // An explicit file wins over everything.
  search.explicit_path = FixturePath("clip/bpe_simple_vocab_16e6.txt.gz");
  EXPECT_EQ(FindTokenizer(search, TokenizerRole::kClipL)->vocab_size(), 49408);
}

TEST(ClipTokenizer, BadFilesAreClearErrors) {
  TempDir dir("lorad_bad_tok");
  std::ofstream(dir.path() / "vocab.json") << "{not json";
  std::ofstream(dir.path() / "merges.txt") << "#version: 0.2\na b\n";
  auto r = ClipTokenizer::Load(dir.path());
  ASSERT_FALSE(r.ok());
  EXPECT_NE(std::string(r.status().message()).find("vocab.json"), std::string::npos);
  std::ofstream(dir.path() / "vocab.json", std::ios::trunc) << R"({"a": 0, "b": 1})";
  r = ClipTokenizer::Load(dir.path());
  ASSERT_FALSE(r.ok());
  EXPECT_NE(std::string(r.status().message()).find("<|endoftext|>"), std::string::npos);
  std::ofstream(dir.path() / "x.txt.gz") << "not gzip at all";
  EXPECT_FALSE(ClipTokenizer::Load(dir.path() / "x.txt.gz").ok());
  EXPECT_EQ(ClipTokenizer::Load(dir.path() / "missing").status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace lorad::text
