// Preview prompt files in kohya's text syntax: one prompt per line, options after
// " --": `--n` negative prompt, `--w`/`--h` size, `--s` steps, `--l` CFG scale,
// `--d` seed, `--ss` sampler; and lorad's own `--lora_strength` (the network
// multiplier for that preview; kohya has no such option and ignores it).
// Lines starting with '#' and blank lines are skipped.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace lorad::train {

struct SamplePrompt {
  std::string prompt;
  std::string negative_prompt;
  std::optional<int64_t> width;     // unset: the model's native size; else a multiple of 8
  std::optional<int64_t> height;
  int64_t steps = 30;
  double cfg_scale = 7.5;
  std::optional<int64_t> seed;      // unset: derived from the run seed and the prompt's index
  std::string sampler;              // empty: the config's sample_sampler
  std::optional<double> lora_strength;  // unset: the config's sample_lora_strength
  int64_t line = 0;                 // 1-based line in the file, for messages
};

// Parses prompt-file text. A bad option value is INVALID_ARGUMENT naming the line.
absl::StatusOr<std::vector<SamplePrompt>> ParseSamplePrompts(const std::string& text);

// Reads and parses a prompt file; NOT_FOUND names the path.
absl::StatusOr<std::vector<SamplePrompt>> LoadSamplePrompts(const std::filesystem::path& path);

}  // namespace lorad::train
