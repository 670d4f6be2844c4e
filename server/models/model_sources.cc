#include "server/models/model_sources.h"

#include <filesystem>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace lorad::server {
namespace {

// The host of an http(s) URL (without port or userinfo), lower-cased.
std::string HostOf(absl::string_view url) {
  absl::ConsumePrefix(&url, "http://") || absl::ConsumePrefix(&url, "https://");
  url = url.substr(0, url.find_first_of("/?#"));
  if (const size_t at = url.rfind('@'); at != absl::string_view::npos) url.remove_prefix(at + 1);
  if (absl::StartsWith(url, "[")) return std::string(url.substr(0, url.find(']') + 1));
  return absl::AsciiStrToLower(url.substr(0, url.find(':')));
}

bool IsLoopback(const std::string& host) {
  return host == "localhost" || host == "[::1]" || absl::StartsWith(host, "127.");
}

std::string PathOf(absl::string_view url) {
  absl::ConsumePrefix(&url, "http://") || absl::ConsumePrefix(&url, "https://");
  const size_t slash = url.find('/');
  if (slash == absl::string_view::npos) return "";
  url.remove_prefix(slash);
  return std::string(url.substr(0, url.find_first_of("?#")));
}

std::string LastComponent(const std::string& path) {
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

bool UnderBase(const std::string& url, std::string base) {
  while (absl::EndsWith(base, "/")) base.pop_back();
  return !base.empty() && (url == base || absl::StartsWith(url, base + "/"));
}

}  // namespace

absl::StatusOr<PullSource> ResolvePullSource(const std::string& url, const PullSourceOptions& options) {
  PullSource source;
  std::string hf_base = options.hf_base_url;
  while (absl::EndsWith(hf_base, "/")) hf_base.pop_back();
  if (absl::StartsWith(url, "hf://")) {
    // hf://ORG/REPO/PATH/TO/FILE -> <hf>/ORG/REPO/resolve/main/PATH/TO/FILE
    const std::vector<std::string> parts = absl::StrSplit(url.substr(5), '/', absl::SkipEmpty());
    if (parts.size() < 3) {
      return absl::InvalidArgumentError(absl::StrCat(
          "'", url, "' names no file: write hf://ORG/REPO/FILE, e.g. "
                    "hf://stabilityai/stable-diffusion-xl-base-1.0/sd_xl_base_1.0.safetensors"));
    }
    std::string rest;
    for (size_t i = 2; i < parts.size(); ++i) absl::StrAppend(&rest, i > 2 ? "/" : "", parts[i]);
    source.url = absl::StrCat(hf_base, "/", parts[0], "/", parts[1], "/resolve/main/", rest);
    source.kind = "huggingface";
  } else if (absl::StartsWith(url, "https://") || absl::StartsWith(url, "http://")) {
    source.url = url;
    if (UnderBase(url, hf_base) || HostOf(url) == "huggingface.co") {
      source.kind = "huggingface";
      // A page URL (…/blob/main/x) names the same file as …/resolve/main/x.
      absl::StrReplaceAll({{"/blob/", "/resolve/"}}, &source.url);
    } else if (UnderBase(url, options.civitai_base_url) || HostOf(url) == "civitai.com") {
      source.kind = "civitai";
    } else {
      source.kind = "https";
    }
    if (absl::StartsWith(url, "http://") && !IsLoopback(HostOf(url))) {
      return absl::InvalidArgumentError(absl::StrCat(
          "'", net::RedactUrl(url), "' is plain http to another machine: use https (http is only for a "
          "loopback host, e.g. a file server on the box itself)"));
    }
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "cannot pull '", net::RedactUrl(url), "': expected https://…, hf://ORG/REPO/FILE or "
        "https://civitai.com/api/download/models/ID"));
  }
  if (source.kind == "huggingface" && !options.hf_token.empty()) {
    source.headers.push_back({"Authorization", absl::StrCat("Bearer ", options.hf_token)});
    source.secrets.push_back(options.hf_token);
  }
  if (source.kind == "civitai" && !options.civitai_token.empty()) {
    // civitai's API documents both `Authorization: Bearer <key>` and ?token=.
    source.headers.push_back({"Authorization", absl::StrCat("Bearer ", options.civitai_token)});
    source.secrets.push_back(options.civitai_token);
  }
  const std::string path = PathOf(source.url);
  source.file_name = LastComponent(path);
  if (source.kind == "civitai" && absl::StrContains(path, "/api/download/models/")) {
    source.file_name = absl::StrCat("civitai-", source.file_name);
  }
  return source;
}

absl::Status ValidateModelName(const std::string& name) {
  if (name.empty() || name.size() > 100 || name.front() == '.' || name.front() == '-') {
    return absl::InvalidArgumentError(absl::StrCat(
        "model name '", name, "' must be 1-100 characters of A-Z a-z 0-9 . _ - and not start with '.' or '-'"));
  }
  for (char c : name) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-') {
      return absl::InvalidArgumentError(
          absl::StrCat("model name '", name, "' has '", std::string(1, c), "': use A-Z a-z 0-9 . _ -"));
    }
  }
  return absl::OkStatus();
}

std::string DefaultModelName(const std::string& file_name) {
  std::string stem = file_name;
  for (const char* ext : {".safetensors", ".ckpt", ".pt", ".bin"}) {
    if (absl::EndsWithIgnoreCase(stem, ext)) {
      stem.resize(stem.size() - std::string(ext).size());
      break;
    }
  }
  std::string out;
  for (char c : stem) {
    out.push_back(absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-' ? c : '_');
  }
  while (!out.empty() && (out.front() == '.' || out.front() == '-')) out.erase(out.begin());
  if (out.size() > 100) out.resize(100);
  return out.empty() ? "model" : out;
}

}  // namespace lorad::server
