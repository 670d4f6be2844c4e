// lorad-bench: performance checks that print ratios against a reference measured
// in the same run (never timed unit tests: machines here are shared and noisy).
#include <cstdio>
#include <string>

#include "core/base/exception_boundary.h"
#include "bench/bench_registry.h"

namespace lorad::bench {
std::map<std::string, BenchEntry>& Registry() {
  static std::map<std::string, BenchEntry> registry;
  return registry;
}
}  // namespace lorad::bench

// The program; main() below is its exception boundary.
static int ToolMain(int argc, char** argv) {
  auto& registry = lorad::bench::Registry();
  if (argc < 2 || registry.count(argv[1]) == 0) {
    std::fprintf(stderr, "usage: lorad-bench SUBCOMMAND [ARGS...]\n\nsubcommands:\n");
    for (const auto& [name, entry] : registry) {
      std::fprintf(stderr, "  %-10s %s\n", name.c_str(), entry.description.c_str());
    }
    return argc < 2 ? 2 : (std::fprintf(stderr, "\nunknown subcommand '%s'\n", argv[1]), 2);
  }
  return registry[argv[1]].main(argc - 1, argv + 1);
}

int main(int argc, char** argv) {
  return lorad::RunToolMain("lorad-bench", [&] { return ToolMain(argc, argv); });
}
