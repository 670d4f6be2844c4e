#include "server/auth.h"

#include <string_view>

#include "absl/strings/match.h"

namespace lorad::server {
namespace {

bool ConstantTimeEquals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

// A grpc.reflection ServerReflectionResponse holding only error_response
// (field 7: ErrorResponse{error_code = 1, error_message = 2}), encoded by hand:
// the reflection protos are not installed with gRPC.
grpc::ByteBuffer ReflectionErrorReply(const grpc::Status& status) {
  std::string message = status.error_message().substr(0, 100);  // one-byte lengths below
  std::string error;
  error.push_back(0x08);
  error.push_back(static_cast<char>(status.error_code()));
  error.push_back(0x12);
  error.push_back(static_cast<char>(message.size()));
  error += message;
  std::string reply;
  reply.push_back(0x3a);
  reply.push_back(static_cast<char>(error.size()));
  reply += error;
  grpc::Slice slice(reply);
  return grpc::ByteBuffer(&slice, 1);
}

class ReflectionAuthInterceptor : public grpc::experimental::Interceptor {
 public:
  explicit ReflectionAuthInterceptor(const std::vector<std::string>* tokens) : tokens_(tokens) {}

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    using Hook = grpc::experimental::InterceptionHookPoints;
    if (methods->QueryInterceptionHookPoint(Hook::POST_RECV_INITIAL_METADATA)) {
      denied_ = CheckBearerToken(*tokens_, *methods->GetRecvInitialMetadata());
    }
    if (!denied_.ok()) {
      if (methods->QueryInterceptionHookPoint(Hook::PRE_SEND_MESSAGE)) {
        *methods->GetSerializedSendMessage() = ReflectionErrorReply(denied_);
      }
      if (methods->QueryInterceptionHookPoint(Hook::PRE_SEND_STATUS)) methods->ModifySendStatus(denied_);
    }
    methods->Proceed();
  }

 private:
  const std::vector<std::string>* tokens_;
  grpc::Status denied_;
};

class ReflectionAuthFactory : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit ReflectionAuthFactory(const std::vector<std::string>* tokens) : tokens_(tokens) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(grpc::experimental::ServerRpcInfo* info) override {
    if (tokens_->empty() || !absl::StartsWith(info->method(), "/grpc.reflection.")) return nullptr;
    return new ReflectionAuthInterceptor(tokens_);  // owned by gRPC's call
  }

 private:
  const std::vector<std::string>* tokens_;
};

}  // namespace

grpc::Status CheckBearerToken(const std::vector<std::string>& tokens,
                              const std::multimap<grpc::string_ref, grpc::string_ref>& metadata) {
  if (tokens.empty()) return grpc::Status::OK;
  auto it = metadata.find("authorization");
  if (it == metadata.end()) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        "missing bearer token: pass --token or set LORAD_TOKEN");
  }
  const std::string_view value(it->second.data(), it->second.size());
  constexpr std::string_view kPrefix = "Bearer ";
  if (value.substr(0, kPrefix.size()) == kPrefix) {
    const std::string_view token = value.substr(kPrefix.size());
    bool match = false;
    for (const auto& t : tokens) match |= ConstantTimeEquals(t, token);
    if (match) return grpc::Status::OK;
  }
  return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "invalid bearer token");
}

bool TokenAccepted(const std::vector<std::string>& tokens, std::string_view token) {
  bool match = false;
  for (const auto& t : tokens) match |= ConstantTimeEquals(t, token);
  return match;
}

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> NewReflectionAuthInterceptorFactory(
    const std::vector<std::string>* tokens) {
  return std::make_unique<ReflectionAuthFactory>(tokens);
}

}  // namespace lorad::server
