// File names of a run's outputs, as kohya names them, and pruning of old ones
// (save_last_n_steps / save_last_n_epochs and their _state variants).
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>

namespace lorad::train {

class CheckpointNames {
 public:
  CheckpointNames(std::filesystem::path output_dir, std::string output_name)
      : dir_(std::move(output_dir)), name_(std::move(output_name)) {}
  std::filesystem::path FinalLora() const;                // <name>.safetensors
  std::filesystem::path StepLora(int64_t step) const;     // <name>-step00000030.safetensors
  std::filesystem::path EpochLora(int64_t epoch) const;   // <name>-000002.safetensors
  std::filesystem::path StepState(int64_t step) const;    // <name>-step00000030-state
  std::filesystem::path EpochState(int64_t epoch) const;  // <name>-000002-state
  std::filesystem::path LastState() const;                // <name>-state
  std::filesystem::path Sample(int64_t step, int64_t index) const;  // sample/<name>_000030_00.png
  const std::filesystem::path& dir() const { return dir_; }
  const std::string& name() const { return name_; }

 private:
  std::filesystem::path dir_;
  std::string name_;
};

// Deletes checkpoints that fell out of the kept window. Scans the output folder,
// so files of an earlier (resumed) process are pruned too.
class CheckpointRegistry {
 public:
  // Keeps step checkpoints with step > current - keep (LoRA files and states separately).
  void RemoveOldSteps(const CheckpointNames& names, int64_t current_step, std::optional<int64_t> keep_lora,
                      std::optional<int64_t> keep_state) const;
  // Keeps the last `keep` epoch saves: epoch > current - every * keep.
  void RemoveOldEpochs(const CheckpointNames& names, int64_t current_epoch, int64_t every,
                       std::optional<int64_t> keep_lora, std::optional<int64_t> keep_state) const;
};

}  // namespace lorad::train
