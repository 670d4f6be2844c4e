// A minimal HTTP/1.1 POST over POSIX sockets for webhooks (internal to
// lorad_notify). One request per connection (`Connection: close`), bounded by
// one deadline covering resolve, connect, send and reading the response head.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/notify/webhook.h"

namespace lorad::notify {

struct HttpResponse {
  int status = 0;
  absl::Duration retry_after = absl::ZeroDuration();  // from Retry-After (seconds form)
};

// POSTs `body` as application/json to `url`. Network failures and timeouts
// are Unavailable / DeadlineExceeded; a malformed response is Internal.
absl::StatusOr<HttpResponse> HttpPostJson(const HttpUrl& url, const std::string& body,
                                          absl::Time deadline);

}  // namespace lorad::notify
