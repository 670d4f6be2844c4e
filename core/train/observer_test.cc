// One test per observer behaviour: each observer is driven on its own and its
// own output is checked (the progress bar's lines, the event stream's events,
// each listener of an ObserverList).
#include "core/train/observer.h"

#include <fcntl.h>
#include <unistd.h>

#include <fstream>
#include <functional>

#include <gtest/gtest.h>

#include "core/base/sha256.h"
#include "core/base/testing/scoped_temp_dir.h"
#include "core/train/events_observer.h"
#include "proto/event_stream.h"

namespace lorad::train {
namespace {

// Everything `drive` makes a ProgressBarObserver write (to a pipe: not a
// terminal, so each draw is one line).
std::string ProgressOutput(const std::function<void(ProgressBarObserver&)>& drive, int min_interval_ms = 0) {
  int fds[2];
  EXPECT_EQ(::pipe(fds), 0);
  {
    ProgressBarObserver bar(fds[1], min_interval_ms);
    drive(bar);
  }
  ::close(fds[1]);
  std::string text;
  char buffer[4096];
  for (ssize_t n; (n = ::read(fds[0], buffer, sizeof buffer)) > 0;) text.append(buffer, static_cast<size_t>(n));
  ::close(fds[0]);
  return text;
}

StepReport Step(int64_t step, int64_t total) {
  StepReport r;
  r.step = step;
  r.total_steps = total;
  r.epoch = 1;
  r.total_epochs = 1;
  return r;
}

TEST(ProgressBarTest, FormatsStepEpochLossLrAndEta) {
  StepReport r;
  r.step = 30;
  r.total_steps = 60;
  r.epoch = 2;
  r.total_epochs = 4;
  r.loss = 0.12345;
  r.loss_avg = 0.2;
  r.lrs = {{"unet", 1e-4}, {"text_encoder", 5e-5}};
  r.it_per_s = 2.5;
  r.eta_s = 75;
  const std::string line = ProgressBarObserver::FormatBar(r, 10);
  EXPECT_EQ(line,
            "steps 30/60 [=====>    ]  50% epoch 2/4 loss 0.1235 avg 0.2000 lr 1.0e-04/5.0e-05 2.50 it/s ETA 1:15");
}

TEST(ProgressBarTest, ShowsMaxNormPostfixWhenScaleWeightNormsIsOn) {
  StepReport r = Step(1, 2);
  r.max_norm = MaxNormReport{3, 0.5, 1.0};
  const std::string line = ProgressBarObserver::FormatBar(r, 4);
  EXPECT_NE(line.find(" keys scaled 3 avg key norm 0.5000 max 1.0000"), std::string::npos) << line;
  r.max_norm.reset();
  EXPECT_EQ(ProgressBarObserver::FormatBar(r, 4).find("keys scaled"), std::string::npos);
}

TEST(ProgressBarTest, StartPrintsTheRunLine) {
  RunStarted info;
  info.model_arch = "sdxl";
  info.device = "cpu";
  info.total_steps = 60;
  info.total_epochs = 3;
  info.num_train_images = 40;
  info.resumed_from_step = 20;
  EXPECT_EQ(ProgressOutput([&](ProgressBarObserver& bar) { bar.OnStart(info); }),
            "training sdxl on cpu: 60 steps, 3 epochs, 40 images (with repeats), resumed at step 20\n");
}

TEST(ProgressBarTest, StepPrintsTheBarAsALineToANonTerminal) {
  const StepReport r = Step(1, 1);
  EXPECT_EQ(ProgressOutput([&](ProgressBarObserver& bar) { bar.OnStep(r); }),
            ProgressBarObserver::FormatBar(r) + "\n");
}

TEST(ProgressBarTest, StepsWithinTheRedrawIntervalAreSkippedButTheLastIsDrawn) {
  const std::string text = ProgressOutput(
      [](ProgressBarObserver& bar) {
        bar.OnStep(Step(1, 3));  // drawn: nothing drawn before
        bar.OnStep(Step(2, 3));  // within the interval: skipped
        bar.OnStep(Step(3, 3));  // the last step is always drawn
      },
      /*min_interval_ms=*/60 * 60 * 1000);
  EXPECT_EQ(text, ProgressBarObserver::FormatBar(Step(1, 3)) + "\n" + ProgressBarObserver::FormatBar(Step(3, 3)) + "\n");
}

TEST(ProgressBarTest, WarningPrintsCodeAndMessage) {
  EXPECT_EQ(ProgressOutput([](ProgressBarObserver& bar) { bar.OnWarning("nan_loss", "loss is NaN"); }),
            "warning [nan_loss]: loss is NaN\n");
}

TEST(ProgressBarTest, CheckpointPrintsKindPathAndStep) {
  EXPECT_EQ(ProgressOutput([](ProgressBarObserver& bar) {
              bar.OnCheckpoint({"/out/a.safetensors", 10, 1, CheckpointKind::kLora, false});
              bar.OnCheckpoint({"/out/a-state", 10, 1, CheckpointKind::kState, false});
            }),
            "saved LoRA /out/a.safetensors (step 10)\nsaved state /out/a-state (step 10)\n");
}

TEST(ProgressBarTest, SamplePrintsPathStepAndPrompt) {
  EXPECT_EQ(ProgressOutput([](ProgressBarObserver& bar) { bar.OnSample({"/out/s.png", 5, 0, "a cat"}); }),
            "sample /out/s.png (step 5): a cat\n");
}

TEST(ProgressBarTest, FinishPrintsEachOutcome) {
  EXPECT_EQ(ProgressOutput([](ProgressBarObserver& bar) {
              bar.OnFinish({RunOutcome::kSucceeded, "", "/out/final.safetensors", 60});
            }),
            "done at step 60: /out/final.safetensors\n");
  EXPECT_EQ(ProgressOutput([](ProgressBarObserver& bar) { bar.OnFinish({RunOutcome::kCancelled, "SIGTERM", "", 7}); }),
            "cancelled at step 7: SIGTERM\n");
  EXPECT_EQ(ProgressOutput([](ProgressBarObserver& bar) {
              bar.OnFinish({RunOutcome::kFailed, "loss became NaN", "/out/last.safetensors", 1});
            }),
            "FAILED at step 1: loss became NaN (last good LoRA: /out/last.safetensors)\n");
}

// Records each report it receives, as text, into its own log (or a shared one).
struct Recording : TrainObserver {
  explicit Recording(std::string name, std::vector<std::string>* shared = nullptr)
      : name(std::move(name)), shared(shared) {}
  void Note(const std::string& what) {
    own.push_back(what);
    if (shared != nullptr) shared->push_back(name + ":" + what);
  }
  void OnStart(const RunStarted& i) override { Note("start " + std::to_string(i.total_steps)); }
  void OnStep(const StepReport& r) override { Note("step " + std::to_string(r.step)); }
  void OnEpochEnd(int64_t epoch, double) override { Note("epoch " + std::to_string(epoch)); }
  void OnCheckpoint(const CheckpointReport& r) override { Note("checkpoint " + r.path); }
  void OnSample(const SampleReport& r) override { Note("sample " + r.path); }
  void OnWarning(const std::string& code, const std::string&) override { Note("warning " + code); }
  void OnFinish(const RunFinished& r) override { Note("finish " + std::to_string(r.final_step)); }
  std::string name;
  std::vector<std::string>* shared;
  std::vector<std::string> own;
};

void DriveEveryReport(TrainObserver& o) {
  RunStarted start;
  start.total_steps = 2;
  o.OnStart(start);
  o.OnStep(Step(1, 2));
  o.OnEpochEnd(1, 0.5);
  o.OnCheckpoint({"a.safetensors", 1, 1, CheckpointKind::kLora, false});
  o.OnSample({"s.png", 1, 0, "p"});
  o.OnWarning("w", "m");
  o.OnFinish({RunOutcome::kSucceeded, "", "a.safetensors", 2});
}

TEST(ObserverListTest, EachObserverReceivesEveryReportOnce) {
  Recording a("a"), b("b");
  ObserverList list;
  list.Add(&a);
  list.Add(&b);
  DriveEveryReport(list);
  const std::vector<std::string> want = {"start 2",   "step 1",  "epoch 1", "checkpoint a.safetensors",
                                         "sample s.png", "warning w", "finish 2"};
  EXPECT_EQ(a.own, want);
  EXPECT_EQ(b.own, want);
}

TEST(ObserverListTest, ObserversAreCalledInTheOrderTheyWereAdded) {
  std::vector<std::string> shared;
  Recording first("first", &shared), second("second", &shared);
  ObserverList list;
  list.Add(&first);
  list.Add(&second);
  list.OnWarning("w", "m");
  list.OnStep(Step(1, 1));
  EXPECT_EQ(shared, (std::vector<std::string>{"first:warning w", "second:warning w", "first:step 1", "second:step 1"}));
}

// Everything an EventsObserver wrote through `drive`, decoded.
std::vector<lorad::v1::Event> EventsOutput(const std::function<void(EventsObserver&)>& drive) {
  int fds[2];
  EXPECT_EQ(::pipe(fds), 0);
  {
    EventsObserver events(fds[1]);
    drive(events);
    EXPECT_TRUE(events.status().ok()) << events.status();
  }
  ::close(fds[1]);
  std::vector<lorad::v1::Event> out;
  events::EventReader reader(fds[0]);
  for (;;) {
    auto next = reader.Next();
    EXPECT_TRUE(next.ok()) << next.status();
    if (!next.ok() || !next->has_value()) break;
    out.push_back(**next);
  }
  ::close(fds[0]);
  return out;
}

TEST(EventsObserverTest, StartStepWarningLogAndFinishBecomeTheirEvents) {
  RunStarted start;
  start.total_steps = 60;
  start.total_epochs = 3;
  start.model_arch = "sd15";
  start.hyperparameters = {{"network_dim", "8"}};
  StepReport step = Step(4, 60);
  step.loss = 0.25;
  step.lrs = {{"unet", 1e-4}};
  const auto events = EventsOutput([&](EventsObserver& o) {
    o.OnStart(start);
    o.OnStep(step);
    o.OnWarning("nan_loss", "loss is NaN");
    o.Log(/*error=*/true, "disk full");
    o.OnFinish({RunOutcome::kCancelled, "SIGTERM", "", 4});
  });
  ASSERT_EQ(events.size(), 5u);
  ASSERT_TRUE(events[0].has_job_started());
  EXPECT_EQ(events[0].job_started().total_steps(), 60);
  EXPECT_EQ(events[0].job_started().model_arch(), "sd15");
  EXPECT_EQ(events[0].job_started().hyperparameters().at("network_dim"), "8");
  ASSERT_TRUE(events[1].has_progress());
  EXPECT_EQ(events[1].progress().step(), 4);
  EXPECT_DOUBLE_EQ(events[1].progress().loss(), 0.25);
  ASSERT_EQ(events[1].progress().lr_size(), 1);
  EXPECT_EQ(events[1].progress().lr(0).group(), "unet");
  ASSERT_TRUE(events[2].has_warning());
  EXPECT_EQ(events[2].warning().code(), "nan_loss");
  EXPECT_EQ(events[2].warning().message(), "loss is NaN");
  ASSERT_TRUE(events[3].has_log());
  EXPECT_EQ(events[3].log().level(), lorad::v1::Log::ERROR);
  EXPECT_EQ(events[3].log().message(), "disk full");
  ASSERT_TRUE(events[4].has_finished());
  EXPECT_EQ(events[4].finished().status(), lorad::v1::Finished::CANCELLED);
  EXPECT_EQ(events[4].finished().reason(), "SIGTERM");
  EXPECT_EQ(events[4].finished().final_step(), 4);
  for (const auto& e : events) EXPECT_GT(e.time_unix_ms(), 0);
}

TEST(EventsObserverTest, CheckpointAndSampleCarryTheFilesHashAndSize) {
  const lorad::testing::ScopedTempDir dir("lorad_observer_test");
  const auto lora = dir / "a.safetensors";
  const auto png = dir / "s.png";
  std::ofstream(lora, std::ios::binary) << "lora bytes";
  std::ofstream(png, std::ios::binary) << "png";
  const auto events = EventsOutput([&](EventsObserver& o) {
    o.OnCheckpoint({lora.string(), 10, 2, CheckpointKind::kLora, true});
    o.OnSample({png.string(), 10, 1, "a cat"});
  });
  ASSERT_EQ(events.size(), 2u);
  ASSERT_TRUE(events[0].has_checkpoint());
  const auto& c = events[0].checkpoint();
  EXPECT_EQ(c.path(), lora.string());
  EXPECT_EQ(c.kind(), lorad::v1::ARTIFACT_KIND_LORA);
  EXPECT_EQ(c.sha256(), *Sha256File(lora));
  EXPECT_EQ(c.bytes(), 10);
  EXPECT_TRUE(c.is_final());
  ASSERT_TRUE(events[1].has_sample());
  EXPECT_EQ(events[1].sample().prompt(), "a cat");
  EXPECT_EQ(events[1].sample().prompt_index(), 1);
  EXPECT_EQ(events[1].sample().sha256(), *Sha256File(png));
}

TEST(EventsObserverTest, AWriteFailureIsKeptInStatus) {
  const int fd = ::open("/dev/full", O_WRONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  EventsObserver events(fd);
  EXPECT_TRUE(events.status().ok());
  events.OnWarning("w", "m");
  EXPECT_FALSE(events.status().ok());
  ::close(fd);
}

TEST(CancellationTokenTest, CarriesSaveStateRequest) {
  CancellationToken token;
  EXPECT_FALSE(token.cancelled());
  token.Cancel(false);
  EXPECT_TRUE(token.cancelled());
  EXPECT_FALSE(token.save_state_requested());
  CancellationToken by_default;
  by_default.Cancel();
  EXPECT_TRUE(by_default.save_state_requested());
}

}  // namespace
}  // namespace lorad::train
