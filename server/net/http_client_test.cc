#include "server/net/http_client.h"

#include <atomic>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "server/net/test_server.h"

namespace lorad::net {
namespace {

using testing::ServeBytes;
using testing::TestRequest;
using testing::TestResponse;
using testing::TestServer;

HttpClientOptions Fast() {
  HttpClientOptions options;
  options.connect_timeout = absl::Seconds(2);
  options.request_timeout = absl::Seconds(2);
  options.stall_timeout = absl::Seconds(1);
  options.initial_backoff = absl::Milliseconds(100);
  options.max_backoff = absl::Seconds(2);
  options.max_attempts = 4;
  return options;
}

std::string Content(size_t size) {
  std::string content(size, '\0');
  for (size_t i = 0; i < size; ++i) content[i] = static_cast<char>((i * 131 + i / 7) & 0xff);
  return content;
}

std::string ReadAll(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream out;
  out << in.rdbuf();
  return out.str();
}

class HttpClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           absl::StrCat("lorad_http_", ::getpid(), "_",
                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::filesystem::path dir_;
};

TEST_F(HttpClientTest, PostsJsonWithHeadersAndReturnsTheStatus) {
  TestServer server([](const TestRequest&) {
    TestResponse response;
    response.status = 204;
    return response;
  });
  ASSERT_TRUE(server.ok());
  HttpClient client(Fast());
  CallOptions call;
  call.headers = {{"X-Lorad", "yes"}};
  auto response = client.PostJson(server.url("/hook?wait=true"), R"({"a":1})", call);
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->status, 204);
  EXPECT_EQ(response->attempts, 1);
  const auto requests = server.requests();
  ASSERT_EQ(requests.size(), 1u);
  EXPECT_EQ(requests[0].method, "POST");
  EXPECT_EQ(requests[0].target, "/hook?wait=true");
  EXPECT_EQ(requests[0].body, R"({"a":1})");
  EXPECT_EQ(requests[0].Header("Content-Type"), "application/json");
  EXPECT_EQ(requests[0].Header("X-Lorad"), "yes");
}

TEST_F(HttpClientTest, A4xxIsReturnedAtOnceNotRetried) {
  TestServer server([](const TestRequest&) {
    TestResponse response;
    response.status = 400;
    response.body = "bad";
    return response;
  });
  HttpClient client(Fast());
  auto response = client.PostJson(server.url(), "{}");
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->status, 400);
  EXPECT_EQ(response->body, "bad");
  EXPECT_EQ(server.request_count(), 1u);
}

TEST_F(HttpClientTest, Retries503WithExponentialBackoff) {
  TestServer server([](const TestRequest& request) {
    TestResponse response;
    response.status = request.index < 2 ? 503 : 200;
    return response;
  });
  HttpClient client(Fast());
  const absl::Time start = absl::Now();
  auto response = client.PostJson(server.url(), "{}");
  const absl::Duration elapsed = absl::Now() - start;
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->status, 200);
  EXPECT_EQ(response->attempts, 3);
  EXPECT_EQ(server.request_count(), 3u);
  // 100 ms then 200 ms between the attempts.
  EXPECT_GE(elapsed, absl::Milliseconds(300));
  EXPECT_LT(elapsed, absl::Seconds(3));
}

TEST_F(HttpClientTest, GivesUpAfterMaxAttemptsWithTheLast5xx) {
  TestServer server([](const TestRequest&) {
    TestResponse response;
    response.status = 502;
    return response;
  });
  HttpClient client(Fast());
  auto response = client.PostJson(server.url(), "{}");
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->status, 502);
  EXPECT_EQ(response->attempts, 4);
  EXPECT_EQ(server.request_count(), 4u);
}

TEST_F(HttpClientTest, HonoursRetryAfterOn429) {
  TestServer server([](const TestRequest& request) {
    TestResponse response;
    if (request.index == 0) {
      response.status = 429;
      response.headers.push_back({"Retry-After", "1"});
    }
    return response;
  });
  HttpClient client(Fast());
  const absl::Time start = absl::Now();
  auto response = client.PostJson(server.url(), "{}");
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->status, 200);
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(950));  // not the 100 ms backoff
}

