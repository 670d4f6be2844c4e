#include "core/text/unicode_text.h"

#include <algorithm>
#include <cstdint>
#include <utility>

#include "core/text/unicode_tables.h"

namespace lorad::text::unicode {
namespace {

constexpr uint32_t kReplacement = 0xFFFD;
// Hangul syllables compose/decompose algorithmically (Unicode 3.12).
constexpr uint32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr uint32_t kLCount = 19, kVCount = 21, kTCount = 28, kNCount = kVCount * kTCount, kSCount = kLCount * kNCount;

bool InRanges(const CodeRange* ranges, size_t n, uint32_t c) {
  const auto* end = ranges + n;
  const auto* it = std::upper_bound(ranges, end, c, [](uint32_t v, const CodeRange& r) { return v < r.first; });
  return it != ranges && c <= (it - 1)->last;
}

void Decompose(uint32_t c, std::vector<uint32_t>* out) {
  if (c >= kSBase && c < kSBase + kSCount) {
    const uint32_t s = c - kSBase;
    out->push_back(kLBase + s / kNCount);
    out->push_back(kVBase + (s % kNCount) / kTCount);
    if (s % kTCount != 0) out->push_back(kTBase + s % kTCount);
    return;
  }
  const auto* end = kDecompositions + kDecompositionsSize;
  const auto* it = std::lower_bound(kDecompositions, end, c,
                                    [](const DecompositionEntry& e, uint32_t v) { return e.code < v; });
  if (it != end && it->code == c) {
    out->insert(out->end(), kDecompositionPool + it->offset, kDecompositionPool + it->offset + it->length);
  } else {
    out->push_back(c);
  }
}

// The primary composite of (a, b), or 0.
uint32_t Compose(uint32_t a, uint32_t b) {
  if (a >= kLBase && a < kLBase + kLCount && b >= kVBase && b < kVBase + kVCount) {
    return kSBase + ((a - kLBase) * kVCount + (b - kVBase)) * kTCount;
  }
  if (a >= kSBase && a < kSBase + kSCount && (a - kSBase) % kTCount == 0 && b > kTBase && b < kTBase + kTCount) {
    return a + (b - kTBase);
  }
  const auto* end = kCompositions + kCompositionsSize;
  const auto* it = std::lower_bound(kCompositions, end, std::make_pair(a, b),
                                    [](const CompositionEntry& e, const std::pair<uint32_t, uint32_t>& v) {
                                      return std::make_pair(e.first, e.second) < v;
                                    });
  return it != end && it->first == a && it->second == b ? it->composite : 0;
}

}  // namespace

std::vector<uint32_t> DecodeUtf8(const std::string& s) {
  std::vector<uint32_t> out;
  out.reserve(s.size());
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  for (size_t i = 0; i < n;) {
    const unsigned char b = p[i];
    int len = b < 0x80 ? 1 : (b >> 5) == 0x6 ? 2 : (b >> 4) == 0xE ? 3 : (b >> 3) == 0x1E ? 4 : 0;
    if (len == 0 || i + len > n) {
      out.push_back(kReplacement);
      ++i;
      continue;
    }
    uint32_t c = len == 1 ? b : len == 2 ? (b & 0x1F) : len == 3 ? (b & 0x0F) : (b & 0x07);
    bool ok = true;
    for (int k = 1; k < len; ++k) {
      if ((p[i + k] & 0xC0) != 0x80) ok = false;
      c = (c << 6) | (p[i + k] & 0x3F);
    }
    static constexpr uint32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
    if (!ok || c < kMin[len] || c > 0x10FFFF || (c >= 0xD800 && c < 0xE000)) {
      out.push_back(kReplacement);
      ++i;
      continue;
    }
    out.push_back(c);
    i += len;
  }
  return out;
}

void AppendUtf8(uint32_t c, std::string* out) {
  if (c < 0x80) {
    out->push_back(static_cast<char>(c));
  } else if (c < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (c >> 6)));
    out->push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else if (c < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (c >> 12)));
    out->push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (c >> 18)));
    out->push_back(static_cast<char>(0x80 | ((c >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (c & 0x3F)));
  }
}

std::string EncodeUtf8(const std::vector<uint32_t>& codes) {
  std::string out;
  out.reserve(codes.size());
  for (uint32_t c : codes) AppendUtf8(c, &out);
  return out;
}

bool IsLetter(uint32_t c) { return InRanges(kLetterRanges, kLetterRangesSize, c); }
bool IsNumber(uint32_t c) { return InRanges(kNumberRanges, kNumberRangesSize, c); }

bool IsWhitespace(uint32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

uint8_t CombiningClass(uint32_t c) {
  const auto* end = kCombiningClasses + kCombiningClassesSize;
  const auto* it = std::upper_bound(kCombiningClasses, end, c,
                                    [](uint32_t v, const CombiningRange& r) { return v < r.first; });
  return it != kCombiningClasses && c <= (it - 1)->last ? (it - 1)->ccc : 0;
}

std::vector<uint32_t> Nfc(const std::vector<uint32_t>& text) {
  std::vector<uint32_t> d;
  d.reserve(text.size());
  for (uint32_t c : text) Decompose(c, &d);
  // Canonical ordering: stable sort of each run of non-starters by class.
  for (size_t i = 0; i < d.size();) {
    if (CombiningClass(d[i]) == 0) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < d.size() && CombiningClass(d[j]) != 0) ++j;
    std::stable_sort(d.begin() + i, d.begin() + j,
                     [](uint32_t a, uint32_t b) { return CombiningClass(a) < CombiningClass(b); });
    i = j;
  }
  // Canonical composition: c joins the last starter unless a character in
  // between has class 0 or a class >= c's (it is "blocked").
  std::vector<uint32_t> out;
  out.reserve(d.size());
  size_t starter = SIZE_MAX;
  int last_class = -1;  // class of the last character after the starter; -1: none
  for (uint32_t c : d) {
    const int cc = CombiningClass(c);
    if (starter != SIZE_MAX && (last_class == -1 || (last_class != 0 && last_class < cc))) {
      if (const uint32_t composite = Compose(out[starter], c); composite != 0) {
        out[starter] = composite;
        continue;
      }
    }
    if (cc == 0) {
      starter = out.size();
      last_class = -1;
    } else {
      last_class = cc;
    }
    out.push_back(c);
  }
  return out;
}

std::vector<uint32_t> ToLower(const std::vector<uint32_t>& text) {
  std::vector<uint32_t> out;
  out.reserve(text.size());
  const auto* end = kLowerMap + kLowerMapSize;
  for (uint32_t c : text) {
    if (c < 0x80) {
      out.push_back(c >= 'A' && c <= 'Z' ? c + 32 : c);
      continue;
    }
    const auto* it = std::lower_bound(kLowerMap, end, c, [](const LowerEntry& e, uint32_t v) { return e.code < v; });
    if (it == end || it->code != c) {
      out.push_back(c);
      continue;
    }
    for (uint32_t l : it->lower) {
      if (l != 0) out.push_back(l);
    }
  }
  return out;
}

}  // namespace lorad::text::unicode
