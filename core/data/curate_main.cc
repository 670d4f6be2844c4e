// lorad-curate: the dataset curation report for a kohya dataset folder (of
// N_name subfolders) or a dataset_config TOML, as text or JSON.
#include <cstdlib>
#include <iostream>
#include <string>

#include "core/base/exception_boundary.h"
#include "absl/strings/numbers.h"
#include "core/data/curation.h"

namespace {

constexpr char kUsage[] =
    "usage: lorad-curate DATASET [--json] [--batch-size N] [--near-threshold D] [--top-tags N]\n"
    "                    [--reg DIR] [--caption-extension EXT] [--resolution W[,H]] [--no-bucket]\n"
    "                    [--keep-tokens N]\n"
    "  DATASET: a folder of N_name subfolders (kohya train_data_dir) or a dataset_config .toml\n"
    "  defaults: --caption-extension .caption (kohya's), --resolution 1024 with buckets 256..2048,\n"
    "            --near-threshold 8 (pHash bits), --top-tags 20\n";

int Fail(const std::string& msg) {
  std::cerr << "lorad-curate: " << msg << "\n" << kUsage;
  return 2;
}

}  // namespace

// The program; main() below is its exception boundary.
static int ToolMain(int argc, char** argv) {
  using namespace lorad::data;
  DatasetArgs args;
  args.resolution_width = args.resolution_height = 1024;
  args.enable_bucket = true;
  args.min_bucket_reso = 256;
  args.max_bucket_reso = 2048;
  CurationOptions options;
  bool json = false;
  std::string dataset;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&](int* out) {
      return i + 1 < argc && absl::SimpleAtoi(argv[++i], out) && *out >= 0;
    };
    if (a == "--json") {
      json = true;
    } else if (a == "--batch-size") {
      if (!value(&options.batch_size) || options.batch_size < 1) return Fail("--batch-size needs an integer >= 1");
    } else if (a == "--near-threshold") {
      if (!value(&options.near_threshold)) return Fail("--near-threshold needs an integer in 0..64");
    } else if (a == "--top-tags") {
      if (!value(&options.top_tags)) return Fail("--top-tags needs an integer >= 0");
    } else if (a == "--reg" && i + 1 < argc) {
      args.reg_data_dir = argv[++i];
    } else if (a == "--caption-extension" && i + 1 < argc) {
      std::string ext = argv[++i];
      args.subset_defaults.caption_extension = ext.empty() || ext[0] == '.' ? ext : "." + ext;
    } else if (a == "--resolution" && i + 1 < argc) {
      auto r = ParseResolution(argv[++i]);
      if (!r.ok()) return Fail(std::string(r.status().message()));
      args.resolution_width = r->first;
      args.resolution_height = r->second;
      args.max_bucket_reso = std::max({args.max_bucket_reso, r->first, r->second});
    } else if (a == "--keep-tokens") {
      if (!value(&args.subset_defaults.keep_tokens)) return Fail("--keep-tokens needs an integer >= 0");
    } else if (a == "--no-bucket") {
      args.enable_bucket = false;
    } else if (a == "-h" || a == "--help") {
      std::cout << kUsage;
      return 0;
    } else if (!a.empty() && a[0] == '-') {
      return Fail("unknown option " + a);
    } else if (dataset.empty()) {
      dataset = a;
    } else {
      return Fail("more than one DATASET given");
    }
  }
  if (dataset.empty()) return Fail("no DATASET given");
  if (dataset.size() > 5 && dataset.substr(dataset.size() - 5) == ".toml") {
    args.dataset_config = dataset;
  } else {
    args.train_data_dir = dataset;
  }
  auto report = BuildCurationReport(args, options);
  if (!report.ok()) {
    std::cerr << "lorad-curate: " << report.status().message() << "\n";
    return 1;
  }
  std::cout << (json ? report->ToJson() : report->ToText()) << "\n";
  return 0;
}

int main(int argc, char** argv) {
  return lorad::RunToolMain("lorad-curate", [&] { return ToolMain(argc, argv); });
}
