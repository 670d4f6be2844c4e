#include "proto/event_stream.h"

#include <fcntl.h>
#include <unistd.h>

#include <thread>

#include <gtest/gtest.h>

namespace lorad::events {
namespace {

using lorad::v1::Event;

Event ProgressEvent(int64_t step) {
  Event e;
  e.set_time_unix_ms(1000 + step);
  auto* p = e.mutable_progress();
  p->set_step(step);
  p->set_total_steps(100);
  p->set_loss(0.5 / (step + 1));
  auto* lr = p->add_lr();
  lr->set_group("unet");
  lr->set_lr(1e-4);
  return e;
}

TEST(EventStreamTest, DecoderHandlesByteByByteArrival) {
  std::string framed;
  for (int i = 0; i < 5; ++i) AppendFramed(ProgressEvent(i), &framed);
  EventDecoder decoder;
  std::vector<int64_t> steps;
  for (char c : framed) {
    decoder.Append(&c, 1);
    auto next = decoder.Next();
    ASSERT_TRUE(next.ok()) << next.status();
    if (next->has_value()) steps.push_back((*next)->progress().step());
  }
  EXPECT_EQ(steps, (std::vector<int64_t>{0, 1, 2, 3, 4}));
  EXPECT_EQ(decoder.pending_bytes(), 0u);
}

TEST(EventStreamTest, RejectsOversizedAndGarbageFrames) {
  EventDecoder oversized;
  const char huge[] = {'\xff', '\xff', '\xff', '\xff', '\x7f'};  // ~34 GB length
  oversized.Append(huge, sizeof(huge));
  EXPECT_EQ(oversized.Next().status().code(), absl::StatusCode::kDataLoss);

  EventDecoder garbage;
  const char bad[] = {'\x03', '\xff', '\xff', '\xff'};  // 3 bytes that are not a message
  garbage.Append(bad, sizeof(bad));
  EXPECT_EQ(garbage.Next().status().code(), absl::StatusCode::kDataLoss);
}

TEST(EventStreamTest, PipeRoundTripWithLargeEventsAndTruncation) {
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  std::thread writer_thread([w = fds[1]] {
    EventWriter writer(w);
    for (int i = 0; i < 50; ++i) {
      Event e = ProgressEvent(i);
      if (i == 25) {
        e.clear_progress();
        e.mutable_job_started()->set_config_toml(std::string(200000, 'x'));  // > pipe buffer
      }
      ASSERT_TRUE(writer.Write(e).ok());
    }
    // A truncated frame: a length prefix promising more than follows.
    const char partial[] = {'\x10', '\x08'};
    ASSERT_EQ(write(w, partial, sizeof(partial)), 2);
    close(w);
  });
  EventReader reader(fds[0]);
  int count = 0;
  absl::Status end;
  while (true) {
    auto next = reader.Next();
    if (!next.ok()) {
      end = next.status();
      break;
    }
    if (!next->has_value()) break;
    if (count == 25) {
      EXPECT_EQ((*next)->job_started().config_toml().size(), 200000u);
    } else {
      EXPECT_EQ((*next)->progress().step(), count);
    }
    ++count;
  }
  writer_thread.join();
  close(fds[0]);
  EXPECT_EQ(count, 50);
  EXPECT_EQ(end.code(), absl::StatusCode::kDataLoss) << end;
}

TEST(EventStreamTest, WriterStampsTimeAndReportsBrokenPipe) {
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  EventWriter writer(fds[1]);
  Event e;
  e.mutable_log()->set_message("hello");
  ASSERT_TRUE(writer.Write(e).ok());
  close(fds[1]);
  EventReader reader(fds[0]);
  auto got = reader.Next();
  ASSERT_TRUE(got.ok() && got->has_value());
  EXPECT_GT((*got)->time_unix_ms(), 1600000000000);
  EXPECT_EQ((*got)->log().message(), "hello");
  EXPECT_FALSE(reader.Next()->has_value());  // clean EOF
  close(fds[0]);

  int fds2[2];
  ASSERT_EQ(pipe(fds2), 0);
  close(fds2[0]);
  signal(SIGPIPE, SIG_IGN);
  EventWriter orphan(fds2[1]);
  EXPECT_EQ(orphan.Write(e).code(), absl::StatusCode::kUnavailable);
  close(fds2[1]);
}

}  // namespace
}  // namespace lorad::events
