// TensorBoard logs as kohya sd-scripts writes them through accelerate
// (`log_with = "tensorboard"` or a `logging_dir`): one run folder
// <logging_dir>/<log_prefix><YYYYmmddHHMMSS>/<log_tracker_name or
// "network_train">, holding an events.out.tfevents.* file with kohya's scalar
// tags and the preview images. Torch-free: TFRecord framing (tfrecord.h) and
// TensorBoard's Event protobuf (tensorboard_event.proto).
#pragma once

#include <cstdint>
#include <ctime>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/config/config.h"
#include "core/train/observer.h"

namespace lorad::tensorboard {
class Event;
}

namespace lorad::train {

// What the config asks of the TensorBoard log.
struct TensorBoardSettings {
  std::filesystem::path logging_dir;
  std::string log_prefix;                      // prepended to the timestamp folder
  std::string tracker_name = "network_train";  // kohya's default for train_network.py / sdxl_train_network.py
  bool network_train_unet_only = false;        // changes kohya's lr tags
  bool log_d_lr = false;                       // D-Adaptation / Prodigy: also the lr/d*lr/... tags
};

// The settings when the config writes TensorBoard logs: `logging_dir` is set
// and `log_with` is unset or "tensorboard" (kohya's prepare_accelerator);
// nullopt otherwise. ValidateTrainConfig has already refused wandb.
std::optional<TensorBoardSettings> TensorBoardSettingsFor(const TrainConfig& config);

// <logging_dir>/<log_prefix><local time as YYYYmmddHHMMSS>/<tracker_name>.
std::filesystem::path TensorBoardRunDir(const TensorBoardSettings& settings, std::time_t now);

// The scalars kohya logs for one step (train_network.py generate_step_logs), by
// tag, in kohya's order; a tag kohya assigns twice appears once, at its first
// place, with the last value (a Python dict).
std::vector<std::pair<std::string, double>> KohyaStepScalars(const StepReport& report,
                                                             const TensorBoardSettings& settings);

// kohya's name for one of lorad's parameter groups ("text_encoder_plus" ->
// "textencoder plus"), as networks/lora.py prepare_optimizer_params describes them.
std::string KohyaLrDescription(const std::string& group);

// Width, height and TensorBoard colorspace (1 gray, 2 gray+alpha, 3 RGB, 4 RGBA)
// from a PNG's IHDR chunk; INVALID_ARGUMENT when the bytes are not a PNG.
struct PngHeader {
  int32_t width = 0;
  int32_t height = 0;
  int32_t colorspace = 0;
};
absl::StatusOr<PngHeader> ReadPngHeader(const std::string& png);

// One TensorBoard event file, written as torch's SummaryWriter writes it: the
// name events.out.tfevents.<unix seconds, 10 digits>.<hostname>.<pid>.<n>, a
// first record with file_version "brain.Event:2", then one Event per scalar or
// image. Records are buffered until Flush (the destructor flushes), so a file
// cut short by a kill holds whole records up to the last flush.
// Not thread-safe.
class EventFileWriter {
 public:
  // Creates `dir` (and its parents) and a new event file in it, with the
  // version record flushed.
  static absl::StatusOr<std::unique_ptr<EventFileWriter>> Open(const std::filesystem::path& dir);
  ~EventFileWriter();
  EventFileWriter(const EventFileWriter&) = delete;
  EventFileWriter& operator=(const EventFileWriter&) = delete;

  // A Summary.Value with simple_value (float, as TensorBoard stores it).
  void AddScalar(const std::string& tag, int64_t step, double value, double wall_time);
  // A Summary.Value with an Image of the PNG bytes; INVALID_ARGUMENT (nothing
  // written) when they are not a PNG.
  absl::Status AddImage(const std::string& tag, int64_t step, const std::string& png, double wall_time);
  // Writes the buffered records. After a failed write the file is left as it
  // is and every later call returns the first error.
  absl::Status Flush();

  const std::filesystem::path& path() const { return path_; }

 private:
  EventFileWriter(int fd, std::filesystem::path path) : fd_(fd), path_(std::move(path)) {}
  void Append(const tensorboard::Event& event);
  int fd_;
  std::filesystem::path path_;
  std::string pending_;
  absl::Status status_;
};

// Seconds since the Unix epoch, with sub-second precision (Event.wall_time).
double WallTimeNow();

// A TrainObserver that writes the run's TensorBoard log: per step kohya's
// scalars (loss/current, loss/average, lr/...), per epoch loss/epoch_average at
// the 1-based epoch, and each preview as an image tagged sample_<prompt index>
// (kohya's name for it in wandb; kohya logs no images to TensorBoard) at its
// step. Flushes after every report, as accelerate's tracker does, and on finish.
// A failed write does not stop training: it is kept in status() and writing stops.
// Not thread-safe (the training thread reports).
class TensorBoardObserver : public TrainObserver {
 public:
  // Creates the run folder for `now` and its event file.
  static absl::StatusOr<std::unique_ptr<TensorBoardObserver>> Create(const TensorBoardSettings& settings,
                                                                     std::time_t now);
  void OnStep(const StepReport& report) override;
  void OnEpochEnd(int64_t epoch, double loss_avg) override;
  void OnSample(const SampleReport& report) override;
  void OnFinish(const RunFinished& result) override;

  const std::filesystem::path& file() const { return writer_->path(); }
  const absl::Status& status() const { return status_; }

 private:
  TensorBoardObserver(TensorBoardSettings settings, std::unique_ptr<EventFileWriter> writer)
      : settings_(std::move(settings)), writer_(std::move(writer)) {}
  void Keep(const absl::Status& status);
  TensorBoardSettings settings_;
  std::unique_ptr<EventFileWriter> writer_;
  absl::Status status_;
};

}  // namespace lorad::train
