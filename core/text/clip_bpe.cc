#include "core/text/clip_bpe.h"

#include <array>

#include "core/text/unicode_text.h"

namespace lorad::text::bpe {
namespace {

struct ByteTables {
  std::array<std::string, 256> symbol;     // byte -> symbol
  std::vector<std::string> vocab_order;    // bytes_to_unicode().values()
  std::array<uint32_t, 512> code_to_byte;  // symbol code point (< 512) -> byte + 1, 0 = none
};

const ByteTables& Tables() {
  static const ByteTables tables = [] {
    ByteTables t{};
    std::vector<int> bs;
    for (int b = '!'; b <= '~'; ++b) bs.push_back(b);
    for (int b = 0xA1; b <= 0xAC; ++b) bs.push_back(b);
    for (int b = 0xAE; b <= 0xFF; ++b) bs.push_back(b);
    std::vector<uint32_t> cs(bs.begin(), bs.end());
    std::array<bool, 256> seen{};
    for (int b : bs) seen[b] = true;
    uint32_t n = 0;
    for (int b = 0; b < 256; ++b) {
      if (!seen[b]) {
        bs.push_back(b);
        cs.push_back(256 + n++);
      }
    }
    for (size_t i = 0; i < bs.size(); ++i) {
      std::string s;
      unicode::AppendUtf8(cs[i], &s);
      t.symbol[bs[i]] = s;
      t.vocab_order.push_back(s);
      t.code_to_byte[cs[i]] = static_cast<uint32_t>(bs[i]) + 1;
    }
    return t;
  }();
  return tables;
}

bool StartsWith(const std::vector<uint32_t>& s, size_t i, const char* ascii) {
  for (size_t k = 0; ascii[k] != '\0'; ++k) {
    if (i + k >= s.size() || s[i + k] != static_cast<unsigned char>(ascii[k])) return false;
  }
  return true;
}

size_t Length(const char* s) { return std::char_traits<char>::length(s); }

}  // namespace

std::vector<std::string> PreTokenize(const std::string& text) {
  using namespace unicode;
  // Normalize: NFC, whitespace runs -> one space, lowercase.
  std::vector<uint32_t> collapsed;
  for (uint32_t c : Nfc(DecodeUtf8(text))) {
    if (IsWhitespace(c)) {
      if (collapsed.empty() || collapsed.back() != ' ') collapsed.push_back(' ');
    } else {
      collapsed.push_back(c);
    }
  }
  const std::vector<uint32_t> s = ToLower(collapsed);

  std::vector<std::string> pieces;
  auto emit = [&](size_t from, size_t to) {
    pieces.push_back(EncodeUtf8(std::vector<uint32_t>(s.begin() + from, s.begin() + to)));
  };
  static const char* const kContractions[] = {"'s", "'t", "'re", "'ve", "'m", "'ll", "'d"};
  for (size_t i = 0; i < s.size();) {
    const uint32_t c = s[i];
    if (IsWhitespace(c)) {
      ++i;
      continue;
    }
    const char* literal = nullptr;
    for (const char* special : {kStartOfText, kEndOfText}) {
      if (StartsWith(s, i, special)) literal = special;
    }
    if (literal == nullptr) {
      for (const char* contraction : kContractions) {
        if (StartsWith(s, i, contraction)) {
          literal = contraction;
          break;
        }
      }
    }
    if (literal != nullptr) {
      emit(i, i + Length(literal));
      i += Length(literal);
    } else if (IsLetter(c)) {
      size_t j = i + 1;
      while (j < s.size() && IsLetter(s[j])) ++j;
      emit(i, j);
      i = j;
    } else if (IsNumber(c)) {
      emit(i, i + 1);
      ++i;
    } else {
      size_t j = i + 1;
      while (j < s.size() && !IsWhitespace(s[j]) && !IsLetter(s[j]) && !IsNumber(s[j])) ++j;
      emit(i, j);
      i = j;
    }
  }
  return pieces;
}

const std::vector<std::string>& ByteSymbolsInVocabOrder() { return Tables().vocab_order; }

const std::string& ByteSymbol(uint8_t byte) { return Tables().symbol[byte]; }

std::string SymbolsToBytes(const std::string& symbols) {
  std::string out;
  for (uint32_t c : unicode::DecodeUtf8(symbols)) {
    if (c < 512 && Tables().code_to_byte[c] != 0) {
      out.push_back(static_cast<char>(Tables().code_to_byte[c] - 1));
    } else {
      unicode::AppendUtf8(c, &out);
    }
  }
  return out;
}

std::vector<std::string> InitialSymbols(const std::string& piece) {
  std::vector<std::string> symbols;
  symbols.reserve(piece.size());
  for (unsigned char b : piece) symbols.push_back(ByteSymbol(b));
  if (!symbols.empty()) symbols.back() += kEndOfWord;
  return symbols;
}

}  // namespace lorad::text::bpe
