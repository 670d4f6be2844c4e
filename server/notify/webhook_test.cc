#include "server/notify/webhook.h"

#include "server/notify/test_http_server.h"

#include <atomic>
#include <chrono>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"

namespace lorad::notify {
namespace {

using testing::RecordedPost;
using testing::TestHttpServer;


WebhookOptions FastOptions(std::vector<std::string> urls) {
  WebhookOptions options;
  options.urls = std::move(urls);
  options.initial_backoff = absl::Milliseconds(20);
  options.max_backoff = absl::Milliseconds(200);
  options.attempt_timeout = absl::Seconds(2);
  options.max_attempts = 4;
  return options;
}

NotifyEvent JobEvent(int i, const std::string& state = "SUCCEEDED") {
  NotifyEvent event;
  event.kind = EventKind::kJob;
  event.id = absl::StrCat("j", i);
  event.name = absl::StrCat("ds-cats_lr-", i, "e-4");
  event.state = state;
  event.final_loss = 0.125 + i;
  event.lora_path = absl::StrCat("/out/j", i, ".safetensors");
  event.sweep_id = "s1";
  return event;
}

void WaitUntilIdle(const WebhookNotifier& notifier) {
  for (int i = 0; i < 1000 && notifier.stats().pending > 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

TEST(WebhookBodyTest, CarriesContentAndStructuredFields) {
  const nlohmann::json job = nlohmann::json::parse(WebhookBody(JobEvent(1)));
  EXPECT_EQ(job["event"], "job");
  EXPECT_EQ(job["id"], "j1");
  EXPECT_EQ(job["state"], "SUCCEEDED");
  EXPECT_DOUBLE_EQ(job["final_loss"].get<double>(), 1.125);
  EXPECT_EQ(job["lora_path"], "/out/j1.safetensors");
  EXPECT_EQ(job["content"], "lorad: job 'ds-cats_lr-1e-4' (j1) SUCCEEDED, final loss 1.1250, "
                            "LoRA /out/j1.safetensors");
  EXPECT_EQ(job["text"], job["content"]);

  NotifyEvent failed = JobEvent(2, "FAILED");
  failed.final_loss.reset();
  failed.lora_path.clear();
  failed.reason = "worker exited with signal 9";
  const nlohmann::json failed_json = nlohmann::json::parse(WebhookBody(failed));
  EXPECT_TRUE(failed_json["final_loss"].is_null());
  EXPECT_NE(failed_json["content"].get<std::string>().find("FAILED: worker exited with signal 9"),
            std::string::npos);

  NotifyEvent sweep;
  sweep.kind = EventKind::kSweep;
  sweep.id = "s1";
  sweep.name = "night";
  sweep.state = "FINISHED";
  sweep.jobs_total = 4;
  sweep.jobs_succeeded = 3;
  sweep.jobs_failed = 1;
  sweep.reason = std::string(5000, 'x') + "\xff";  // long and not UTF-8
  const nlohmann::json sweep_json = nlohmann::json::parse(WebhookBody(sweep));
  EXPECT_EQ(sweep_json["event"], "sweep");
  EXPECT_EQ(sweep_json["jobs_failed"], 1);
  EXPECT_LE(sweep_json["content"].get<std::string>().size(), 2000u);
  EXPECT_EQ(sweep_json["content"].get<std::string>().rfind("lorad: sweep 'night' (s1) FINISHED: "
                                                          "3/4 jobs succeeded, 1 failed", 0), 0u);
}

TEST(ParseHttpUrlTest, AcceptsHttpAndExplainsWhatIsNot) {
  auto url = ParseHttpUrl("http://example.com/api/webhooks/1/abc?wait=true");
  ASSERT_TRUE(url.ok());
  EXPECT_EQ(url->host, "example.com");
  EXPECT_EQ(url->port, 80);
  EXPECT_EQ(url->path, "/api/webhooks/1/abc?wait=true");
  url = ParseHttpUrl("http://127.0.0.1:8080");
  ASSERT_TRUE(url.ok());
  EXPECT_EQ(url->port, 8080);
  EXPECT_EQ(url->path, "/");
  url = ParseHttpUrl("http://[::1]:9000/x");
  ASSERT_TRUE(url.ok());
  EXPECT_EQ(url->host, "::1");
  EXPECT_EQ(url->port, 9000);

  EXPECT_EQ(ParseHttpUrl("https://discord.com/api/webhooks/1").status().code(),
            absl::StatusCode::kUnimplemented);
  EXPECT_EQ(ParseHttpUrl("ftp://x").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(ParseHttpUrl("http:///path").ok());
  EXPECT_FALSE(ParseHttpUrl("http://host:99999/").ok());
  EXPECT_FALSE(ParseHttpUrl("http://host:/").ok());
  EXPECT_FALSE(ParseHttpUrl("http://host/a b").ok());
  EXPECT_FALSE(WebhookNotifier::Create(FastOptions({"https://x/y"})).ok());
}

TEST(WebhookNotifierTest, PostsJobAndSweepEventsToTheReceiver) {
  TestHttpServer server([](int) { return 204; });
  auto notifier = WebhookNotifier::Create(FastOptions({server.url()}));
  ASSERT_TRUE(notifier.ok()) << notifier.status();
  for (int i = 0; i < 4; ++i) EXPECT_TRUE((*notifier)->Notify(JobEvent(i, i == 3 ? "FAILED" : "SUCCEEDED")));
  NotifyEvent sweep;
  sweep.kind = EventKind::kSweep;
  sweep.id = "s1";
  sweep.jobs_total = 4;
  EXPECT_TRUE((*notifier)->Notify(sweep));
  ASSERT_TRUE(server.WaitForPosts(5));
  WaitUntilIdle(**notifier);
  const std::vector<RecordedPost> posts = server.posts();
  ASSERT_EQ(posts.size(), 5u);
  int jobs = 0, sweeps = 0;
  for (const RecordedPost& post : posts) {
    EXPECT_EQ(post.request_line, "POST /hook HTTP/1.1");
    EXPECT_NE(absl::AsciiStrToLower(post.headers).find("content-type: application/json"),
              std::string::npos);
    const nlohmann::json body = nlohmann::json::parse(post.body);
    (body["event"] == "job" ? jobs : sweeps)++;
    EXPECT_FALSE(body["content"].get<std::string>().empty());
  }
  EXPECT_EQ(jobs, 4);
  EXPECT_EQ(sweeps, 1);
  const WebhookStats stats = (*notifier)->stats();
  EXPECT_EQ(stats.delivered, 5);
  EXPECT_EQ(stats.attempts, 5);
  EXPECT_EQ(stats.failed, 0);
}

TEST(WebhookNotifierTest, RetriesWithBackoffUntilTheReceiverRecovers) {
  TestHttpServer server([](int n) { return n < 2 ? 503 : 200; });
  auto notifier = WebhookNotifier::Create(FastOptions({server.url()}));
  ASSERT_TRUE(notifier.ok());
  const auto start = std::chrono::steady_clock::now();
  EXPECT_TRUE((*notifier)->Notify(JobEvent(7)));
  ASSERT_TRUE(server.WaitForPosts(3));
  WaitUntilIdle(**notifier);
  const auto elapsed = std::chrono::steady_clock::now() - start;
  // Two waits: 20 ms then 40 ms.
  EXPECT_GE(elapsed, std::chrono::milliseconds(60));
  const std::vector<RecordedPost> posts = server.posts();
  ASSERT_EQ(posts.size(), 3u);
  EXPECT_EQ(posts[0].body, posts[2].body);  // the same notification, resent
  const WebhookStats stats = (*notifier)->stats();
  EXPECT_EQ(stats.attempts, 3);
  EXPECT_EQ(stats.delivered, 1);
  EXPECT_EQ(stats.failed, 0);
}

TEST(WebhookNotifierTest, GivesUpAfterMaxAttemptsAndNeverRetriesClientErrors) {
  TestHttpServer broken([](int) { return 500; });
  TestHttpServer gone([](int) { return 404; });
  auto notifier = WebhookNotifier::Create(FastOptions({broken.url(), gone.url()}));
  ASSERT_TRUE(notifier.ok());
  EXPECT_TRUE((*notifier)->Notify(JobEvent(1)));
  ASSERT_TRUE(broken.WaitForPosts(4));
  WaitUntilIdle(**notifier);
  EXPECT_EQ(broken.posts().size(), 4u);  // max_attempts
  EXPECT_EQ(gone.posts().size(), 1u);    // 404 is permanent
  const WebhookStats stats = (*notifier)->stats();
  EXPECT_EQ(stats.failed, 2);
  EXPECT_EQ(stats.delivered, 0);
  EXPECT_EQ(stats.attempts, 5);
}

TEST(WebhookNotifierTest, ConnectionRefusedIsRetriedThenDropped) {
  int port = 0;
  {
    TestHttpServer closed([](int) { return 200; });
    port = ParseHttpUrl(closed.url())->port;
  }  // nothing listens on `port` any more
  auto notifier = WebhookNotifier::Create(FastOptions({absl::StrCat("http://127.0.0.1:", port, "/")}));
  ASSERT_TRUE(notifier.ok());
  EXPECT_TRUE((*notifier)->Notify(JobEvent(1)));
  WaitUntilIdle(**notifier);
  EXPECT_EQ((*notifier)->stats().attempts, 4);
  EXPECT_EQ((*notifier)->stats().failed, 1);
}

TEST(WebhookNotifierTest, AHangingWebhookNeverBlocksTheCallerOrOtherUrls) {
  TestHttpServer hanging([](int) { return -1; });
  TestHttpServer healthy([](int) { return 204; });
  WebhookOptions options = FastOptions({hanging.url(), healthy.url()});
  options.attempt_timeout = absl::Milliseconds(300);
  options.queue_capacity = 8;
  auto notifier = WebhookNotifier::Create(options);
  ASSERT_TRUE(notifier.ok());

  const auto start = std::chrono::steady_clock::now();
  int refused = 0;
  for (int i = 0; i < 50; ++i) refused += (*notifier)->Notify(JobEvent(i)) ? 0 : 1;
  const auto notify_time = std::chrono::steady_clock::now() - start;
  // 50 calls while the first delivery hangs: each only queues (generous bound).
  EXPECT_LT(notify_time, std::chrono::milliseconds(250));
  EXPECT_GT(refused, 0);
  EXPECT_GT((*notifier)->stats().dropped, 0);

  // The healthy URL still gets its queued posts while the other one times out.
  ASSERT_TRUE(healthy.WaitForPosts(1));

  // Shutdown honours the drain bound even though one receiver never answers.
  const auto shutdown_start = std::chrono::steady_clock::now();
  (*notifier)->Shutdown(absl::Milliseconds(200));
  EXPECT_LT(std::chrono::steady_clock::now() - shutdown_start, std::chrono::seconds(2));
  const WebhookStats stats = (*notifier)->stats();
  EXPECT_EQ(stats.pending, 0);
  EXPECT_GT(stats.failed, 0);
  EXPECT_FALSE((*notifier)->Notify(JobEvent(99)));  // after shutdown: refused, not queued
}

TEST(WebhookNotifierTest, NoUrlsAcceptsAndDiscards) {
  auto notifier = WebhookNotifier::Create(WebhookOptions{});
  ASSERT_TRUE(notifier.ok());
  EXPECT_TRUE((*notifier)->Notify(JobEvent(1)));
  EXPECT_EQ((*notifier)->stats().attempts, 0);
}

}  // namespace
}  // namespace lorad::notify
