// A loopback HTTP server for webhook tests: records every request body and
// answers 200. One connection at a time (webhook posts are sequential).
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"

namespace lorad::tests {

class HttpReceiver {
 public:
  HttpReceiver() {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ok_ = ::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
          ::listen(listen_fd_, 64) == 0;
    socklen_t length = sizeof(addr);
    ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &length);
    port_ = ntohs(addr.sin_port);
    thread_ = std::thread([this] { Serve(); });
  }
  ~HttpReceiver() {
    stop_ = true;
    thread_.join();
    ::close(listen_fd_);
  }
  bool ok() const { return ok_; }
  std::string url() const { return absl::StrCat("http://127.0.0.1:", port_, "/hook"); }
  std::vector<std::string> bodies() const {
    absl::MutexLock lock(&mu_);
    return bodies_;
  }
  // Waits until at least `count` posts arrived or `timeout_s` passed.
  bool WaitFor(size_t count, double timeout_s) const {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
    while (std::chrono::steady_clock::now() < deadline) {
      if (bodies().size() >= count) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return bodies().size() >= count;
  }

 private:
  void Serve() {
    while (!stop_) {
      pollfd pfd{listen_fd_, POLLIN, 0};
      if (::poll(&pfd, 1, 20) <= 0) continue;
      const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd >= 0) Handle(fd);
    }
  }
  void Handle(int fd) {
    std::string data;
    char buffer[4096];
    size_t head_end = std::string::npos;
    size_t content_length = 0;
    while (true) {
      if (head_end == std::string::npos && (head_end = data.find("\r\n\r\n")) != std::string::npos) {
        const std::string lower = absl::AsciiStrToLower(data.substr(0, head_end));
        const size_t at = lower.find("content-length:");
        if (at != std::string::npos) {
          const size_t end = lower.find("\r\n", at);
          (void)absl::SimpleAtoi(absl::StripAsciiWhitespace(lower.substr(at + 15, end - at - 15)),
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
    if (head_end != std::string::npos) {
      absl::MutexLock lock(&mu_);
      bodies_.push_back(data.substr(head_end + 4));
    }
    const std::string response = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    ::send(fd, response.data(), response.size(), MSG_NOSIGNAL);
    ::close(fd);
  }

  int listen_fd_ = -1;
  int port_ = 0;
  bool ok_ = false;
  std::atomic<bool> stop_{false};
  std::thread thread_;
  mutable absl::Mutex mu_;
  std::vector<std::string> bodies_ ABSL_GUARDED_BY(mu_);
};

}  // namespace lorad::tests
