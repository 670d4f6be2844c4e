#include "server/notify/http_post.h"

#include <cerrno>
#include <algorithm>
#include <cstring>
#include <vector>

#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace lorad::notify {
namespace {

constexpr size_t kMaxResponseHead = 64 * 1024;

// Owns a file descriptor.
class Socket {
 public:
  explicit Socket(int fd) : fd_(fd) {}
  Socket(const Socket&) = delete;
  Socket& operator=(const Socket&) = delete;
  ~Socket() {
    if (fd_ >= 0) ::close(fd_);
  }
  int fd() const { return fd_; }
  // Gives up ownership.
  int release() {
    const int fd = fd_;
    fd_ = -1;
    return fd;
  }

 private:
  int fd_;
};

int RemainingMs(absl::Time deadline) {
  const absl::Duration left = deadline - absl::Now();
  if (left <= absl::ZeroDuration()) return 0;
  return static_cast<int>(std::max<int64_t>(1, absl::ToInt64Milliseconds(left)));
}

// Waits for `events` on fd until the deadline; false on timeout or error.
absl::Status WaitFor(int fd, short events, absl::Time deadline, const char* what) {
  while (true) {
    const int timeout_ms = RemainingMs(deadline);
    if (timeout_ms == 0) return absl::DeadlineExceededError(absl::StrCat("timed out ", what));
    pollfd pfd{fd, events, 0};
    const int ready = ::poll(&pfd, 1, timeout_ms);
    if (ready > 0) return absl::OkStatus();
    if (ready < 0 && errno != EINTR) {
      return absl::UnavailableError(absl::StrCat(what, ": poll: ", std::strerror(errno)));
    }
  }
}

absl::StatusOr<int> Connect(const HttpUrl& url, absl::Time deadline) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* results = nullptr;
  const std::string port = absl::StrCat(url.port);
  if (int rc = ::getaddrinfo(url.host.c_str(), port.c_str(), &hints, &results); rc != 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot resolve '", url.host, "': ", ::gai_strerror(rc)));
  }
  std::string last_error = "no address";
  for (addrinfo* ai = results; ai != nullptr; ai = ai->ai_next) {
    const int fd = ::socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                            ai->ai_protocol);
    if (fd < 0) {
      last_error = std::strerror(errno);
      continue;
    }
    Socket socket(fd);
    if (::connect(fd, ai->ai_addr, ai->ai_addrlen) != 0 && errno != EINPROGRESS) {
      last_error = std::strerror(errno);
      continue;
    }
    if (absl::Status s = WaitFor(fd, POLLOUT, deadline, "connecting"); !s.ok()) {
      ::freeaddrinfo(results);
      return s;
    }
    int error = 0;
    socklen_t length = sizeof(error);
    ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length);
    if (error != 0) {
      last_error = std::strerror(error);
      continue;
    }
    ::freeaddrinfo(results);
    return socket.release();
  }
  ::freeaddrinfo(results);
  return absl::UnavailableError(absl::StrCat("cannot connect to ", url.host, ":", url.port, ": ",
                                             last_error));
}

absl::Status SendAll(int fd, const std::string& data, absl::Time deadline) {
  size_t sent = 0;
  while (sent < data.size()) {
    const ssize_t n = ::send(fd, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
    if (n > 0) {
      sent += static_cast<size_t>(n);
    } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
      if (absl::Status s = WaitFor(fd, POLLOUT, deadline, "sending"); !s.ok()) return s;
    } else {
      return absl::UnavailableError(absl::StrCat("send: ", std::strerror(errno)));
    }
  }
  return absl::OkStatus();
}

// Reads until the end of the response head (or EOF after the status line).
absl::StatusOr<std::string> ReadHead(int fd, absl::Time deadline) {
  std::string head;
  char buffer[4096];
  while (head.find("\r\n\r\n") == std::string::npos) {
    if (head.size() > kMaxResponseHead) return absl::InternalError("response head too large");
    const ssize_t n = ::recv(fd, buffer, sizeof(buffer), 0);
    if (n > 0) {
      head.append(buffer, static_cast<size_t>(n));
    } else if (n == 0) {
      if (head.find("\r\n") != std::string::npos) break;
      return absl::UnavailableError("connection closed before an HTTP response");
    } else if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
      if (absl::Status s = WaitFor(fd, POLLIN, deadline, "waiting for the response"); !s.ok()) {
        return s;
      }
    } else {
      return absl::UnavailableError(absl::StrCat("recv: ", std::strerror(errno)));
    }
  }
  return head;
}

absl::StatusOr<HttpResponse> ParseHead(const std::string& head) {
  const std::vector<absl::string_view> lines = absl::StrSplit(head, "\r\n");
  const std::vector<absl::string_view> status_parts =
      absl::StrSplit(lines.front(), ' ', absl::SkipEmpty());
  HttpResponse response;
  if (status_parts.size() < 2 || !absl::StartsWith(status_parts[0], "HTTP/") ||
      !absl::SimpleAtoi(status_parts[1], &response.status)) {
    return absl::InternalError(
        absl::StrCat("malformed HTTP status line '", std::string(lines.front()), "'"));
  }
  for (size_t i = 1; i < lines.size(); ++i) {
    const size_t colon = lines[i].find(':');
    if (colon == absl::string_view::npos) continue;
    if (absl::AsciiStrToLower(lines[i].substr(0, colon)) != "retry-after") continue;
    double seconds = 0;
    if (absl::SimpleAtod(absl::StripAsciiWhitespace(lines[i].substr(colon + 1)), &seconds) &&
        seconds > 0) {
      response.retry_after = absl::Seconds(seconds);
    }
  }
  return response;
}

}  // namespace

absl::StatusOr<HttpResponse> HttpPostJson(const HttpUrl& url, const std::string& body,
                                          absl::Time deadline) {
  auto fd = Connect(url, deadline);
  if (!fd.ok()) return fd.status();
  Socket socket(*fd);
  const bool ipv6 = url.host.find(':') != std::string::npos;
  const std::string host_header = absl::StrCat(ipv6 ? "[" : "", url.host, ipv6 ? "]" : "",
                                               url.port == 80 ? "" : absl::StrCat(":", url.port));
  const std::string request = absl::StrCat(
      "POST ", url.path, " HTTP/1.1\r\nHost: ", host_header,
      "\r\nUser-Agent: lorad\r\nContent-Type: application/json\r\nContent-Length: ",
      body.size(), "\r\nConnection: close\r\n\r\n", body);
  if (absl::Status s = SendAll(socket.fd(), request, deadline); !s.ok()) return s;
  auto head = ReadHead(socket.fd(), deadline);
  if (!head.ok()) return head.status();
  return ParseHead(*head);
}

}  // namespace lorad::notify
