// The ordered schema migrations of the lorad database.
#pragma once

#include <string>
#include <vector>

namespace lorad::storage {
const std::vector<std::string>& SchemaMigrations();
}  // namespace lorad::storage
