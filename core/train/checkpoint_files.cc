#include "core/train/checkpoint_files.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/match.h"
#include "absl/strings/strip.h"

namespace lorad::train {
namespace {

// For every entry "<name><infix>NNNN<suffix>" in dir, calls fn(number, path).
template <typename Fn>
void ForEachNumbered(const std::filesystem::path& dir, const std::string& prefix, const std::string& suffix,
                     size_t digits, Fn fn) {
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    const std::string file = entry.path().filename().string();
    if (file.size() != prefix.size() + digits + suffix.size()) continue;
    if (!absl::StartsWith(file, prefix) || !absl::EndsWith(file, suffix)) continue;
    int64_t number = 0;
    if (!absl::SimpleAtoi(file.substr(prefix.size(), digits), &number)) continue;
    fn(number, entry.path());
  }
}

void Remove(const std::filesystem::path& path) {
  std::error_code ec;
  std::filesystem::remove_all(path, ec);
}

}  // namespace

std::filesystem::path CheckpointNames::FinalLora() const { return dir_ / (name_ + ".safetensors"); }
std::filesystem::path CheckpointNames::StepLora(int64_t step) const {
  return dir_ / absl::StrFormat("%s-step%08d.safetensors", name_, step);
}
std::filesystem::path CheckpointNames::EpochLora(int64_t epoch) const {
  return dir_ / absl::StrFormat("%s-%06d.safetensors", name_, epoch);
}
std::filesystem::path CheckpointNames::StepState(int64_t step) const {
  return dir_ / absl::StrFormat("%s-step%08d-state", name_, step);
}
std::filesystem::path CheckpointNames::EpochState(int64_t epoch) const {
  return dir_ / absl::StrFormat("%s-%06d-state", name_, epoch);
}
std::filesystem::path CheckpointNames::LastState() const { return dir_ / (name_ + "-state"); }
std::filesystem::path CheckpointNames::Sample(int64_t step, int64_t index) const {
  return dir_ / "sample" / absl::StrFormat("%s_%06d_%02d.png", name_, step, index);
}

void CheckpointRegistry::RemoveOldSteps(const CheckpointNames& names, int64_t current_step,
                                        std::optional<int64_t> keep_lora, std::optional<int64_t> keep_state) const {
  if (keep_lora) {
    ForEachNumbered(names.dir(), names.name() + "-step", ".safetensors", 8, [&](int64_t step, const auto& path) {
      if (step <= current_step - *keep_lora) Remove(path);
    });
  }
  if (keep_state) {
    ForEachNumbered(names.dir(), names.name() + "-step", "-state", 8, [&](int64_t step, const auto& path) {
      if (step <= current_step - *keep_state) Remove(path);
    });
  }
}

void CheckpointRegistry::RemoveOldEpochs(const CheckpointNames& names, int64_t current_epoch, int64_t every,
                                         std::optional<int64_t> keep_lora,
                                         std::optional<int64_t> keep_state) const {
  if (keep_lora) {
    ForEachNumbered(names.dir(), names.name() + "-", ".safetensors", 6, [&](int64_t epoch, const auto& path) {
      if (epoch <= current_epoch - every * *keep_lora) Remove(path);
    });
  }
  if (keep_state) {
    ForEachNumbered(names.dir(), names.name() + "-", "-state", 6, [&](int64_t epoch, const auto& path) {
      if (epoch <= current_epoch - every * *keep_state) Remove(path);
    });
  }
}

}  // namespace lorad::train
