// SHA-256 of file contents: the identity of an image in cache keys and the
// exact-duplicate check of the curation report.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace lorad::data {

// Lower-case hex SHA-256 of `bytes`.
std::string Sha256Hex(std::string_view bytes);

}  // namespace lorad::data
