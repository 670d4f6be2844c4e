// How a training run reports: an observer interface the loop calls between
// steps (terminal progress bar, protobuf events to the daemon, tests), and a
// cancellation token it checks between steps.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace lorad::train {

struct RunStarted {
  int64_t total_steps = 0;
  int64_t total_epochs = 0;
  int64_t steps_per_epoch = 0;
  int64_t resumed_from_step = 0;   // 0 for a fresh run
  int64_t num_train_images = 0;    // with repeats
  std::string device;              // "cpu", "cuda:0"
  std::string model_arch;          // "sd15", "sdxl"
  std::string config_toml;         // the effective config
  std::map<std::string, std::string> hyperparameters;  // every option, as text
};

struct GroupLr {
  std::string group;  // "unet", "text_encoder", "text_encoder_2"
  double lr = 0;
  // What the lr scheduler reports (torch get_last_lr): the group's scheduled
  // lr, which differs from `lr` (d*lr) for Prodigy and D-Adaptation.
  double scheduler_lr = 0;
};

// kohya's max-norm postfix (scale_weight_norms): keys scaled in the last
// step, and the mean / max norm of the merged deltas after scaling.
struct MaxNormReport {
  int64_t keys_scaled = 0;
  double average_key_norm = 0;
  double max_key_norm = 0;
};

struct StepReport {
  int64_t step = 0;         // optimizer steps completed
  int64_t total_steps = 0;
  int64_t epoch = 0;        // 1-based
  int64_t total_epochs = 0;
  double loss = 0;          // this step's loss (mean over its micro-batches)
  double loss_avg = 0;      // moving average over the current epoch (kohya's avr_loss)
  std::vector<GroupLr> lrs;
  double it_per_s = 0;
  double images_per_s = 0;
  double eta_s = 0;
  double grad_norm = 0;     // 0 when not computed
  int64_t gpu_memory_allocated_bytes = 0;  // current tensor memory on the GPU; 0 on the CPU
  bool skipped = false;     // fp16: the loss scaler found inf/NaN gradients and skipped the update
  std::optional<MaxNormReport> max_norm;  // set when scale_weight_norms is on
};

enum class CheckpointKind { kLora, kState };

struct CheckpointReport {
  std::string path;   // a LoRA file, or a state directory
  int64_t step = 0;
  int64_t epoch = 0;
  CheckpointKind kind = CheckpointKind::kLora;
  bool is_final = false;
};

struct SampleReport {
  std::string path;   // the PNG
  int64_t step = 0;
  int64_t prompt_index = 0;
  std::string prompt;
  std::string sampler;        // the kohya sampler name it was rendered with
  double lora_strength = 1.0; // the network multiplier it was rendered at
};

enum class RunOutcome { kSucceeded, kFailed, kCancelled };

struct RunFinished {
  RunOutcome outcome = RunOutcome::kSucceeded;
  std::string reason;           // why it failed or was cancelled
  std::string final_lora_path;  // the last LoRA written (kept on failure and cancel)
  int64_t final_step = 0;
};

// Receives a run's reports on the training thread; implementations must be
// quick (no blocking I/O beyond a pipe write). Default methods ignore the report.
class TrainObserver {
 public:
  virtual ~TrainObserver() = default;
  virtual void OnStart(const RunStarted& info) { (void)info; }
  virtual void OnStep(const StepReport& report) { (void)report; }
  virtual void OnEpochEnd(int64_t epoch, double loss_avg) { (void)epoch, (void)loss_avg; }
  virtual void OnCheckpoint(const CheckpointReport& report) { (void)report; }
  virtual void OnSample(const SampleReport& report) { (void)report; }
  // `code` is a stable machine-readable tag, e.g. "unknown_config_key".
  virtual void OnWarning(const std::string& code, const std::string& message) { (void)code, (void)message; }
  virtual void OnFinish(const RunFinished& result) { (void)result; }
};

// Forwards every report to several observers, in order.
class ObserverList : public TrainObserver {
 public:
  void Add(TrainObserver* observer) { observers_.push_back(observer); }  // not owned; must outlive the list
  void OnStart(const RunStarted& info) override;
  void OnStep(const StepReport& report) override;
  void OnEpochEnd(int64_t epoch, double loss_avg) override;
  void OnCheckpoint(const CheckpointReport& report) override;
  void OnSample(const SampleReport& report) override;
  void OnWarning(const std::string& code, const std::string& message) override;
  void OnFinish(const RunFinished& result) override;

 private:
  std::vector<TrainObserver*> observers_;
};

// Set from any thread (a signal handler included: Cancel is lock-free), read by
// the loop between steps. When `save_state` is requested the loop writes a
// resumable state before it stops (SIGTERM from the daemon does this).
class CancellationToken {
 public:
  // Async-signal-safe.
  void Cancel(bool save_state = true) noexcept {
    save_state_.store(save_state, std::memory_order_relaxed);
    cancelled_.store(true, std::memory_order_release);
  }
  bool cancelled() const noexcept { return cancelled_.load(std::memory_order_acquire); }
  bool save_state_requested() const noexcept { return save_state_.load(std::memory_order_relaxed); }

 private:
  std::atomic<bool> cancelled_{false};
  std::atomic<bool> save_state_{true};
};

// A one-line terminal progress bar (stderr by default), redrawn at most every
// `min_interval_ms`; checkpoints, samples and warnings print on their own lines.
class ProgressBarObserver : public TrainObserver {
 public:
  explicit ProgressBarObserver(int fd = 2, int min_interval_ms = 200);
  void OnStart(const RunStarted& info) override;
  void OnStep(const StepReport& report) override;
  void OnCheckpoint(const CheckpointReport& report) override;
  void OnSample(const SampleReport& report) override;
  void OnWarning(const std::string& code, const std::string& message) override;
  void OnFinish(const RunFinished& result) override;

  // The bar line for a report (no escape codes), e.g.
  // "steps  42/60 [=====>    ] 70% epoch 2/3 loss 0.1234 avg 0.1300 lr 1.0e-04 3.21 it/s ETA 0:05".
  static std::string FormatBar(const StepReport& report, int width = 30);

 private:
  void WriteLine(const std::string& text, bool finish_line);
  int fd_;
  int min_interval_ms_;
  int64_t last_draw_ms_ = 0;
  bool bar_open_ = false;
  bool tty_ = false;
};

}  // namespace lorad::train
