// lorad-inspect CHECKPOINT [--json]: family, detected config, dtypes, tensor and
// parameter counts, missing/unexpected keys; for a LoRA file its ss_* metadata.
#include <cstdio>
#include <cstring>
#include <string>

#include "core/base/exception_boundary.h"
#include "core/models/inspect.h"

// The program; main() below is its exception boundary.
static int ToolMain(int argc, char** argv) {
  std::string path;
  bool json = false;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--json") == 0) {
      json = true;
    } else if (std::strcmp(argv[i], "-h") == 0 || std::strcmp(argv[i], "--help") == 0) {
      std::printf("usage: lorad-inspect CHECKPOINT|DIFFUSERS_DIR|LORA [--json]\n");
      return 0;
    } else if (path.empty()) {
      path = argv[i];
    } else {
      std::fprintf(stderr, "lorad-inspect: unexpected argument '%s'\n", argv[i]);
      return 2;
    }
  }
  if (path.empty()) {
    std::fprintf(stderr, "usage: lorad-inspect CHECKPOINT|DIFFUSERS_DIR|LORA [--json]\n");
    return 2;
  }
  auto report = lorad::models::InspectModelFile(path);
  if (!report.ok()) {
    std::fprintf(stderr, "lorad-inspect: %s\n", std::string(report.status().message()).c_str());
    return 1;
  }
  if (json) {
    std::printf("%s\n", report->dump(2).c_str());
  } else {
    std::printf("%s", lorad::models::FormatInspection(*report).c_str());
  }
  return 0;
}

int main(int argc, char** argv) {
  return lorad::RunToolMain("lorad-inspect", [&] { return ToolMain(argc, argv); });
}
