#include "core/base/toml.h"

#include <fstream>
#include <sstream>
#include <string>

#include "absl/strings/str_cat.h"

namespace lorad {
namespace {

// Skips a string starting at text[i] (a quote) and returns the index after it.
size_t SkipString(std::string_view text, size_t i) {
  const char quote = text[i];
  const bool multi = text.substr(i, 3) == std::string_view(quote == '"' ? "\"\"\"" : "'''");
  if (multi) {
    const size_t end = text.find(quote == '"' ? "\"\"\"" : "'''", i + 3);
    // A run of quotes may close a multi-line string with up to two quotes inside.
    size_t after = end == std::string_view::npos ? text.size() : end + 3;
    while (after < text.size() && text[after] == quote) ++after;
    return after;
  }
  for (size_t j = i + 1; j < text.size(); ++j) {
    if (text[j] == '\n') return j;  // unterminated: the parser reports it
    if (quote == '"' && text[j] == '\\') {
      ++j;
      continue;
    }
    if (text[j] == quote) return j + 1;
  }
  return text.size();
}

}  // namespace

int TomlNestingDepth(std::string_view text) {
  int deepest = 0;
  int brackets = 0;  // open [ and { across lines (arrays may span lines)
  int dots = 0;      // dotted parts on the current line outside strings
  for (size_t i = 0; i < text.size();) {
    const char c = text[i];
    if (c == '"' || c == '\'') {
      i = SkipString(text, i);
      continue;
    }
    if (c == '#') {
      while (i < text.size() && text[i] != '\n') ++i;
      continue;
    }
    if (c == '\n') dots = 0;
    if (c == '[' || c == '{') ++brackets;
    if ((c == ']' || c == '}') && brackets > 0) --brackets;
    if (c == '.') ++dots;
    deepest = std::max(deepest, brackets + dots);
    ++i;
  }
  return deepest;
}

absl::StatusOr<toml::table> ParseToml(std::string_view text, std::string_view what_view) {
  // Debian's Abseil predates std::string_view support in StrCat.
  const std::string what(what_view);
  if (text.size() > kMaxTomlBytes) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": ", text.size(), " bytes is more than the ",
                                                   kMaxTomlBytes, "-byte limit for a TOML document"));
  }
  if (const int depth = TomlNestingDepth(text); depth > kMaxTomlDepth) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": TOML nested ", depth,
                                                   " levels deep (dotted keys, arrays, inline tables); at most ",
                                                   kMaxTomlDepth, " are accepted"));
  }
  try {
    return toml::parse(text);
  } catch (const toml::parse_error& e) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": ", std::string(e.description()), " at line ",
                                                   static_cast<uint64_t>(e.source().begin.line), ", column ",
                                                   static_cast<uint64_t>(e.source().begin.column)));
  } catch (const std::exception& e) {
    // toml++ may also throw on allocation failure; nothing escapes as a crash.
    return absl::InvalidArgumentError(absl::StrCat(what, ": ", e.what()));
  }
}

absl::StatusOr<toml::table> ParseTomlFile(const std::filesystem::path& path) {
  std::error_code ec;
  const auto size = std::filesystem::file_size(path, ec);
  if (ec) return absl::NotFoundError(absl::StrCat("cannot read ", path.string(), ": ", ec.message()));
  if (size > kMaxTomlBytes) {
    return absl::InvalidArgumentError(absl::StrCat(path.string(), ": ", size, " bytes is more than the ",
                                                   kMaxTomlBytes, "-byte limit for a TOML document"));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path.string()));
  std::ostringstream text;
  text << in.rdbuf();
  return ParseToml(text.str(), path.string());
}

}  // namespace lorad