TEST(BackoffDelayTest, DoublesCapsAndRespectsRetryAfter) {
  HttpClientOptions options;
  options.initial_backoff = absl::Seconds(1);
  options.max_backoff = absl::Seconds(10);
  EXPECT_EQ(BackoffDelay(options, 1, absl::ZeroDuration()), absl::Seconds(1));
  EXPECT_EQ(BackoffDelay(options, 2, absl::ZeroDuration()), absl::Seconds(2));
  EXPECT_EQ(BackoffDelay(options, 4, absl::ZeroDuration()), absl::Seconds(8));
  EXPECT_EQ(BackoffDelay(options, 9, absl::ZeroDuration()), absl::Seconds(10));
  EXPECT_EQ(BackoffDelay(options, 1, absl::Seconds(5)), absl::Seconds(5));
  EXPECT_EQ(BackoffDelay(options, 1, absl::Seconds(500)), absl::Seconds(10));
}

TEST_F(HttpClientTest, TimesOutOnAServerThatNeverAnswers) {
  TestServer server([](const TestRequest&) {
    TestResponse response;
    response.hang = true;
    return response;
  });
  HttpClientOptions options = Fast();
  options.request_timeout = absl::Milliseconds(300);
  options.max_attempts = 2;
  HttpClient client(options);
  const absl::Time start = absl::Now();
  auto response = client.PostJson(server.url("/slow"), "{}");
  const absl::Duration elapsed = absl::Now() - start;
  ASSERT_FALSE(response.ok());
  EXPECT_EQ(response.status().code(), absl::StatusCode::kDeadlineExceeded) << response.status();
  EXPECT_NE(response.status().message().find(server.url("/slow")), std::string::npos);
  EXPECT_NE(response.status().message().find("after 2 attempts"), std::string::npos);
  EXPECT_EQ(server.request_count(), 2u);
  EXPECT_LT(elapsed, absl::Seconds(3));
}

TEST_F(HttpClientTest, ConnectionRefusedIsUnavailableNamingTheUrl) {
  int port = 0;
  {
    TestServer closed([](const TestRequest&) { return TestResponse{}; });
    port = closed.port();
  }
  HttpClientOptions options = Fast();
  options.max_attempts = 2;
  HttpClient client(options);
  auto response = client.PostJson(absl::StrCat("http://127.0.0.1:", port, "/x"), "{}");
  ASSERT_FALSE(response.ok());
  EXPECT_EQ(response.status().code(), absl::StatusCode::kUnavailable) << response.status();
  EXPECT_NE(response.status().message().find(absl::StrCat("127.0.0.1:", port, "/x")), std::string::npos);
}

TEST_F(HttpClientTest, FollowsRedirectsAndBoundsThem) {
  const std::string content = Content(1000);
  TestServer server([&content](const TestRequest& request) {
    TestResponse response;
    if (request.target == "/a") {
      response.status = 302;
      response.headers.push_back({"Location", "/b"});
    } else if (request.target == "/b") {
      response.status = 301;
      response.headers.push_back({"Location", "/file"});
    } else if (request.target == "/loop") {
      response.status = 302;
      response.headers.push_back({"Location", "/loop"});
    } else {
      response = ServeBytes(request, content);
    }
    return response;
  });
  HttpClientOptions options = Fast();
  options.max_redirects = 3;
  HttpClient client(options);
  auto result = client.Download(server.url("/a"), dir_ / "f");
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->bytes, 1000);
  EXPECT_EQ(result->effective_url, server.url("/file"));
  EXPECT_EQ(ReadAll(dir_ / "f"), content);

  auto loop = client.Download(server.url("/loop"), dir_ / "g");
  ASSERT_FALSE(loop.ok());
  EXPECT_EQ(loop.status().code(), absl::StatusCode::kFailedPrecondition) << loop.status();
  EXPECT_NE(loop.status().message().find("/loop"), std::string::npos);
}

