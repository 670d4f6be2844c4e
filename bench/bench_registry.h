// lorad-bench subcommands register themselves here; each lives in bench/<name>_bench.cc.
#pragma once

#include <functional>
#include <map>
#include <string>

namespace lorad::bench {

using BenchMain = std::function<int(int argc, char** argv)>;

struct BenchEntry {
  std::string description;
  BenchMain main;
};

std::map<std::string, BenchEntry>& Registry();

struct BenchRegistrar {
  BenchRegistrar(const std::string& name, const std::string& description, BenchMain main) {
    Registry()[name] = BenchEntry{description, std::move(main)};
  }
};

}  // namespace lorad::bench

// LORAD_BENCH(load, "description", Fn) registers `lorad-bench load ...` -> Fn(argc, argv),
// where argv[0] is the subcommand name.
#define LORAD_BENCH(name, description, fn) \
  static ::lorad::bench::BenchRegistrar lorad_bench_registrar_##name(#name, description, fn)
