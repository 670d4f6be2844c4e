// UTF-8 and the Unicode operations CLIP's pre-tokenization uses (internal to core/text).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace lorad::text::unicode {

// Code points of UTF-8 `s`; invalid bytes become U+FFFD (as Python's
// errors="replace" decode does), so no input is rejected.
std::vector<uint32_t> DecodeUtf8(const std::string& s);
void AppendUtf8(uint32_t code, std::string* out);
std::string EncodeUtf8(const std::vector<uint32_t>& codes);

bool IsLetter(uint32_t c);      // \p{L}
bool IsNumber(uint32_t c);      // \p{N}
bool IsWhitespace(uint32_t c);  // Unicode White_Space
uint8_t CombiningClass(uint32_t c);

// Unicode NFC (canonical decomposition, canonical ordering, composition).
std::vector<uint32_t> Nfc(const std::vector<uint32_t>& text);
// Full lowercase mapping (str.lower()).
std::vector<uint32_t> ToLower(const std::vector<uint32_t>& text);

}  // namespace lorad::text::unicode
