#include "server/notify/webhook.h"

#include "server/net/test_server.h"

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
#include "core/base/testing/scoped_temp_dir.h"

namespace lorad::notify {
namespace {

using net::testing::TestRequest;
using net::testing::TestResponse;
using net::testing::TestServer;

// A handler answering the n-th request (0-based) with status(n); -1: never answers.
TestServer::Handler Respond(std::function<int(int)> status) {
  return [status = std::move(status)](const TestRequest& request) {
    TestResponse response;
    const int code = status(request.index);
    response.hang = code < 0;
    response.status = code < 0 ? 200 : code;
    return response;
  };
}

bool WaitForPosts(const TestServer& server, size_t count) {
  for (int i = 0; i < 1000 && server.request_count() < count; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return server.request_count() >= count;
}


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

  url = ParseHttpUrl("https://discord.com/api/webhooks/1/abc");
  ASSERT_TRUE(url.ok());
  EXPECT_TRUE(url->https);
  EXPECT_EQ(url->port, 443);
  EXPECT_EQ(url->path, "/api/webhooks/1/abc");
  EXPECT_EQ(ParseHttpUrl("ftp://x").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(ParseHttpUrl("http:///path").ok());
  EXPECT_FALSE(ParseHttpUrl("http://host:99999/").ok());
  EXPECT_FALSE(ParseHttpUrl("http://host:/").ok());
  EXPECT_FALSE(ParseHttpUrl("http://host/a b").ok());
  EXPECT_FALSE(WebhookNotifier::Create(FastOptions({"ftp://x/y"})).ok());
  WebhookOptions missing_ca = FastOptions({"https://x/y"});
  missing_ca.ca_file = "/nonexistent/ca.pem";
  EXPECT_FALSE(WebhookNotifier::Create(missing_ca).ok());
}

TEST(WebhookNotifierTest, PostsJobAndSweepEventsToTheReceiver) {
  TestServer server(Respond([](int) { return 204; }));
  auto notifier = WebhookNotifier::Create(FastOptions({server.url("/hook")}));
  ASSERT_TRUE(notifier.ok()) << notifier.status();
  for (int i = 0; i < 4; ++i) EXPECT_TRUE((*notifier)->Notify(JobEvent(i, i == 3 ? "FAILED" : "SUCCEEDED")));
  NotifyEvent sweep;
  sweep.kind = EventKind::kSweep;
  sweep.id = "s1";
  sweep.jobs_total = 4;
  EXPECT_TRUE((*notifier)->Notify(sweep));
  ASSERT_TRUE(WaitForPosts(server, 5));
  WaitUntilIdle(**notifier);
  const std::vector<TestRequest> posts = server.requests();
  ASSERT_EQ(posts.size(), 5u);
  int jobs = 0, sweeps = 0;
  for (const TestRequest& post : posts) {
    EXPECT_EQ(post.method, "POST");
    EXPECT_EQ(post.target, "/hook");
    EXPECT_EQ(post.Header("Content-Type").rfind("application/json", 0), 0u) << post.Header("Content-Type");
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
  TestServer server(Respond([](int n) { return n < 2 ? 503 : 200; }));
  auto notifier = WebhookNotifier::Create(FastOptions({server.url("/hook")}));
  ASSERT_TRUE(notifier.ok());
  const auto start = std::chrono::steady_clock::now();
  EXPECT_TRUE((*notifier)->Notify(JobEvent(7)));
  ASSERT_TRUE(WaitForPosts(server, 3));
  WaitUntilIdle(**notifier);
  const auto elapsed = std::chrono::steady_clock::now() - start;
  // Two waits: 20 ms then 40 ms.
  EXPECT_GE(elapsed, std::chrono::milliseconds(60));
  const std::vector<TestRequest> posts = server.requests();
  ASSERT_EQ(posts.size(), 3u);
  EXPECT_EQ(posts[0].body, posts[2].body);  // the same notification, resent
  const WebhookStats stats = (*notifier)->stats();
  EXPECT_EQ(stats.attempts, 3);
  EXPECT_EQ(stats.delivered, 1);
  EXPECT_EQ(stats.failed, 0);
}

TEST(WebhookNotifierTest, GivesUpAfterMaxAttemptsAndNeverRetriesClientErrors) {
  TestServer broken(Respond([](int) { return 500; }));
  TestServer gone(Respond([](int) { return 404; }));
  auto notifier = WebhookNotifier::Create(FastOptions({broken.url("/hook"), gone.url("/hook")}));
  ASSERT_TRUE(notifier.ok());
  EXPECT_TRUE((*notifier)->Notify(JobEvent(1)));
  ASSERT_TRUE(WaitForPosts(broken, 4));
  WaitUntilIdle(**notifier);
  EXPECT_EQ(broken.request_count(), 4u);  // max_attempts
  EXPECT_EQ(gone.request_count(), 1u);    // 404 is permanent
  const WebhookStats stats = (*notifier)->stats();
  EXPECT_EQ(stats.failed, 2);
  EXPECT_EQ(stats.delivered, 0);
  EXPECT_EQ(stats.attempts, 5);
}

TEST(WebhookNotifierTest, ConnectionRefusedIsRetriedThenDropped) {
  int port = 0;
  {
    TestServer closed(Respond([](int) { return 200; }));
    port = closed.port();
  }  // nothing listens on `port` any more
  auto notifier = WebhookNotifier::Create(FastOptions({absl::StrCat("http://127.0.0.1:", port, "/")}));
  ASSERT_TRUE(notifier.ok());
  EXPECT_TRUE((*notifier)->Notify(JobEvent(1)));
  WaitUntilIdle(**notifier);
  EXPECT_EQ((*notifier)->stats().attempts, 4);
  EXPECT_EQ((*notifier)->stats().failed, 1);
}

TEST(WebhookNotifierTest, AHangingWebhookNeverBlocksTheCallerOrOtherUrls) {
  TestServer hanging(Respond([](int) { return -1; }));
  TestServer healthy(Respond([](int) { return 204; }));
  WebhookOptions options = FastOptions({hanging.url("/hook"), healthy.url("/hook")});
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
  ASSERT_TRUE(WaitForPosts(healthy, 1));

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

// Issue 13: https to a local TLS receiver whose certificate a test CA signed;
// without that CA (the system store) the post is refused and never retried.
TEST(WebhookNotifierTest, PostsOverHttpsWithATestCa) {
  lorad::testing::ScopedTempDir dir("lorad_webhook_tls");
  auto ca = net::testing::MakeTestCa(dir.path() / "ca");
  ASSERT_TRUE(ca.ok()) << ca.status();
  TestServer receiver(Respond([](int) { return 204; }), &*ca);
  ASSERT_TRUE(receiver.ok());
  ASSERT_EQ(receiver.url("/hook").rfind("https://127.0.0.1:", 0), 0u);

  WebhookOptions options = FastOptions({receiver.url("/hook")});
  options.ca_file = ca->ca_cert.string();
  auto notifier = WebhookNotifier::Create(options);
  ASSERT_TRUE(notifier.ok()) << notifier.status();
  NotifyEvent event = JobEvent(3);
  event.gpu_seconds = 5400;
  event.cost = 2.25;
  EXPECT_TRUE((*notifier)->Notify(event));
  ASSERT_TRUE(WaitForPosts(receiver, 1));
  WaitUntilIdle(**notifier);
  const TestRequest post = receiver.requests().at(0);
  const nlohmann::json body = nlohmann::json::parse(post.body);
  EXPECT_EQ(body["id"], "j3");
  EXPECT_DOUBLE_EQ(body["gpu_seconds"].get<double>(), 5400);
  EXPECT_DOUBLE_EQ(body["cost"].get<double>(), 2.25);
  EXPECT_NE(body["content"].get<std::string>().find("1.50 GPU-h, cost 2.25"), std::string::npos) << body["content"];
  EXPECT_EQ((*notifier)->stats().delivered, 1);

  auto untrusting = WebhookNotifier::Create(FastOptions({receiver.url("/hook")}));
  ASSERT_TRUE(untrusting.ok());
  EXPECT_TRUE((*untrusting)->Notify(JobEvent(4)));
  WaitUntilIdle(**untrusting);
  EXPECT_EQ((*untrusting)->stats().failed, 1);
  EXPECT_EQ((*untrusting)->stats().attempts, 1);  // a TLS verification failure is not retried
  EXPECT_EQ(receiver.request_count(), 1u);        // nothing got through
}

TEST(WebhookBodyTest, ServerEventsSayWhatHappened) {
  NotifyEvent idle;
  idle.kind = EventKind::kServer;
  idle.name = "idle_command";
  idle.state = "SUCCEEDED";
  idle.reason = "idle for 20m: ran on_idle command `runpodctl stop pod x`: exit status 0";
  const nlohmann::json body = nlohmann::json::parse(WebhookBody(idle));
  EXPECT_EQ(body["event"], "server");
  EXPECT_EQ(body["name"], "idle_command");
  EXPECT_EQ(body["content"], "lorad: " + idle.reason);
  EXPECT_TRUE(body["cost"].is_null());
}

}  // namespace
}  // namespace lorad::notify
