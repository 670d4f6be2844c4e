// Fuzzes kohya's caption pipeline: the subset's caption options and the
// caption text both come from the input, so every combination of keep_tokens,
// separators, wildcards, dropout, warmup and shuffling is reached.
#include <fuzzer/FuzzedDataProvider.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core/data/caption.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  lorad::data::SubsetConfig subset;
  subset.shuffle_caption = in.ConsumeBool();
  subset.caption_separator = in.ConsumeRandomLengthString(4);
  subset.keep_tokens = in.ConsumeIntegralInRange<int>(-2, 300);
  subset.keep_tokens_separator = in.ConsumeRandomLengthString(4);
  subset.secondary_separator = in.ConsumeRandomLengthString(4);
  subset.enable_wildcard = in.ConsumeBool();
  subset.caption_prefix = in.ConsumeRandomLengthString(64);
  subset.caption_suffix = in.ConsumeRandomLengthString(64);
  subset.caption_dropout_rate = in.ConsumeFloatingPointInRange<double>(0.0, 1.0);
  subset.caption_dropout_every_n_epochs = in.ConsumeIntegralInRange<int>(0, 10);
  subset.caption_tag_dropout_rate = in.ConsumeFloatingPointInRange<double>(0.0, 1.0);
  subset.token_warmup_step = in.ConsumeFloatingPointInRange<double>(0.0, 1000.0);
  subset.token_warmup_min = in.ConsumeIntegralInRange<int>(-1, 300);
  std::vector<std::pair<std::string, std::string>> replacements;
  if (in.ConsumeBool()) replacements.emplace_back(in.ConsumeRandomLengthString(16), in.ConsumeRandomLengthString(16));
  lorad::data::CaptionContext ctx;
  ctx.epoch = in.ConsumeIntegralInRange<int>(0, 100);
  ctx.step = in.ConsumeIntegralInRange<int64_t>(0, 1000000);
  ctx.max_train_steps = in.ConsumeIntegralInRange<int64_t>(0, 1000000);
  ctx.replacements = &replacements;
  lorad::data::SeededCaptionRandom random(lorad::data::DeterministicRng(in.ConsumeIntegral<uint64_t>()));
  const std::string caption = in.ConsumeRemainingBytesAsString();
  (void)lorad::data::ProcessCaption(subset, caption, ctx, random);
  (void)lorad::data::CaptionTags(caption, subset.caption_separator.empty() ? "," : subset.caption_separator);
  return 0;
}