TEST_F(HttpClientTest, ADroppedDownloadResumesWithRange) {
  const std::string content = Content(256 * 1024);
  TestServer server([&content](const TestRequest& request) {
    TestResponse response = ServeBytes(request, content);
    if (request.index == 0) response.drop_after = static_cast<int64_t>(content.size() / 2);
    return response;
  });
  HttpClient client(Fast());
  int64_t last_done = -1, last_total = -2;
  CallOptions call;
  call.progress = [&](int64_t done, int64_t total) {
    EXPECT_GE(done, last_done);
    last_done = done;
    last_total = total;
  };
  auto result = client.Download(server.url("/model.safetensors"), dir_ / "m", call);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->bytes, static_cast<int64_t>(content.size()));
  EXPECT_EQ(result->range_resumes, 1);
  EXPECT_EQ(result->attempts, 2);
  EXPECT_EQ(ReadAll(dir_ / "m"), content);
  EXPECT_EQ(last_done, static_cast<int64_t>(content.size()));
  EXPECT_EQ(last_total, static_cast<int64_t>(content.size()));
  const auto requests = server.requests();
  ASSERT_EQ(requests.size(), 2u);
  EXPECT_EQ(requests[0].Header("Range"), "");
  EXPECT_EQ(requests[1].Header("Range"), absl::StrCat("bytes=", content.size() / 2, "-"));
}

TEST_F(HttpClientTest, AStalledDownloadIsAbandonedAndResumed) {
  const std::string content = Content(64 * 1024);
  TestServer server([&content](const TestRequest& request) {
    TestResponse response = ServeBytes(request, content);
    if (request.index == 0) response.stall_after = 10000;
    return response;
  });
  HttpClient client(Fast());  // stall_timeout 1 s
  auto result = client.Download(server.url("/m"), dir_ / "m");
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(ReadAll(dir_ / "m"), content);
  EXPECT_EQ(server.requests()[1].Header("Range"), "bytes=10000-");
}

TEST_F(HttpClientTest, APartialFileFromBeforeResumesAndAServerIgnoringRangeRestarts) {
  const std::string content = Content(5000);
  {
    std::ofstream(dir_ / "m", std::ios::binary) << content.substr(0, 1234);
  }
  TestServer ranged([&content](const TestRequest& request) { return ServeBytes(request, content); });
  HttpClient client(Fast());
  auto result = client.Download(ranged.url("/m"), dir_ / "m");
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->resumed_from, 1234);
  EXPECT_EQ(ReadAll(dir_ / "m"), content);
  EXPECT_EQ(ranged.requests()[0].Header("Range"), "bytes=1234-");

  // The whole file already there: 416 with the size = done.
  auto again = client.Download(ranged.url("/m"), dir_ / "m");
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->bytes, 5000);
  EXPECT_EQ(ReadAll(dir_ / "m"), content);

  {
    std::ofstream(dir_ / "n", std::ios::binary) << "garbage-prefix";
  }
  TestServer plain([&content](const TestRequest&) {
    TestResponse response;
    response.body = content;  // 200 whatever the Range says
    return response;
  });
  auto restarted = client.Download(plain.url("/m"), dir_ / "n");
  ASSERT_TRUE(restarted.ok()) << restarted.status();
  EXPECT_EQ(ReadAll(dir_ / "n"), content);
}

