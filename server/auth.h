// Bearer-token checks: the one rule every lorad RPC and the reflection service
// follow when tokens are configured (health stays open by design).
#pragma once

#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <grpcpp/support/server_interceptor.h>

namespace lorad::server {

// OK when `tokens` is empty or the metadata's `authorization: Bearer <token>`
// matches one (compared in constant time); UNAUTHENTICATED otherwise.
grpc::Status CheckBearerToken(const std::vector<std::string>& tokens,
                              const std::multimap<grpc::string_ref, grpc::string_ref>& metadata);

// True when `token` equals one of `tokens` (constant time per comparison);
// false for an empty list (the caller decides what no tokens means). The
// dashboard's cookie and ?token= go through this.
bool TokenAccepted(const std::vector<std::string>& tokens, std::string_view token);

// An interceptor factory for the server: calls to grpc.reflection.* without a
// valid token get every response replaced by a reflection error_response and
// end UNAUTHENTICATED, so no descriptor leaves the daemon. Other methods are
// untouched (lorad's own check their token; health is open). `tokens` must
// outlive the server.
std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> NewReflectionAuthInterceptorFactory(
    const std::vector<std::string>* tokens);

}  // namespace lorad::server
