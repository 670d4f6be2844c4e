// The dashboard's files (server/web/), compiled into lorad at build time by
// server/web/embed.cmake: no files to install, no build step, no CDN.
#pragma once

#include <string_view>

namespace lorad::server {

struct WebAsset {
  std::string_view path;          // "/index.html", "/app.js", ...
  std::string_view content_type;  // from the extension
  std::string_view data;
};

// The file at `path` (relative to server/web/, with a leading "/"), or nullptr.
const WebAsset* FindWebAsset(std::string_view path);

}  // namespace lorad::server
