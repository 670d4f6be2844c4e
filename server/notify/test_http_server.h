// A loopback HTTP server for webhook tests (unit and integration): records
// every request and answers with the status `respond` returns for the n-th
// request (0-based); -1 = never answer (a hanging webhook).
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"

namespace lorad::notify::testing {

struct RecordedPost {
  std::string request_line;
  std::string headers;
  std::string body;
};

// A loopback HTTP server that records every request and answers with the
// status `respond` returns for the n-th request (0-based); -1 = never answer.
class TestHttpServer {
 public:
  explicit TestHttpServer(std::function<int(int)> respond = [](int) { return 200; })
      : respond_(std::move(respond)) {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    ok_ = ::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
          ::listen(listen_fd_, 64) == 0;
    socklen_t length = sizeof(addr);
    ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &length);
    port_ = ntohs(addr.sin_port);
    thread_ = std::thread([this] { Serve(); });
  }
  ~TestHttpServer() {
    stop_ = true;
    thread_.join();
    for (int fd : hung_) ::close(fd);
    ::close(listen_fd_);
  }

  bool ok() const { return ok_; }
  std::string url(const std::string& path = "/hook") const {
    return absl::StrCat("http://127.0.0.1:", port_, path);
  }
  std::vector<RecordedPost> posts() const {
    absl::MutexLock lock(&mu_);
    return posts_;
  }
  std::vector<std::string> bodies() const {
    std::vector<std::string> out;
    for (const auto& post : posts()) out.push_back(post.body);
    return out;
  }
  // Waits until `count` requests arrived or `timeout_s` passed.
  bool WaitForPosts(size_t count, double timeout_s = 10) const {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
    while (std::chrono::steady_clock::now() < deadline) {
      if (posts().size() >= count) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return posts().size() >= count;
  }

 private:
  void Serve() {
    while (!stop_) {
      pollfd pfd{listen_fd_, POLLIN, 0};
      if (::poll(&pfd, 1, 20) <= 0) continue;
      const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) continue;
      HandleConnection(fd);
    }
  }

  void HandleConnection(int fd) {
    std::string data;
    char buffer[4096];
    size_t head_end = std::string::npos;
    size_t content_length = 0;
    while (true) {
      if (head_end == std::string::npos && (head_end = data.find("\r\n\r\n")) != std::string::npos) {
        const std::string lower = absl::AsciiStrToLower(data.substr(0, head_end));
        const size_t at = lower.find("content-length:");
        if (at != std::string::npos) {
          size_t end = lower.find("\r\n", at);
          absl::SimpleAtoi(absl::StripAsciiWhitespace(lower.substr(at + 15, end - at - 15)),
                           &content_length);
        }
      }
      if (head_end != std::string::npos && data.size() >= head_end + 4 + content_length) break;
      pollfd pfd{fd, POLLIN, 0};
      if (::poll(&pfd, 1, 2000) <= 0) break;
      const ssize_t n = ::recv(fd, buffer, sizeof(buffer), 0);
      if (n <= 0) break;
      data.append(buffer, static_cast<size_t>(n));
    }
    int index = 0;
    {
      absl::MutexLock lock(&mu_);
      RecordedPost post;
      const size_t line_end = data.find("\r\n");
      post.request_line = data.substr(0, line_end);
      if (head_end != std::string::npos) {
        post.headers = data.substr(line_end + 2, head_end - line_end - 2);
        post.body = data.substr(head_end + 4);
      }
      index = static_cast<int>(posts_.size());
      posts_.push_back(std::move(post));
    }
    const int status = respond_(index);
    if (status < 0) {
      hung_.push_back(fd);  // never answer; closed at destruction
      return;
    }
    const std::string response = absl::StrCat("HTTP/1.1 ", status, " X\r\nContent-Length: 0\r\n\r\n");
    ::send(fd, response.data(), response.size(), MSG_NOSIGNAL);
    ::close(fd);
  }

  std::function<int(int)> respond_;
  bool ok_ = false;
  int listen_fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread thread_;
  std::vector<int> hung_;
  mutable absl::Mutex mu_;
  std::vector<RecordedPost> posts_ ABSL_GUARDED_BY(mu_);
};

}  // namespace lorad::notify::testing
