#include "core/train/observer.h"

#include <unistd.h>

#include <chrono>
#include <cmath>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace lorad::train {
namespace {

int64_t MonotonicMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

std::string FormatDuration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const int64_t s = static_cast<int64_t>(seconds + 0.5);
  if (s >= 3600) return absl::StrFormat("%d:%02d:%02d", s / 3600, (s / 60) % 60, s % 60);
  return absl::StrFormat("%d:%02d", s / 60, s % 60);
}

void WriteAll(int fd, const std::string& text) {
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n <= 0) return;  // a closed terminal must not stop training
    done += static_cast<size_t>(n);
  }
}

}  // namespace

void ObserverList::OnStart(const RunStarted& info) {
  for (auto* o : observers_) o->OnStart(info);
}
void ObserverList::OnStep(const StepReport& report) {
  for (auto* o : observers_) o->OnStep(report);
}
void ObserverList::OnEpochEnd(int64_t epoch, double loss_avg) {
  for (auto* o : observers_) o->OnEpochEnd(epoch, loss_avg);
}
void ObserverList::OnCheckpoint(const CheckpointReport& report) {
  for (auto* o : observers_) o->OnCheckpoint(report);
}
void ObserverList::OnSample(const SampleReport& report) {
  for (auto* o : observers_) o->OnSample(report);
}
void ObserverList::OnWarning(const std::string& code, const std::string& message) {
  for (auto* o : observers_) o->OnWarning(code, message);
}
void ObserverList::OnFinish(const RunFinished& result) {
  for (auto* o : observers_) o->OnFinish(result);
}

ProgressBarObserver::ProgressBarObserver(int fd, int min_interval_ms)
    : fd_(fd), min_interval_ms_(min_interval_ms), tty_(::isatty(fd) == 1) {}

std::string ProgressBarObserver::FormatBar(const StepReport& r, int width) {
  const double fraction = r.total_steps > 0 ? std::clamp(double(r.step) / double(r.total_steps), 0.0, 1.0) : 0.0;
  const int filled = static_cast<int>(fraction * width);
  std::string bar(static_cast<size_t>(width), ' ');
  for (int i = 0; i < filled; ++i) bar[static_cast<size_t>(i)] = '=';
  if (filled < width) bar[static_cast<size_t>(filled)] = '>';
  std::string lr;
  for (const GroupLr& g : r.lrs) absl::StrAppend(&lr, lr.empty() ? " lr " : "/", absl::StrFormat("%.1e", g.lr));
  // kohya's progress postfix with scale_weight_norms: "Keys Scaled", "Average key norm".
  std::string max_norm;
  if (r.max_norm) {
    max_norm = absl::StrFormat(" keys scaled %d avg key norm %.4f max %.4f", r.max_norm->keys_scaled,
                               r.max_norm->average_key_norm, r.max_norm->max_key_norm);
  }
  return absl::StrFormat("steps %*d/%d [%s] %3d%% epoch %d/%d loss %.4f avg %.4f%s %.2f it/s ETA %s%s%s",
                         static_cast<int>(std::to_string(r.total_steps).size()), r.step, r.total_steps, bar,
                         static_cast<int>(fraction * 100), r.epoch, r.total_epochs, r.loss, r.loss_avg, lr,
                         r.it_per_s, FormatDuration(r.eta_s), max_norm, r.skipped ? " (skipped: inf grads)" : "");
}

void ProgressBarObserver::WriteLine(const std::string& text, bool finish_line) {
  // On a terminal the bar redraws in place; elsewhere (a log file) each draw is a line.
  if (tty_) {
    WriteAll(fd_, absl::StrCat("\r\x1b[2K", text, finish_line ? "\n" : ""));
    bar_open_ = !finish_line;
  } else {
    WriteAll(fd_, absl::StrCat(text, "\n"));
  }
}

void ProgressBarObserver::OnStart(const RunStarted& info) {
  WriteLine(absl::StrFormat("training %s on %s: %d steps, %d epochs, %d images (with repeats)%s",
                            info.model_arch, info.device, info.total_steps, info.total_epochs,
                            info.num_train_images,
                            info.resumed_from_step > 0 ? absl::StrCat(", resumed at step ", info.resumed_from_step)
                                                       : std::string()),
            true);
}

void ProgressBarObserver::OnStep(const StepReport& report) {
  const int64_t now = MonotonicMs();
  const bool last = report.step >= report.total_steps;
  if (!last && now - last_draw_ms_ < min_interval_ms_) return;
  last_draw_ms_ = now;
  WriteLine(FormatBar(report), last);
}

void ProgressBarObserver::OnCheckpoint(const CheckpointReport& report) {
  WriteLine(absl::StrFormat("saved %s %s (step %d)", report.kind == CheckpointKind::kLora ? "LoRA" : "state",
                            report.path, report.step),
            true);
}

void ProgressBarObserver::OnSample(const SampleReport& report) {
  WriteLine(absl::StrFormat("sample %s (step %d): %s", report.path, report.step, report.prompt), true);
}

void ProgressBarObserver::OnWarning(const std::string& code, const std::string& message) {
  WriteLine(absl::StrFormat("warning [%s]: %s", code, message), true);
}

void ProgressBarObserver::OnFinish(const RunFinished& result) {
  if (bar_open_) WriteAll(fd_, "\n");
  bar_open_ = false;
  switch (result.outcome) {
    case RunOutcome::kSucceeded:
      WriteLine(absl::StrFormat("done at step %d: %s", result.final_step, result.final_lora_path), true);
      break;
    case RunOutcome::kCancelled:
      WriteLine(absl::StrFormat("cancelled at step %d: %s", result.final_step, result.reason), true);
      break;
    case RunOutcome::kFailed:
      WriteLine(absl::StrFormat("FAILED at step %d: %s%s", result.final_step, result.reason,
                                // A reason that already names it (Run::Fail's) is not repeated.
                                result.final_lora_path.empty() || absl::StrContains(result.reason, result.final_lora_path)
                                    ? std::string()
                                    : absl::StrCat(" (last good LoRA: ", result.final_lora_path, ")")),
                true);
      break;
  }
}

}  // namespace lorad::train
