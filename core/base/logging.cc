#include "core/base/logging.h"

#include <mutex>

#include <spdlog/sinks/stdout_color_sinks.h>

namespace lorad {

std::shared_ptr<spdlog::logger> Logger(const std::string& component) {
  static std::mutex mu;
  std::lock_guard<std::mutex> lock(mu);
  if (auto existing = spdlog::get(component)) return existing;
  auto logger = spdlog::stderr_color_mt(component);
  if (auto def = spdlog::default_logger(); def != nullptr) logger->set_level(def->level());
  return logger;
}

}  // namespace lorad
