// One spdlog logger per component, created on first use.
#pragma once

#include <memory>
#include <string>

#include <spdlog/spdlog.h>

namespace lorad {

// Returns the logger named `component` (stderr sink), creating it if needed.
std::shared_ptr<spdlog::logger> Logger(const std::string& component);

}  // namespace lorad
