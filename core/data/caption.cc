#include "core/data/caption.h"

#include <cmath>
#include <string_view>

namespace lorad::data {
namespace {

bool IsPySpace(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

void ReplaceAll(std::string& s, const std::string& from, const std::string& to) {
  if (from.empty()) return;
  std::string out;
  size_t pos = 0;
  while (true) {
    const size_t hit = s.find(from, pos);
    if (hit == std::string::npos) break;
    out.append(s, pos, hit - pos);
    out += to;
    pos = hit + from.size();
  }
  out.append(s, pos, std::string::npos);
  s = std::move(out);
}

std::string Join(const std::vector<std::string>& parts, std::string_view sep) {
  std::string out;
  for (size_t i = 0; i < parts.size(); ++i) {
    if (i) out += sep;
    out += parts[i];
  }
  return out;
}

std::vector<std::string> StrippedNonEmpty(const std::string& part, const std::string& sep) {
  std::vector<std::string> out;
  for (const auto& t : PySplit(part, sep)) {
    std::string s = PyStrip(t);
    if (!s.empty()) out.push_back(std::move(s));
  }
  return out;
}

// Python's lst[:n] for any integer n.
void PyTruncate(std::vector<std::string>& v, long long n) {
  const long long size = static_cast<long long>(v.size());
  if (n < 0) n = std::max(0LL, size + n);
  if (n < size) v.resize(static_cast<size_t>(n));
}

// enable_wildcard: a random line of a multi-line caption, then every `{a|b}`
// replaced by one option; `{{` / `}}` are literal braces.
std::string ExpandWildcards(std::string caption, CaptionRandom& random) {
  if (caption.find('\n') != std::string::npos) {
    auto lines = PySplit(caption, "\n");
    caption = lines[random.Choice(lines.size())];
  }
  std::string open = "\x01", close = "\x02";
  while (caption.find(open) != std::string::npos || caption.find(close) != std::string::npos) {
    open += "\x01";
    close += "\x02";
  }
  ReplaceAll(caption, "{{", open);
  ReplaceAll(caption, "}}", close);
  // re.sub(r"\{([^}]+)\}", ...): a '{', at least one non-'}' char, then '}'.
  std::string out;
  size_t i = 0;
  while (i < caption.size()) {
    if (caption[i] == '{') {
      const size_t end = caption.find('}', i + 1);
      if (end != std::string::npos && end > i + 1) {
        auto options = PySplit(caption.substr(i + 1, end - i - 1), "|");
        out += options[random.Choice(options.size())];
        i = end + 1;
        continue;
      }
    }
    out += caption[i++];
  }
  ReplaceAll(out, open, "{");
  ReplaceAll(out, close, "}");
  return out;
}

}  // namespace

std::vector<std::string> PySplit(const std::string& s, const std::string& sep) {
  std::vector<std::string> out;
  if (sep.empty()) return {s};
  size_t pos = 0;
  while (true) {
    const size_t hit = s.find(sep, pos);
    if (hit == std::string::npos) break;
    out.push_back(s.substr(pos, hit - pos));
    pos = hit + sep.size();
  }
  out.push_back(s.substr(pos));
  return out;
}

std::string PyStrip(const std::string& s) {
  size_t b = 0, e = s.size();
  while (b < e && IsPySpace(s[b])) ++b;
  while (e > b && IsPySpace(s[e - 1])) --e;
  return s.substr(b, e - b);
}

std::vector<std::string> CaptionTags(const std::string& caption, const std::string& separator) {
  return StrippedNonEmpty(caption, separator);
}

std::string ProcessCaption(const SubsetConfig& subset, const std::string& input, const CaptionContext& ctx,
                           CaptionRandom& random) {
  std::string caption = input;
  // 1. prefix / suffix fuse with the first / last tag.
  if (!subset.caption_prefix.empty()) caption = subset.caption_prefix + " " + caption;
  if (!subset.caption_suffix.empty()) caption = caption + " " + subset.caption_suffix;

  // 2. caption dropout (random() drawn only when the rate is positive).
  bool drop = subset.caption_dropout_rate > 0 && random.Uniform() < subset.caption_dropout_rate;
  drop = drop || (subset.caption_dropout_every_n_epochs > 0 &&
                  ctx.epoch % subset.caption_dropout_every_n_epochs == 0);
  if (drop) return "";

  // 3. wildcards, else the first line only.
  if (subset.enable_wildcard) {
    caption = ExpandWildcards(std::move(caption), random);
  } else {
    caption = PySplit(caption, "\n")[0];
  }

  // 4. tokenise only when something will change the tags.
  if (subset.shuffle_caption || subset.token_warmup_step > 0 || subset.caption_tag_dropout_rate > 0) {
    const std::string& sep = subset.caption_separator;
    std::vector<std::string> fixed, flex, fixed_suffix;
    const std::string& kts = subset.keep_tokens_separator;
    if (!kts.empty() && caption.find(kts) != std::string::npos) {
      const size_t first = caption.find(kts);
      std::string fixed_part = caption.substr(0, first);
      std::string flex_part = caption.substr(first + kts.size());
      const size_t second = flex_part.find(kts);
      if (second != std::string::npos) {
        fixed_suffix = StrippedNonEmpty(flex_part.substr(second + kts.size()), sep);
        flex_part = flex_part.substr(0, second);
      }
      fixed = StrippedNonEmpty(fixed_part, sep);
      flex = StrippedNonEmpty(flex_part, sep);
    } else {
      for (const auto& t : PySplit(PyStrip(caption), sep)) flex.push_back(PyStrip(t));
      if (subset.keep_tokens > 0) {
        const size_t k = std::min(flex.size(), static_cast<size_t>(subset.keep_tokens));
        fixed.assign(flex.begin(), flex.begin() + k);
        flex.erase(flex.begin(), flex.begin() + k);
      }
    }
    // Token warmup; a fraction < 1 means a share of max_train_steps (kohya
    // overwrites the subset's value with it on first use; same result).
    double warmup = subset.token_warmup_step;
    if (warmup < 1) warmup = std::floor(warmup * static_cast<double>(ctx.max_train_steps));
    if (warmup != 0 && static_cast<double>(ctx.step) < warmup) {
      const double per_step = (static_cast<double>(flex.size()) - subset.token_warmup_min) / warmup;
      const long long n = static_cast<long long>(std::floor(static_cast<double>(ctx.step) * per_step)) +
                          subset.token_warmup_min;
      PyTruncate(flex, n);
    }
    if (subset.shuffle_caption) random.Shuffle(flex);
    if (subset.caption_tag_dropout_rate > 0) {
      std::vector<std::string> kept;
      for (auto& t : flex) {
        if (random.Uniform() >= subset.caption_tag_dropout_rate) kept.push_back(std::move(t));
      }
      flex = std::move(kept);
    }
    std::vector<std::string> all = fixed;
    all.insert(all.end(), flex.begin(), flex.end());
    all.insert(all.end(), fixed_suffix.begin(), fixed_suffix.end());
    caption = Join(all, ", ");
  }

  // 5. secondary separator (after the shuffle, so joined tags move together).
  if (!subset.secondary_separator.empty()) ReplaceAll(caption, subset.secondary_separator, subset.caption_separator);

  // 6. replacements in insertion order.
  if (ctx.replacements != nullptr) {
    for (const auto& [from, to] : *ctx.replacements) {
      if (from.empty()) {
        caption = to;
      } else {
        ReplaceAll(caption, from, to);
      }
    }
  }
  return caption;
}

}  // namespace lorad::data
