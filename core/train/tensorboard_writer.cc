#include "core/train/tensorboard_writer.h"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <iterator>
#include <system_error>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/train/tensorboard_event.pb.h"
#include "core/train/tfrecord.h"

namespace lorad::train {
namespace {

namespace fs = std::filesystem;

// The <n> of the file name: a per-process counter, as tensorboard's
// event_file_writer.py numbers its files (_global_uid).
std::atomic<int64_t> g_file_counter{0};

std::string HostName() {
  char name[256] = {};
  if (::gethostname(name, sizeof(name) - 1) != 0 || name[0] == '\0') return "localhost";
  return name;
}

// kohya's name for a group lorad keeps under the same meaning; the last
// resort is lorad's own name (a group kohya has no description for).
struct Description {
  const char* group;
  const char* kohya;
};
constexpr Description kDescriptions[] = {
    {"text_encoder", "textencoder"},
    {"text_encoder_plus", "textencoder plus"},
    {"unet", "unet"},
    {"unet_plus", "unet plus"},
};

// An ordered dict: a key set again keeps its place and takes the new value.
void Set(std::vector<std::pair<std::string, double>>& logs, const std::string& tag, double value) {
  for (auto& entry : logs) {
    if (entry.first == tag) {
      entry.second = value;
      return;
    }
  }
  logs.emplace_back(tag, value);
}

uint32_t BigEndian32(const std::string& bytes, size_t at) {
  uint32_t v = 0;
  for (size_t i = 0; i < 4; ++i) v = (v << 8) | static_cast<uint8_t>(bytes[at + i]);
  return v;
}

}  // namespace

std::optional<TensorBoardSettings> TensorBoardSettingsFor(const TrainConfig& config) {
  if (config.logging_dir.empty()) return std::nullopt;
  if (!config.log_with.empty() && config.log_with != "tensorboard") return std::nullopt;
  TensorBoardSettings settings;
  settings.logging_dir = config.logging_dir;
  settings.log_prefix = config.log_prefix;
  if (!config.log_tracker_name.empty()) settings.tracker_name = config.log_tracker_name;
  settings.network_train_unet_only = config.network_train_unet_only;
  // train_network.py generate_step_logs tests the name as given, lower-cased.
  const std::string optimizer = absl::AsciiStrToLower(config.optimizer_type);
  settings.log_d_lr = absl::StartsWith(optimizer, "dadapt") || optimizer == "prodigy";
  return settings;
}

fs::path TensorBoardRunDir(const TensorBoardSettings& settings, std::time_t now) {
  std::tm local{};
  ::localtime_r(&now, &local);
  char stamp[32];
  std::strftime(stamp, sizeof(stamp), "%Y%m%d%H%M%S", &local);
  // train_util.py prepare_accelerator names the folder; accelerate's
  // TensorBoardTracker adds the tracker (run) name under it.
  return settings.logging_dir / absl::StrCat(settings.log_prefix, stamp) / settings.tracker_name;
}

std::string KohyaLrDescription(const std::string& group) {
  for (const Description& d : kDescriptions) {
    if (group == d.group) return d.kohya;
  }
  return group;
}

std::vector<std::pair<std::string, double>> KohyaStepScalars(const StepReport& report,
                                                             const TensorBoardSettings& settings) {
  std::vector<std::pair<std::string, double>> logs;
  Set(logs, "loss/current", report.loss);
  Set(logs, "loss/average", report.loss_avg);
  if (report.max_norm) {
    Set(logs, "max_norm/keys_scaled", static_cast<double>(report.max_norm->keys_scaled));
    Set(logs, "max_norm/max_key_norm", report.max_norm->max_key_norm);
    Set(logs, "norm/avg_key_norm", report.max_norm->average_key_norm);
  }
  // One tag per group under kohya's description; lr is what the scheduler
  // reports (get_last_lr), d*lr the adaptive optimizers' effective lr.
  for (const GroupLr& g : report.lrs) {
    const std::string desc = KohyaLrDescription(g.group);
    Set(logs, absl::StrCat("lr/", desc), g.scheduler_lr);
    if (settings.log_d_lr) Set(logs, absl::StrCat("lr/d*lr/", desc), g.lr);
  }
  // generate_step_logs's loop has a for-else whose else always runs: kohya
  // also logs lr/textencoder (the first group when the text encoder trains)
  // and lr/group<i> for the groups after it. When the text-encoder group was
  // dropped (its lr is 0) kohya writes the U-Net's lr as lr/textencoder; that
  // value is left out here rather than logged under a wrong name.
  size_t first = 0;
  if (!settings.network_train_unet_only) {
    if (!report.lrs.empty() && report.lrs[0].group == "text_encoder") {
      Set(logs, "lr/textencoder", report.lrs[0].scheduler_lr);
    }
    first = 1;
  }
  for (size_t i = first; i < report.lrs.size(); ++i) {
    Set(logs, absl::StrCat("lr/group", i), report.lrs[i].scheduler_lr);
    if (settings.log_d_lr) Set(logs, absl::StrCat("lr/d*lr/group", i), report.lrs[i].lr);
  }
  return logs;
}

absl::StatusOr<PngHeader> ReadPngHeader(const std::string& png) {
  static constexpr char kSignature[] = "\x89PNG\r\n\x1a\n";
  if (png.size() < 29 || png.compare(0, 8, kSignature, 8) != 0 || png.compare(12, 4, "IHDR") != 0) {
    return absl::InvalidArgumentError("not a PNG (no PNG signature and IHDR chunk)");
  }
  PngHeader header;
  header.width = static_cast<int32_t>(BigEndian32(png, 16));
  header.height = static_cast<int32_t>(BigEndian32(png, 20));
  switch (static_cast<uint8_t>(png[25])) {  // colour type
    case 0: header.colorspace = 1; break;
    case 4: header.colorspace = 2; break;
    case 2:
    case 3: header.colorspace = 3; break;
    case 6: header.colorspace = 4; break;
    default: return absl::InvalidArgumentError("PNG with an unknown colour type");
  }
  if (header.width <= 0 || header.height <= 0) return absl::InvalidArgumentError("PNG with an empty image");
  return header;
}

double WallTimeNow() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

absl::StatusOr<std::unique_ptr<EventFileWriter>> EventFileWriter::Open(const fs::path& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) {
    return absl::PermissionDeniedError(absl::StrCat("logging_dir: cannot create ", dir.string(), ": ", ec.message(),
                                                    "; set logging_dir to a writable folder"));
  }
  const double now = WallTimeNow();
  const fs::path path =
      dir / absl::StrFormat("events.out.tfevents.%010d.%s.%d.%d", static_cast<int64_t>(now), HostName(),
                            static_cast<int>(::getpid()), g_file_counter.fetch_add(1));
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) {
    return absl::PermissionDeniedError(
        absl::StrCat("logging_dir: cannot create ", path.string(), ": ", std::strerror(errno)));
  }
  std::unique_ptr<EventFileWriter> writer(new EventFileWriter(fd, path));
  tensorboard::Event version;
  version.set_wall_time(now);
  version.set_file_version("brain.Event:2");
  version.mutable_source_metadata()->set_writer("lorad-train");
  writer->Append(version);
  if (absl::Status s = writer->Flush(); !s.ok()) return s;
  return writer;
}

