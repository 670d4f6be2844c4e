// lorad-mkmodel --arch {sd15,sdxl} --size {tiny,full} [--dtype f16|bf16|f32]
//               [--seed N] [--captions FILE] OUT
// Writes a random-initialised checkpoint in the single-file layout (and, for
// tiny models, a demo BPE vocabulary in OUT's companion tokenizer folder).
#include <cstdio>
#include <fstream>
#include <string>

#include "core/base/exception_boundary.h"
#include "absl/strings/numbers.h"
#include "core/models/mkmodel.h"
#include "core/text/tokenizer.h"

namespace {

int Usage(const char* error = nullptr) {
  if (error) std::fprintf(stderr, "lorad-mkmodel: %s\n", error);
  std::fprintf(stderr,
               "usage: lorad-mkmodel --arch {sd15,sdxl} --size {tiny,full} [--dtype f16|bf16|f32] [--seed N]\n"
               "                     [--captions FILE] OUT.safetensors\n");
  return 2;
}

}  // namespace

// The program; main() below is its exception boundary.
static int ToolMain(int argc, char** argv) {
  lorad::models::MakeModelOptions options;
  std::string out, arch, size, captions_file;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&](std::string* dst) {
      if (i + 1 >= argc) return false;
      *dst = argv[++i];
      return true;
    };
    std::string v;
    if (a == "--arch") {
      if (!value(&arch)) return Usage("--arch needs a value");
    } else if (a == "--size") {
      if (!value(&size)) return Usage("--size needs a value");
    } else if (a == "--dtype") {
      if (!value(&v)) return Usage("--dtype needs a value");
      if (v == "f16" || v == "fp16") options.dtype = torch::kFloat16;
      else if (v == "bf16") options.dtype = torch::kBFloat16;
      else if (v == "f32" || v == "fp32") options.dtype = torch::kFloat32;
      else return Usage("--dtype must be f16, bf16 or f32");
    } else if (a == "--seed") {
      if (!value(&v) || !absl::SimpleAtoi(v, &options.seed)) return Usage("--seed needs a non-negative integer");
    } else if (a == "--captions") {
      if (!value(&captions_file)) return Usage("--captions needs a file");
    } else if (a == "-h" || a == "--help") {
      Usage();
      return 0;
    } else if (!a.empty() && a[0] == '-') {
      return Usage(("unknown option " + a).c_str());
    } else if (out.empty()) {
      out = a;
    } else {
      return Usage("more than one output path");
    }
  }
  if (arch == "sd15") options.family = lorad::models::ModelFamily::kSd15;
  else if (arch == "sdxl") options.family = lorad::models::ModelFamily::kSdxl;
  else return Usage("--arch must be sd15 or sdxl");
  if (size == "tiny") options.size = lorad::models::ModelSize::kTiny;
  else if (size == "full") options.size = lorad::models::ModelSize::kFull;
  else return Usage("--size must be tiny or full");
  if (out.empty()) return Usage("missing OUT path");
  if (!captions_file.empty()) {
    std::ifstream in(captions_file);
    if (!in) return Usage(("cannot read " + captions_file).c_str());
    for (std::string line; std::getline(in, line);) {
      if (!line.empty()) options.captions.push_back(line);
    }
  }
  auto status = lorad::models::MakeModel(out, options);
  if (!status.ok()) {
    std::fprintf(stderr, "lorad-mkmodel: %s\n", std::string(status.message()).c_str());
    return 1;
  }
  std::printf("wrote %s\n", out.c_str());
  if (options.size == lorad::models::ModelSize::kTiny) {
    std::printf("wrote demo vocabulary %s\n", lorad::text::CompanionTokenizerDir(out).string().c_str());
  }
  return 0;
}

int main(int argc, char** argv) {
  return lorad::RunToolMain("lorad-mkmodel", [&] { return ToolMain(argc, argv); });
}
