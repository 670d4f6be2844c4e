#include "core/train/sample_prompts.h"

#include <cmath>
#include <fstream>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "core/base/limits.h"

namespace lorad::train {
namespace {

absl::Status BadOption(int64_t line, const std::string& option, const std::string& why) {
  return absl::InvalidArgumentError(
      absl::StrCat("sample prompt line ", line, ": option --", option, " ", why));
}

absl::StatusOr<int64_t> PositiveInt(int64_t line, const std::string& name, const std::string& text) {
  int64_t v = 0;
  if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(text), &v) || v <= 0) {
    return BadOption(line, name, absl::StrCat("needs a positive integer, got \"", text, "\""));
  }
  return v;
}

}  // namespace

absl::StatusOr<std::vector<SamplePrompt>> ParseSamplePrompts(const std::string& text) {
  if (text.size() > kMaxSamplePromptsBytes) {
    return absl::InvalidArgumentError(absl::StrCat("sample prompts: ", text.size(), " bytes is more than the ",
                                                   kMaxSamplePromptsBytes, "-byte limit for a prompt file"));
  }
  std::vector<SamplePrompt> prompts;
  int64_t line_number = 0;
  for (absl::string_view raw_line : absl::StrSplit(text, '\n')) {
    ++line_number;
    const std::string line(absl::StripAsciiWhitespace(raw_line));
    if (line.empty() || line[0] == '#') continue;
    if (prompts.size() >= kMaxSamplePrompts) {  // each prompt is a full sampling run at every preview
      return absl::InvalidArgumentError(absl::StrCat("sample prompt line ", line_number, ": more than ",
                                                     kMaxSamplePrompts, " prompts (the limit per prompt file)"));
    }
    if (line.size() > kMaxCaptionBytes) {
      return absl::InvalidArgumentError(absl::StrCat("sample prompt line ", line_number, ": ", line.size(),
                                                     " bytes is longer than the ", kMaxCaptionBytes,
                                                     "-byte limit for a prompt"));
    }
    // kohya splits on " --": the first part is the prompt, the rest are options.
    std::vector<std::string> parts = absl::StrSplit(line, " --");
    SamplePrompt prompt;
    prompt.line = line_number;
    prompt.prompt = std::string(absl::StripAsciiWhitespace(parts[0]));
    for (size_t i = 1; i < parts.size(); ++i) {
      const std::string part(absl::StripAsciiWhitespace(parts[i]));
      const size_t space = part.find(' ');
      const std::string name = part.substr(0, space);
      const std::string value =
          space == std::string::npos ? "" : std::string(absl::StripAsciiWhitespace(part.substr(space + 1)));
      if (name == "n") {
        prompt.negative_prompt = value;
      } else if (name == "w" || name == "h") {
        auto v = PositiveInt(line_number, name, value);
        if (!v.ok()) return v.status();
        const int64_t size = *v - *v % 8;  // kohya rounds down to a multiple of 8
        if (size < 8) return BadOption(line_number, name, "needs a size of at least 8");
        if (size > kMaxResolution) {
          return BadOption(line_number, name, absl::StrCat("needs a size of at most ", kMaxResolution, ", got ", size));
        }
        (name == "w" ? prompt.width : prompt.height) = size;
      } else if (name == "s") {
        auto v = PositiveInt(line_number, name, value);
        if (!v.ok()) return v.status();
        prompt.steps = std::min<int64_t>(*v, 1000);
      } else if (name == "d") {
        int64_t seed = 0;
        if (!absl::SimpleAtoi(value, &seed) || seed < 0) {
          return BadOption(line_number, name, absl::StrCat("needs a non-negative integer seed, got \"", value, "\""));
        }
        prompt.seed = seed;
      } else if (name == "l") {
        double scale = 0;
        if (!absl::SimpleAtod(value, &scale) || !(scale >= 0) || !(scale <= 1000)) {
          return BadOption(line_number, name, absl::StrCat("needs a CFG scale from 0 to 1000, got \"", value, "\""));
        }
        prompt.cfg_scale = scale;
      } else if (name == "ss") {
        prompt.sampler = value;
      } else if (name == "lora_strength") {
        double strength = 0;
        if (!absl::SimpleAtod(value, &strength) || !(std::abs(strength) <= kMaxPreviewLoraStrength)) {
          return BadOption(line_number, name,
                           absl::StrCat("needs a LoRA strength (network multiplier) from ", -kMaxPreviewLoraStrength,
                                        " to ", kMaxPreviewLoraStrength, ", got \"", value, "\""));
        }
        prompt.lora_strength = strength;
      }
      // Other kohya options (--cn, --am, ...) concern features not trained here: ignored.
    }
    prompts.push_back(std::move(prompt));
  }
  return prompts;
}

absl::StatusOr<std::vector<SamplePrompt>> LoadSamplePrompts(const std::filesystem::path& path) {
  std::error_code ec;
  const auto size = std::filesystem::file_size(path, ec);
  if (!ec && size > kMaxSamplePromptsBytes) {  // refused before reading it
    return absl::InvalidArgumentError(absl::StrCat(path.string(), ": ", size, " bytes is more than the ",
                                                   kMaxSamplePromptsBytes, "-byte limit for a sample prompt file ",
                                                   "(config key 'sample_prompts')"));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(
        absl::StrCat("cannot read sample prompt file ", path.string(), ": check 'sample_prompts'"));
  }
  std::stringstream buffer;
  buffer << in.rdbuf();
  auto prompts = ParseSamplePrompts(buffer.str());
  if (!prompts.ok()) {
    return absl::Status(prompts.status().code(), absl::StrCat(path.string(), ": ", prompts.status().message()));
  }
  return prompts;
}

}  // namespace lorad::train
