// A TrainObserver that writes the daemon's lorad.v1.Event messages
// (length-delimited protobuf, proto/event_stream.h) to a file descriptor:
// `lorad-train --events-fd N`.
#pragma once

#include <memory>

#include "absl/status/status.h"
#include "core/train/observer.h"

namespace lorad::events {
class EventWriter;
}

namespace lorad::train {

// Not thread-safe (the training thread reports). Write failures do not stop
// training; the first one is kept in status() (lorad-train exits with
// kExitEventsBroken after the run when it is set).
class EventsObserver : public TrainObserver {
 public:
  explicit EventsObserver(int fd);
  ~EventsObserver() override;
  void OnStart(const RunStarted& info) override;
  void OnStep(const StepReport& report) override;
  void OnCheckpoint(const CheckpointReport& report) override;
  void OnSample(const SampleReport& report) override;
  void OnWarning(const std::string& code, const std::string& message) override;
  void OnFinish(const RunFinished& result) override;
  // An INFO/ERROR log line for the daemon's record.
  void Log(bool error, const std::string& message);

  const absl::Status& status() const { return status_; }

 private:
  template <typename Fill>
  void Emit(Fill fill);
  std::unique_ptr<events::EventWriter> writer_;
  absl::Status status_;
};

}  // namespace lorad::train
