// Loopback HTTP and HTTPS servers for tests (HTTP client unit tests, model
// pulls through a real daemon, webhooks over https). Each connection is
// answered on its own thread by a handler; a response can be cut off after N
// body bytes (a dropped connection), stall after N bytes with the connection
// kept open, or never come. ServeBytes implements Range requests. MakeTestCa
// writes a throwaway CA and a server certificate for 127.0.0.1 / localhost
// with the openssl command-line tool. Test-only: links OpenSSL.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace lorad::net::testing {

struct TestRequest {
  int index = 0;  // 0-based arrival order
  std::string method;
  std::string target;   // path and query
  std::string headers;  // raw header lines
  std::string body;
  // The value of header `name` (case-insensitive), empty when absent.
  std::string Header(absl::string_view name) const {
    for (absl::string_view line : absl::StrSplit(headers, "\r\n")) {
      const size_t colon = line.find(':');
      if (colon != absl::string_view::npos && absl::EqualsIgnoreCase(line.substr(0, colon), name)) {
        return std::string(absl::StripAsciiWhitespace(line.substr(colon + 1)));
      }
    }
    return "";
  }
};

struct TestResponse {
  int status = 200;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
  int64_t drop_after = -1;   // close the connection after this many body bytes
  int64_t stall_after = -1;  // send this many body bytes, then nothing (connection open)
  bool hang = false;         // read the request, never answer
  absl::Duration delay = absl::ZeroDuration();  // before answering
};

// `content` as a file: a GET with "Range: bytes=N-" gets 206 and the rest.
inline TestResponse ServeBytes(const TestRequest& request, const std::string& content) {
  TestResponse response;
  response.headers.push_back({"Accept-Ranges", "bytes"});
  const std::string range_header = request.Header("Range");
  absl::string_view range = range_header;
  int64_t start = 0;
  if (absl::ConsumePrefix(&range, "bytes=") && absl::ConsumeSuffix(&range, "-") &&
      absl::SimpleAtoi(range, &start)) {
    if (start >= static_cast<int64_t>(content.size())) {
      response.status = 416;
      response.headers.push_back({"Content-Range", absl::StrCat("bytes */", content.size())});
      return response;
    }
    response.status = 206;
    response.headers.push_back({"Content-Range", absl::StrCat("bytes ", start, "-", content.size() - 1,
                                                              "/", content.size())});
    response.body = content.substr(static_cast<size_t>(start));
    return response;
  }
  response.body = content;
  return response;
}

struct TestCa {
  std::filesystem::path ca_cert;      // PEM: give to the client as its CA bundle
  std::filesystem::path server_cert;  // PEM, for CN=localhost, SAN localhost + 127.0.0.1
  std::filesystem::path server_key;
};

// Generates the CA and server certificate under `dir` with `openssl`.
inline absl::StatusOr<TestCa> MakeTestCa(const std::filesystem::path& dir) {
  std::filesystem::create_directories(dir);
  TestCa ca{dir / "ca.pem", dir / "server.pem", dir / "server.key"};
  const std::string d = dir.string();
  const std::string ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
  const std::string script = absl::StrCat(
      "set -e; cd '", d, "'; ",
      "printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\nbasicConstraints=CA:FALSE\\n' > ext.cnf; ",
      "openssl req -x509 ", ec, " -keyout ca.key -out ca.pem -days 2 -subj '/CN=lorad test CA'; ",
      "openssl req ", ec, " -keyout server.key -out server.csr -subj '/CN=localhost'; ",
      "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem ",
      "-days 2 -extfile ext.cnf");
  const std::string command = absl::StrCat("( ", script, " ) > '", d, "/openssl.log' 2>&1");
  if (std::system(command.c_str()) != 0) {
    return absl::InternalError(absl::StrCat("openssl failed; see ", d, "/openssl.log"));
  }
  return ca;
}

// Thread-safe for its accessors; the handler runs on connection threads.
class TestServer {
 public:
  using Handler = std::function<TestResponse(const TestRequest&)>;