EventFileWriter::~EventFileWriter() {
  (void)Flush();  // a failure was already reported by the last Flush the owner checked
  ::close(fd_);
}

void EventFileWriter::Append(const tensorboard::Event& event) {
  if (!status_.ok()) return;
  pending_ += FrameRecord(event.SerializeAsString());
}

void EventFileWriter::AddScalar(const std::string& tag, int64_t step, double value, double wall_time) {
  tensorboard::Event event;
  event.set_wall_time(wall_time);
  event.set_step(step);
  auto* v = event.mutable_summary()->add_value();
  v->set_tag(tag);
  v->set_simple_value(static_cast<float>(value));
  Append(event);
}

absl::Status EventFileWriter::AddImage(const std::string& tag, int64_t step, const std::string& png,
                                       double wall_time) {
  auto header = ReadPngHeader(png);
  if (!header.ok()) return header.status();
  tensorboard::Event event;
  event.set_wall_time(wall_time);
  event.set_step(step);
  auto* v = event.mutable_summary()->add_value();
  v->set_tag(tag);
  auto* image = v->mutable_image();
  image->set_height(header->height);
  image->set_width(header->width);
  image->set_colorspace(header->colorspace);
  image->set_encoded_image_string(png);
  Append(event);
  return absl::OkStatus();
}

absl::Status EventFileWriter::Flush() {
  if (!status_.ok()) return status_;
  size_t done = 0;
  while (done < pending_.size()) {
    const ssize_t n = ::write(fd_, pending_.data() + done, pending_.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      status_ = absl::ResourceExhaustedError(
          absl::StrCat("TensorBoard log ", path_.string(), ": write failed: ", std::strerror(errno),
                       "; free disk space in logging_dir (training went on without the log)"));
      pending_.clear();
      return status_;
    }
    done += static_cast<size_t>(n);
  }
  pending_.clear();
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<TensorBoardObserver>> TensorBoardObserver::Create(const TensorBoardSettings& settings,
                                                                                 std::time_t now) {
  auto writer = EventFileWriter::Open(TensorBoardRunDir(settings, now));
  if (!writer.ok()) return writer.status();
  return std::unique_ptr<TensorBoardObserver>(new TensorBoardObserver(settings, std::move(*writer)));
}

void TensorBoardObserver::Keep(const absl::Status& status) {
  if (status_.ok() && !status.ok()) status_ = status;
}

void TensorBoardObserver::OnStep(const StepReport& report) {
  const double now = WallTimeNow();
  for (const auto& entry : KohyaStepScalars(report, settings_)) {
    writer_->AddScalar(entry.first, report.step, entry.second, now);
  }
  Keep(writer_->Flush());
}

void TensorBoardObserver::OnEpochEnd(int64_t epoch, double loss_avg) {
  // train_network.py: {"loss/epoch_average": ...} at step epoch + 1 (1-based);
  // kohya before v0.10 named it loss/epoch.
  writer_->AddScalar("loss/epoch_average", epoch, loss_avg, WallTimeNow());
  Keep(writer_->Flush());
}

void TensorBoardObserver::OnSample(const SampleReport& report) {
  std::ifstream in(report.path, std::ios::binary);
  if (!in) {
    Keep(absl::NotFoundError(absl::StrCat("TensorBoard log: cannot read the preview ", report.path)));
    return;
  }
  const std::string png((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const absl::Status added =
      writer_->AddImage(absl::StrCat("sample_", report.prompt_index), report.step, png, WallTimeNow());
  if (!added.ok()) {
    Keep(absl::InvalidArgumentError(absl::StrCat("TensorBoard log: preview ", report.path, ": ", added.message())));
    return;
  }
  Keep(writer_->Flush());
}

void TensorBoardObserver::OnFinish(const RunFinished& result) {
  (void)result;
  Keep(writer_->Flush());
}

}  // namespace lorad::train
