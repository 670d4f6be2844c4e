// CLIP byte-level BPE internals shared by the tokenizer and the demo
// vocabulary writer (internal to core/text).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace lorad::text::bpe {

// CLIP's normalization (NFC, whitespace runs -> " ", lowercase) followed by its
// pre-tokenization regex
//   <|startoftext|>|<|endoftext|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
// Returns the matched pieces (UTF-8).
std::vector<std::string> PreTokenize(const std::string& text);

// The 256 byte symbols in CLIP's bytes_to_unicode order (their vocabulary
// order): printable Latin-1 bytes first, the rest mapped to U+0100....
const std::vector<std::string>& ByteSymbolsInVocabOrder();
// The symbol (UTF-8) of one byte.
const std::string& ByteSymbol(uint8_t byte);
// Inverse of ByteSymbol on a sequence of symbols; unknown code points are kept as UTF-8.
std::string SymbolsToBytes(const std::string& symbols);

// A piece as BPE symbols: one per byte, "</w>" appended to the last.
std::vector<std::string> InitialSymbols(const std::string& piece);

inline constexpr const char* kStartOfText = "<|startoftext|>";
inline constexpr const char* kEndOfText = "<|endoftext|>";
inline constexpr const char* kEndOfWord = "</w>";

}  // namespace lorad::text::bpe
