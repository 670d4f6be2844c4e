// Where `loractl models pull URL` downloads from (issue 13): Hugging Face
// resolve URLs and hf://ORG/REPO/FILE, civitai download URLs, and plain https
// (http only to a loopback host: tests and a local file server). Tokens come
// from the daemon's config or environment and travel as an Authorization
// header, which libcurl does not forward to another host on a redirect (the
// CDN a resolve URL redirects to).
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "server/net/http_client.h"

namespace lorad::server {

struct PullSourceOptions {
  std::string hf_base_url = "https://huggingface.co";
  std::string civitai_base_url = "https://civitai.com";
  std::string hf_token;       // hf_token in lorad.toml, else HF_TOKEN
  std::string civitai_token;  // civitai_token in lorad.toml, else CIVITAI_TOKEN
};

struct PullSource {
  std::string url;         // what is fetched
  net::HttpHeaders headers;
  std::vector<std::string> secrets;  // redacted from every message
  std::string file_name;   // the last path component ("" when the URL has none)
  std::string kind;        // "huggingface" | "civitai" | "https"
};

// INVALID_ARGUMENT for an unknown scheme, an hf:// URL without a file, or
// plain http to a host that is not loopback.
absl::StatusOr<PullSource> ResolvePullSource(const std::string& url, const PullSourceOptions& options);

// A model name: 1-100 of [A-Za-z0-9._-], not starting with '.' or '-'.
absl::Status ValidateModelName(const std::string& name);

// The default name for a pulled or uploaded file: its file name without the
// extension, cleaned to the name alphabet ("civitai-<id>" for civitai).
std::string DefaultModelName(const std::string& file_name);

}  // namespace lorad::server