TEST_F(HttpClientTest, HttpErrorsMapToCodesAndRedactTokens) {
  TestServer server([](const TestRequest& request) {
    TestResponse response;
    response.status = absl::StrContains(request.target, "gated") ? 403 : 404;
    return response;
  });
  HttpClient client(Fast());
  auto missing = client.Download(server.url("/x.safetensors?token=SECRET123&rev=main"), dir_ / "a");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  const std::string message(missing.status().message());
  EXPECT_EQ(message.find("SECRET123"), std::string::npos) << message;
  EXPECT_NE(message.find("token=***&rev=main"), std::string::npos) << message;
  EXPECT_NE(message.find("HTTP 404"), std::string::npos) << message;
  EXPECT_EQ(server.request_count(), 1u);  // not retried

  CallOptions call;
  call.secrets = {"hf_abcdefSECRET"};
  call.headers = {{"Authorization", "Bearer hf_abcdefSECRET"}};
  auto gated = client.Download(server.url("/gated/hf_abcdefSECRET/f"), dir_ / "b", call);
  ASSERT_FALSE(gated.ok());
  EXPECT_EQ(gated.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(gated.status().message().find("hf_abcdefSECRET"), std::string::npos) << gated.status();
  EXPECT_NE(gated.status().message().find("token"), std::string::npos);
  EXPECT_EQ(server.requests().back().Header("Authorization"), "Bearer hf_abcdefSECRET");
}

TEST(RedactUrlTest, HidesCredentials) {
  EXPECT_EQ(RedactUrl("https://user:pw@host/p?a=1"), "https://***@host/p?a=1");
  EXPECT_EQ(RedactUrl("https://civitai.com/api/download/models/1?token=abc&type=Model"),
            "https://civitai.com/api/download/models/1?token=***&type=Model");
  EXPECT_EQ(RedactUrl("https://cdn/x?X-Amz-Signature=s&Expires=1&Key-Pair-Id=k#f"),
            "https://cdn/x?X-Amz-Signature=***&Expires=1&Key-Pair-Id=***#f");
  EXPECT_EQ(RedactUrl("https://discord.com/api/webhooks/1/tok3n-value", {"tok3n-value"}),
            "https://discord.com/api/webhooks/1/***");
  EXPECT_EQ(RedactUrl("http://h/a@b"), "http://h/a@b");
}

TEST_F(HttpClientTest, RefusesNonHttpUrls) {
  HttpClient client(Fast());
  EXPECT_EQ(client.PostJson("ftp://h/x", "{}").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(client.Download("file:///etc/passwd", dir_ / "x").status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(HttpClientTest, CancelEndsAStalledDownloadAndKeepsWhatArrived) {
  const std::string content = Content(50000);
  TestServer server([&content](const TestRequest& request) {
    TestResponse response = ServeBytes(request, content);
    response.stall_after = 20000;
    return response;
  });
  HttpClientOptions options = Fast();
  options.stall_timeout = absl::Seconds(30);
  HttpClient client(options);
  std::atomic<bool> stop{false};
  CallOptions call;
  call.cancel = [&stop] { return stop.load(); };
  call.progress = [&stop](int64_t done, int64_t) {
    if (done >= 20000) stop = true;
  };
  const absl::Time start = absl::Now();
  auto result = client.Download(server.url("/m"), dir_ / "m", call);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kCancelled) << result.status();
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  EXPECT_EQ(std::filesystem::file_size(dir_ / "m"), 20000u);
}

TEST_F(HttpClientTest, VerifiesTlsWithTheTestCaAndFailsWithoutIt) {
  auto ca = testing::MakeTestCa(dir_ / "ca");
  ASSERT_TRUE(ca.ok()) << ca.status();
  const std::string content = Content(100000);
  TestServer server(
      [&content](const TestRequest& request) {
        TestResponse response = ServeBytes(request, content);
        if (request.method == "GET" && request.index == 0) response.drop_after = 30000;
        return response;
      },
      &*ca);
  ASSERT_TRUE(server.ok());
  ASSERT_EQ(server.url("/m").rfind("https://", 0), 0u);

  HttpClientOptions options = Fast();
  options.ca_bundle = ca->ca_cert.string();
  HttpClient trusted(options);
  auto result = trusted.Download(server.url("/m"), dir_ / "m");
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(ReadAll(dir_ / "m"), content);
  EXPECT_EQ(result->range_resumes, 1);
  ASSERT_EQ(server.request_count(), 2u);
  EXPECT_EQ(server.requests()[1].Header("Range"), "bytes=30000-");
  auto post = trusted.PostJson(server.url("/hook"), R"({"x":1})");
  ASSERT_TRUE(post.ok()) << post.status();
  EXPECT_EQ(post->status, 200);

  HttpClient system_store(Fast());  // the test CA is not in the system store
  const size_t before = server.request_count();
  auto refused = system_store.PostJson(server.url("/hook"), "{}");
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition) << refused.status();
  EXPECT_NE(refused.status().message().find("ca_bundle"), std::string::npos);
  EXPECT_EQ(server.request_count(), before);  // no request got through
}

}  // namespace
}  // namespace lorad::net
