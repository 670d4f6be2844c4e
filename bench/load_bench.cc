// lorad-bench load CHECKPOINT [--dtype f16|bf16|f32]: time and peak RSS of
// LoadStableDiffusion next to the file size and the time of reading the file
// once (`cat FILE > /dev/null`), measured in the same run. Weights that alias
// the file's mapping are read lazily, so the first touch of every page is
// timed too and reported with the load.
#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "bench/bench_registry.h"
#include "core/models/checkpoint.h"

namespace {

namespace fs = std::filesystem;

// VmRSS / VmHWM of this process in bytes (from /proc/self/status).
int64_t ProcStatusBytes(const char* field) {
  std::ifstream in("/proc/self/status");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(field, 0) == 0) return std::stoll(line.substr(std::strlen(field) + 1)) * 1024;
  }
  return -1;
}

// User + system CPU seconds of this process so far: wall time on a shared
// machine mostly measures the neighbours, CPU time measures the work.
double CpuSeconds() {
  rusage u{};
  ::getrusage(RUSAGE_SELF, &u);
  auto s = [](const timeval& t) { return t.tv_sec + t.tv_usec / 1e6; };
  return s(u.ru_utime) + s(u.ru_stime);
}

std::vector<fs::path> FilesOf(const fs::path& path) {
  if (!fs::is_directory(path)) return {path};
  std::vector<fs::path> files;
  for (const auto& e : fs::recursive_directory_iterator(path)) {
    if (e.is_regular_file() && e.path().extension() == ".safetensors") files.push_back(e.path());
  }
  return files;
}

