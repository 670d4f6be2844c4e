// kohya's caption pipeline (sd-scripts library/train_util.py:BaseDataset.process_caption): prefix and
// suffix, caption dropout, wildcards / first line, keep_tokens or
// keep_tokens_separator, token warmup, shuffle, tag dropout, secondary
// separator, replacements — in kohya's order. Randomness comes from an injected
// CaptionRandom, so tests can pin the shuffle to a known permutation.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core/data/dataset_config.h"
#include "core/data/rng.h"

namespace lorad::data {

// The random calls process_caption makes (python's random.random / choice / shuffle).
class CaptionRandom {
 public:
  virtual ~CaptionRandom() = default;
  virtual double Uniform() = 0;                               // in [0, 1)
  virtual size_t Choice(size_t n) = 0;                        // index in [0, n)
  virtual void Shuffle(std::vector<std::string>& tokens) = 0;  // permute in place
};

// The production source: deterministic from a seed (see Dataset::CaptionFor).
class SeededCaptionRandom : public CaptionRandom {
 public:
  explicit SeededCaptionRandom(DeterministicRng rng) : rng_(rng) {}
  double Uniform() override { return rng_.Uniform(); }
  size_t Choice(size_t n) override { return static_cast<size_t>(rng_.Below(n)); }
  void Shuffle(std::vector<std::string>& tokens) override { rng_.Shuffle(tokens); }

 private:
  DeterministicRng rng_;
};

// Dataset state process_caption reads.
struct CaptionContext {
  int epoch = 0;  // kohya's current_epoch (1-based during training)
  int64_t step = 0;
  int64_t max_train_steps = 0;
  const std::vector<std::pair<std::string, std::string>>* replacements = nullptr;
};

// process_caption(subset, caption) with kohya's semantics, exactly.
std::string ProcessCaption(const SubsetConfig& subset, const std::string& caption, const CaptionContext& ctx,
                           CaptionRandom& random);

// Python's str.split(sep) (keeps empty pieces) and str.strip().
std::vector<std::string> PySplit(const std::string& s, const std::string& sep);
std::string PyStrip(const std::string& s);

// The tags of a caption as kohya counts them for ss_tag_frequency: split on
// `separator`, stripped, empty ones dropped.
std::vector<std::string> CaptionTags(const std::string& caption, const std::string& separator = ",");

}  // namespace lorad::data