  // `tls`: serve https with this certificate and key.
  explicit TestServer(Handler handler, const TestCa* tls = nullptr) : handler_(std::move(handler)) {
    ::signal(SIGPIPE, SIG_IGN);  // a client that hangs up must not end the test
    if (tls != nullptr) {
      ctx_ = SSL_CTX_new(TLS_server_method());
      ok_ = ctx_ != nullptr &&
            SSL_CTX_use_certificate_chain_file(ctx_, tls->server_cert.c_str()) == 1 &&
            SSL_CTX_use_PrivateKey_file(ctx_, tls->server_key.c_str(), SSL_FILETYPE_PEM) == 1;
      if (!ok_) return;
    }
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ok_ = ::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
          ::listen(listen_fd_, 64) == 0;
    socklen_t length = sizeof(addr);
    ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &length);
    port_ = ntohs(addr.sin_port);
    accept_thread_ = std::thread([this] { AcceptLoop(); });
  }
  TestServer(const TestServer&) = delete;
  TestServer& operator=(const TestServer&) = delete;
  ~TestServer() {
    stop_ = true;
    if (accept_thread_.joinable()) accept_thread_.join();
    std::vector<std::thread> threads;
    {
      absl::MutexLock lock(&mu_);
      threads.swap(connections_);
    }
    for (std::thread& thread : threads) thread.join();
    if (listen_fd_ >= 0) ::close(listen_fd_);
    if (ctx_ != nullptr) SSL_CTX_free(ctx_);
  }

  bool ok() const { return ok_; }
  int port() const { return port_; }
  std::string url(const std::string& path = "/") const {
    return absl::StrCat(ctx_ != nullptr ? "https" : "http", "://127.0.0.1:", port_, path);
  }
  std::vector<TestRequest> requests() const {
    absl::MutexLock lock(&mu_);
    return requests_;
  }
  size_t request_count() const {
    absl::MutexLock lock(&mu_);
    return requests_.size();
  }

 private:
  // One accepted connection, plain or TLS.
  class Connection {
   public:
    Connection(int fd, SSL* ssl) : fd_(fd), ssl_(ssl) {}
    ~Connection() {
      if (ssl_ != nullptr) SSL_free(ssl_);
      ::close(fd_);
    }
    ssize_t Read(char* buffer, size_t size) {
      if (ssl_ == nullptr) return ::recv(fd_, buffer, size, 0);
      const int n = SSL_read(ssl_, buffer, static_cast<int>(size));
      return n > 0 ? n : -1;
    }
    bool Write(const char* data, size_t size) {
      size_t done = 0;
      while (done < size) {
        const ssize_t n = ssl_ == nullptr
                              ? ::send(fd_, data + done, size - done, MSG_NOSIGNAL)
                              : SSL_write(ssl_, data + done, static_cast<int>(size - done));
        if (n <= 0) return false;
        done += static_cast<size_t>(n);
      }
      return true;
    }
    // Sends a TLS close_notify; then the destructor closes the socket.
    void Shutdown() {
      if (ssl_ != nullptr) SSL_shutdown(ssl_);
    }
    int fd() const { return fd_; }

   private:
    int fd_;
    SSL* ssl_;
  };

  void AcceptLoop() {
    while (!stop_) {
      pollfd pfd{listen_fd_, POLLIN, 0};
      if (::poll(&pfd, 1, 20) <= 0) continue;
      const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) continue;
      absl::MutexLock lock(&mu_);
      connections_.emplace_back([this, fd] { Handle(fd); });
    }
  }

  // Waits until the server stops (a hung or stalled connection).
  void HoldOpen() {
    while (!stop_) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }

  void Handle(int fd) {
    timeval timeout{5, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
    SSL* ssl = nullptr;
    if (ctx_ != nullptr) {
      ssl = SSL_new(ctx_);
      SSL_set_fd(ssl, fd);
    }
    Connection connection(fd, ssl);
    if (ssl != nullptr && SSL_accept(ssl) != 1) return;  // e.g. the client refused our certificate

    std::string data;
    char buffer[8192];
    size_t head_end = std::string::npos;
    size_t content_length = 0;
    while (true) {
      if (head_end == std::string::npos && (head_end = data.find("\r\n\r\n")) != std::string::npos) {
        TestRequest probe;
        probe.headers = data.substr(0, head_end);
        absl::SimpleAtoi(probe.Header("Content-Length"), &content_length);
      }
      if (head_end != std::string::npos && data.size() >= head_end + 4 + content_length) break;
      const ssize_t n = connection.Read(buffer, sizeof(buffer));
      if (n <= 0) return;
      data.append(buffer, static_cast<size_t>(n));
    }
    TestRequest request;
    const size_t line_end = data.find("\r\n");
    const std::vector<std::string> parts = absl::StrSplit(data.substr(0, line_end), ' ');
    if (parts.size() >= 2) {
      request.method = parts[0];
      request.target = parts[1];
    }
    request.headers = data.substr(line_end + 2, head_end > line_end + 2 ? head_end - line_end - 2 : 0);
    request.body = data.substr(head_end + 4);
    {
      absl::MutexLock lock(&mu_);
      request.index = static_cast<int>(requests_.size());
      requests_.push_back(request);
    }
    const TestResponse response = handler_(request);
    if (response.delay > absl::ZeroDuration()) {
      const absl::Time until = absl::Now() + response.delay;
      while (!stop_ && absl::Now() < until) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    if (response.hang) {
      HoldOpen();
      return;
    }
    std::string head = absl::StrCat("HTTP/1.1 ", response.status, " X\r\nConnection: close\r\n");
    for (const auto& header : response.headers) absl::StrAppend(&head, header.first, ": ", header.second, "\r\n");
    absl::StrAppend(&head, "Content-Length: ", response.body.size(), "\r\n\r\n");
    if (!connection.Write(head.data(), head.size())) return;
    if (request.method == "HEAD") return;
    size_t send = response.body.size();
    if (response.drop_after >= 0) send = std::min<size_t>(send, static_cast<size_t>(response.drop_after));
    if (response.stall_after >= 0) send = std::min<size_t>(send, static_cast<size_t>(response.stall_after));
    if (!connection.Write(response.body.data(), send)) return;
    if (response.stall_after >= 0 && send < response.body.size()) {
      HoldOpen();
      return;
    }
    if (response.drop_after >= 0 && send < response.body.size()) {
      // The connection ends short of Content-Length (no TLS close_notify);
      // a plain FIN, so every byte written so far still arrives.
      return;
    }
    connection.Shutdown();
  }

  Handler handler_;
  SSL_CTX* ctx_ = nullptr;
  bool ok_ = false;
  int listen_fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread accept_thread_;
  mutable absl::Mutex mu_;
  std::vector<std::thread> connections_ ABSL_GUARDED_BY(mu_);
  std::vector<TestRequest> requests_ ABSL_GUARDED_BY(mu_);
};

}  // namespace lorad::net::testing