// Reads every byte once into a small buffer, as `cat FILE > /dev/null` does.
double CatSeconds(const std::vector<fs::path>& files, uint64_t* bytes) {
  std::vector<char> buffer(8 << 20);
  const auto start = std::chrono::steady_clock::now();
  *bytes = 0;
  for (const auto& f : files) {
    const int fd = ::open(f.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) continue;
    for (ssize_t n; (n = ::read(fd, buffer.data(), buffer.size())) > 0;) *bytes += static_cast<uint64_t>(n);
    ::close(fd);
  }
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// Reads one byte of every page of every CPU parameter and buffer: what first
// use costs after a load that maps the file instead of copying it. Returns the
// bytes covered.
uint64_t TouchEveryPage(torch::nn::Module& module) {
  uint64_t bytes = 0;
  volatile uint8_t sink = 0;
  auto touch = [&](const torch::Tensor& t) {
    if (!t.defined() || !t.device().is_cpu() || t.numel() == 0) return;
    const auto* p = static_cast<const uint8_t*>(t.data_ptr());
    const uint64_t n = static_cast<uint64_t>(t.numel()) * t.element_size();
    for (uint64_t i = 0; i < n; i += 4096) sink = sink + p[i];
    sink = sink + p[n - 1];
    bytes += n;
  };
  for (const auto& p : module.parameters()) touch(p);
  for (const auto& b : module.buffers()) touch(b);
  return bytes;
}

int LoadBench(int argc, char** argv) {
  std::string path;
  std::string dtype_name;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--dtype" && i + 1 < argc) {
      dtype_name = argv[++i];
    } else if (path.empty() && a[0] != '-') {
      path = a;
    } else {
      std::fprintf(stderr, "usage: lorad-bench load CHECKPOINT [--dtype f16|bf16|f32]\n");
      return 2;
    }
  }
  if (path.empty()) {
    std::fprintf(stderr, "usage: lorad-bench load CHECKPOINT [--dtype f16|bf16|f32]\n");
    return 2;
  }
  lorad::models::LoadOptions options;
  if (dtype_name.empty()) {
    // Default: the file's own (majority) dtype, so loading needs no conversion.
    auto ckpt = lorad::models::Checkpoint::Open(path);
    if (!ckpt.ok()) {
      std::fprintf(stderr, "load: %s\n", std::string(ckpt.status().message()).c_str());
      return 1;
    }
    int64_t best = -1;
    for (const auto& [name, count] : (*ckpt)->DTypeCounts()) {
      if (count > best) {
        best = count;
        dtype_name = name == "F16" ? "f16" : name == "BF16" ? "bf16" : "f32";
      }
    }
  }
  if (dtype_name == "f16") options.dtype = torch::kFloat16;
  else if (dtype_name == "bf16") options.dtype = torch::kBFloat16;
  else if (dtype_name == "f32") options.dtype = torch::kFloat32;
  else {
    std::fprintf(stderr, "load: --dtype must be f16, bf16 or f32\n");
    return 2;
  }

  const auto files = FilesOf(path);
  uint64_t file_bytes = 0;
  const double cpu0 = CpuSeconds();
  const double cat_s = CatSeconds(files, &file_bytes);
  const double cat_cpu = CpuSeconds() - cpu0;
  const int64_t rss_before = ProcStatusBytes("VmRSS:");
  const double cpu1 = CpuSeconds();
  const auto start = std::chrono::steady_clock::now();
  auto sd = lorad::models::LoadStableDiffusion(path, options);
  const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const double load_cpu = CpuSeconds() - cpu1;
  if (!sd.ok()) {
    std::fprintf(stderr, "load: %s\n", std::string(sd.status().message()).c_str());
    return 1;
  }
  const int64_t peak = ProcStatusBytes("VmHWM:");
  // First use: every page of every weight read once (from the page cache).
  const auto touch_start = std::chrono::steady_clock::now();
  uint64_t touched = 0;
  if (sd->unet) touched += TouchEveryPage(*sd->unet);
  if (sd->vae) touched += TouchEveryPage(*sd->vae);
  for (auto& te : sd->text_encoders) touched += TouchEveryPage(*te);
  const double touch_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - touch_start).count();
  const int64_t peak_after_touch = ProcStatusBytes("VmHWM:");
  uint64_t again_bytes = 0;
  const double cat2_s = CatSeconds(files, &again_bytes);
  const double gb = 1e9;
  std::printf("checkpoint        %s (%s, loaded as %s)\n", path.c_str(), lorad::models::ModelFamilyName(sd->family),
              dtype_name.c_str());
  std::printf("file size         %.3f GB\n", file_bytes / gb);
  std::printf("cat (before)      %.3f s  (%.2f GB/s), CPU %.3f s\n", cat_s, file_bytes / gb / cat_s, cat_cpu);
  std::printf("cat (after)       %.3f s  (%.2f GB/s)\n", cat2_s, again_bytes / gb / cat2_s);
  std::printf("load              %.3f s  (%.2f GB/s), CPU %.3f s\n", load_s, file_bytes / gb / load_s, load_cpu);
  std::printf("first touch       %.3f s  (one byte of every page of %.3f GB of weights)\n", touch_s,
              touched / gb);
  std::printf("peak RSS          %.3f GB after load, %.3f GB after the first touch (RSS before load %.3f GB; "
              "mapped weights count as shared file pages)\n",
              peak / gb, peak_after_touch / gb, rss_before / gb);
  std::printf("ratio load/cat    %.2f  (vs the faster cat: %.2f; goal <= 2)\n", load_s / cat_s,
              load_s / std::min(cat_s, cat2_s));
  std::printf("ratio (load + first touch)/cat  %.2f  (vs the faster cat: %.2f)\n", (load_s + touch_s) / cat_s,
              (load_s + touch_s) / std::min(cat_s, cat2_s));
  std::printf("load CPU / wall   %.2f  (well below 1: the process waited for the CPU or the disk)\n", load_cpu / load_s);
  std::printf("ratio RSS/file    %.2f  after the first touch (goal < 1.2 for an fp16 file loaded as fp16)\n",
              static_cast<double>(peak_after_touch) / static_cast<double>(file_bytes));
  return 0;
}

}  // namespace

LORAD_BENCH(load, "load a checkpoint: time and peak RSS vs file size and a plain read of the file", LoadBench);
