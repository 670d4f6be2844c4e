#include "core/text/text_conditioning.h"

#include <fstream>

#include <gtest/gtest.h>

#include "core/common/fixtures.h"
#include "core/io/safetensors.h"
#include "core/base/testing/scoped_temp_dir.h"

namespace lorad::text {
namespace {

std::unique_ptr<io::SafetensorsFile> Open(const std::string& name) {
  auto f = io::SafetensorsFile::Open(FixturePath(name));
  EXPECT_TRUE(f.ok()) << f.status();
  return std::move(f).value();
}

double RelErr(const torch::Tensor& got, const torch::Tensor& want) {
  auto g = got.to(torch::kFloat64), w = want.to(torch::kFloat64);
  return ((g - w).norm() / w.norm()).item<double>();
}

ClipTextEncoder Encoder(const io::SafetensorsFile& file, const std::string& prefix, ClipKeyLayout layout,
                        const std::string& meta_key) {
  const auto meta = nlohmann::json::parse(file.metadata().at("fixture_config")).at(meta_key);
  auto config = DetectClipTextConfig(file, prefix, layout, &meta);
  EXPECT_TRUE(config.ok()) << config.status();
  ClipTextEncoder enc(*config, torch::TensorOptions().dtype(torch::kFloat32));
  EXPECT_TRUE(LoadClipTextWeights(*enc, file, prefix, layout).ok());
  return enc;
}

ClipTokenizer RealTokenizer() {
  auto t = ClipTokenizer::Load(FixturePath("clip/bpe_simple_vocab_16e6.txt.gz"));
  EXPECT_TRUE(t.ok()) << t.status();
  return *t;
}

std::string Prefix(const io::SafetensorsFile& f, const std::string& key) {
  return nlohmann::json::parse(f.metadata().at("fixture_config")).at("prefixes").at(key);
}

absl::StatusOr<TextConditioner> Sdxl(int64_t max_token_length) {
  static auto ckpt = Open("tiny_sdxl.safetensors");
  return TextConditioner::Create(
      {TextFamily::kSdxl, max_token_length, 0},
      {Encoder(*ckpt, Prefix(*ckpt, "te1"), ClipKeyLayout::kHuggingFace, "text_encoder_1_config"),
       Encoder(*ckpt, Prefix(*ckpt, "te2"), ClipKeyLayout::kOpenClip, "text_encoder_2_config")},
      {RealTokenizer(), RealTokenizer()});
}

absl::StatusOr<TextConditioner> Sd15(int64_t max_token_length, int64_t clip_skip) {
  static auto ckpt = Open("tiny_sd15.safetensors");
  return TextConditioner::Create(
      {TextFamily::kSd15, max_token_length, clip_skip},
      {Encoder(*ckpt, "cond_stage_model.transformer.", ClipKeyLayout::kHuggingFace, "text_encoder_1_config")},
      {RealTokenizer()});
}

TEST(TextConditioner, SdxlContextAndPooledMatchReference) {
  auto ref = Open("tiny_sdxl_reference.safetensors");
  auto cond = Sdxl(75);
  ASSERT_TRUE(cond.ok()) << cond.status();
  torch::NoGradGuard ng;
  auto out = cond->EncodeTokens({ref->Get("clip_l.input_ids")->unsqueeze(1), ref->Get("clip_g.input_ids")->unsqueeze(1)});
  ASSERT_TRUE(out.ok()) << out.status();
  const double ctx = RelErr(out->context, *ref->Get("sdxl.context", torch::kFloat32));
  const double pooled = RelErr(out->pooled, *ref->Get("clip_g.text_embeds", torch::kFloat32));
  std::printf("  sdxl.context rel L2 %.3e, pooled (text_embeds) rel L2 %.3e\n", ctx, pooled);
  EXPECT_LE(ctx, 1e-4);
  EXPECT_LE(pooled, 1e-4);
  EXPECT_EQ(out->context.size(-1), cond->context_dim());
  EXPECT_EQ(out->pooled.size(-1), cond->pooled_dim());
}

TEST(TextConditioner, Sd15ClipSkipMatchesReference) {
  auto ref = Open("tiny_sd15_reference.safetensors");
  auto ids = ref->Get("clip_l.input_ids")->unsqueeze(1);
  torch::NoGradGuard ng;
  for (const auto& [skip, key] : {std::pair<int64_t, std::string>{0, "clip_l.last_hidden_state"},
                                  {1, "clip_l.last_hidden_state"}, {2, "clip_l.penultimate_final_ln"}}) {
    auto cond = Sd15(75, skip);
    ASSERT_TRUE(cond.ok()) << cond.status();
    auto out = cond->EncodeTokens({ids});
    ASSERT_TRUE(out.ok()) << out.status();
    const double err = RelErr(out->context, *ref->Get(key, torch::kFloat32));
    std::printf("  sd15 clip_skip %ld vs %s rel L2 %.3e\n", static_cast<long>(skip), key.c_str(), err);
    EXPECT_LE(err, 1e-4);
    EXPECT_FALSE(out->pooled.defined());
  }
  EXPECT_FALSE(Sd15(75, 99).ok());
}

// Long captions: the context is [B, 2 + 75n, D], assembled as kohya's get_hidden_states does from
// windows encoded one by one; the pooled vector is the first window's.
TEST(TextConditioner, LongCaptionsReassembleAsKohya) {
  std::ifstream in(FixturePath("tokenizer_reference.json"));
  const auto ref = nlohmann::json::parse(in);
  std::vector<std::string> captions;
  for (const auto& c : ref["cases"]) captions.push_back(c["text"]);
  torch::NoGradGuard ng;
  for (int64_t max_len : {150, 225}) {
    auto cond = Sdxl(max_len);
    ASSERT_TRUE(cond.ok()) << cond.status();
    auto tokens = cond->Tokenize(captions);
    ASSERT_TRUE(tokens.ok());
    auto out = cond->EncodeTokens(*tokens);
    ASSERT_TRUE(out.ok()) << out.status();
    const int64_t n = max_len / 75, b = static_cast<int64_t>(captions.size());
    ASSERT_EQ(out->context.sizes(), (std::vector<int64_t>{b, 2 + 75 * n, cond->context_dim()}));
    for (int64_t i = 0; i < b; ++i) {
      std::vector<torch::Tensor> per_encoder;
      for (size_t e = 0; e < 2; ++e) {
        std::vector<torch::Tensor> parts;
        torch::Tensor last;
        for (int64_t w = 0; w < n; ++w) {
          auto enc = cond->encoders()[e]->forward((*tokens)[e][i][w].unsqueeze(0));
          auto states = enc.hidden_states[enc.hidden_states.size() - 2][0];  // [77, D]
          if (w == 0) parts.push_back(states.narrow(0, 0, 1));
          parts.push_back(states.narrow(0, 1, 75));
          last = states.narrow(0, 76, 1);
          if (e == 1 && w == 0) {
            EXPECT_LE(RelErr(out->pooled[i], enc.text_embeds[0]), 1e-6) << "caption " << i;
          }
        }
        parts.push_back(last);
        per_encoder.push_back(torch::cat(parts, 0));
      }
      EXPECT_LE(RelErr(out->context[i], torch::cat(per_encoder, -1)), 1e-6) << "caption " << i << " max " << max_len;
    }
  }
  // A short caption: the first 76 positions and the pooled vector equal the 75-token encoding.
  auto short_cond = Sdxl(75);
  auto long_cond = Sdxl(225);
  auto a = short_cond->Encode({"a photo of a cat"});
  auto c = long_cond->Encode({"a photo of a cat"});
  ASSERT_TRUE(a.ok() && c.ok());
  EXPECT_LE(RelErr(c->context.narrow(1, 0, 76), a->context.narrow(1, 0, 76)), 1e-6);
  EXPECT_LE(RelErr(c->pooled, a->pooled), 1e-6);
}

TEST(TextConditioner, WorksWithAndWithoutGrad) {
  auto cond = Sd15(150, 2);
  ASSERT_TRUE(cond.ok());
  {
    auto out = cond->Encode({"a cat", "a dog on a sofa"});
    ASSERT_TRUE(out.ok());
    ASSERT_TRUE(out->context.requires_grad());
    out->context.square().mean().backward();
    auto& w = cond->encoders()[0]->text_model->encoder->layers->ptr(0)->as<ClipEncoderLayerImpl>()->self_attn->q_proj->weight();
    ASSERT_TRUE(w.grad().defined());
    EXPECT_GT(w.grad().abs().sum().item<double>(), 0.0);
  }
  torch::NoGradGuard ng;
  auto out = cond->Encode({"a cat"});
  ASSERT_TRUE(out.ok());
  EXPECT_FALSE(out->context.requires_grad());
}

TEST(TextConditioner, RejectsMismatchedSetups) {
  auto ckpt = Open("tiny_sd15.safetensors");
  auto enc = Encoder(*ckpt, "cond_stage_model.transformer.", ClipKeyLayout::kHuggingFace, "text_encoder_1_config");
  const lorad::testing::ScopedTempDir dir("lorad_cond_vocab");
  ASSERT_TRUE(WriteDemoBpeVocabulary(dir.path(), {"a cat"}, 600).ok());
  auto small = ClipTokenizer::Load(dir.path());
  ASSERT_TRUE(small.ok());
  auto r = TextConditioner::Create({TextFamily::kSd15, 75, 0}, {enc}, {*small});
  ASSERT_FALSE(r.ok());
  EXPECT_NE(std::string(r.status().message()).find("does not fit"), std::string::npos) << r.status();
  EXPECT_FALSE(TextConditioner::Create({TextFamily::kSd15, 100, 0}, {enc}, {RealTokenizer()}).ok());
  EXPECT_FALSE(TextConditioner::Create({TextFamily::kSdxl, 75, 0}, {enc}, {RealTokenizer()}).ok());
  // SDXL whose second encoder has no projection.
  EXPECT_FALSE(TextConditioner::Create({TextFamily::kSdxl, 75, 0}, {enc, enc}, {RealTokenizer(), RealTokenizer()}).ok());
}

// The demo path: a tiny random model whose token_embedding has the demo
// vocabulary's size, with the vocabulary lorad-mkmodel writes next to it.
TEST(TextConditioner, TinyModelWithDemoVocabulary) {
  const lorad::testing::ScopedTempDir dir("lorad_demo_cond");
  const std::vector<std::string> captions = {"a watercolor fox", "a red bird on a branch"};
  ASSERT_TRUE(WriteDemoBpeVocabulary(dir.path(), captions).ok());
  auto tok = ClipTokenizer::Load(dir.path());
  ASSERT_TRUE(tok.ok()) << tok.status();
  ClipTextConfig l;
  l.vocab_size = kDemoVocabularySize;
  l.hidden_size = 16;
  l.num_layers = 2;
  l.num_heads = 2;
  l.intermediate_size = 32;
  ClipTextConfig g = l;
  g.hidden_size = 24;
  g.activation = "gelu";
  g.projection_dim = 8;
  torch::manual_seed(0);
  auto cond = TextConditioner::Create({TextFamily::kSdxl, 150, 0},
                                      {ClipTextEncoder(l, torch::TensorOptions()), ClipTextEncoder(g, torch::TensorOptions())},
                                      {*tok, *tok});
  ASSERT_TRUE(cond.ok()) << cond.status();
  torch::NoGradGuard ng;
  auto tokens = cond->Tokenize(captions);
  ASSERT_TRUE(tokens.ok());
  EXPECT_EQ((*tokens)[0][0][0][0].item<int64_t>(), kDemoVocabularySize - 2);  // BOS
  EXPECT_LT((*tokens)[0].max().item<int64_t>(), kDemoVocabularySize);
  auto out = cond->EncodeTokens(*tokens);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->context.sizes(), (std::vector<int64_t>{2, 152, 40}));
  EXPECT_EQ(out->pooled.sizes(), (std::vector<int64_t>{2, 8}));
  // Pooled at the first EOS = vocab_size - 1 of window 0.
  auto enc = cond->encoders()[1]->forward((*tokens)[1].select(1, 0));
  const auto ids = (*tokens)[1][0][0];
  const int64_t eos_at = ids.eq(kDemoVocabularySize - 1).nonzero()[0][0].item<int64_t>();
  EXPECT_TRUE(torch::allclose(enc.pooled[0], enc.last_hidden_state[0][eos_at]));
  EXPECT_TRUE(torch::allclose(out->pooled[0], enc.text_embeds[0]));
}

}  // namespace
}  // namespace lorad::text
