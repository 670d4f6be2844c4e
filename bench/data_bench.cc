// lorad-bench data: images/second decoded, resized and cropped into buckets
// from 1024-px JPEGs: the core/data path on one thread and with prefetch
// threads, against a plain single-threaded OpenCV imread+resize loop measured
// in the same run.
#include <chrono>
#include <filesystem>
#include <iostream>
#include <thread>

#include <unistd.h>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "absl/strings/numbers.h"
#include "bench/bench_registry.h"
#include "core/data/dataset.h"

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a) { return std::chrono::duration<double>(Clock::now() - a).count(); }

// Drains one epoch; returns images delivered.
int64_t DrainEpoch(lorad::data::Dataset& ds, int threads) {
  auto it = ds.Iterate({1, 0}, 0, {.prefetch_threads = threads, .queue_batches = 2 * std::max(1, threads)});
  if (!it.ok()) {
    std::cerr << it.status() << "\n";
    return 0;
  }
  int64_t n = 0;
  while (true) {
    auto b = (*it)->Next();
    if (!b.ok()) {
      std::cerr << b.status() << "\n";
      return n;
    }
    if (!b->has_value()) return n;
    n += (*b)->size();
  }
}

int DataBench(int argc, char** argv) {
  int images = 32;
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::string(argv[i]) == "--images") (void)absl::SimpleAtoi(argv[i + 1], &images);
  }
  const fs::path dir = fs::temp_directory_path() / ("lorad_data_bench_" + std::to_string(::getpid()));
  const fs::path sub = dir / "1_bench";
  fs::create_directories(sub);
  std::vector<fs::path> files;
  for (int i = 0; i < images; ++i) {
    const int w = 1024, h = (i % 3 == 0) ? 768 : 1024;
    cv::Mat small(16, 16, CV_8UC3);
    cv::RNG rng(i + 1);
    rng.fill(small, cv::RNG::UNIFORM, 0, 256);
    cv::Mat img;
    cv::resize(small, img, cv::Size(w, h), 0, 0, cv::INTER_CUBIC);
    cv::putText(img, std::to_string(i), {100, 300}, cv::FONT_HERSHEY_SIMPLEX, 8, cv::Scalar(255, 255, 255), 12);
    files.push_back(sub / ("img" + std::to_string(i) + ".jpg"));
    cv::imwrite(files.back().string(), img, {cv::IMWRITE_JPEG_QUALITY, 92});
  }
  // Reference: plain single-threaded OpenCV decode + resize + centre crop to 512x512 / 576x448.
  auto t0 = Clock::now();
  int64_t checksum = 0;
  for (const auto& f : files) {
    cv::Mat img = cv::imread(f.string(), cv::IMREAD_COLOR), out;
    const double scale = std::max(512.0 / img.cols, 512.0 / img.rows);
    cv::resize(img, out, cv::Size(int(img.cols * scale + 0.5), int(img.rows * scale + 0.5)), 0, 0, cv::INTER_AREA);
    cv::Mat crop = out(cv::Rect((out.cols - 512) / 2, (out.rows - 512) / 2, 512, 512)).clone();
    cv::cvtColor(crop, crop, cv::COLOR_BGR2RGB);
    checksum += crop.at<cv::Vec3b>(0, 0)[0];
  }
  const double ref_s = Seconds(t0);
  const double ref_rate = images / ref_s;

  lorad::data::DatasetArgs args;
  args.train_data_dir = dir;
  args.resolution_width = args.resolution_height = 512;
  args.enable_bucket = true;
  args.train_batch_size = 4;
  auto t_open = Clock::now();
  auto ds = lorad::data::Dataset::Open(args);
  const double open_s = Seconds(t_open);
  if (!ds.ok()) {
    std::cerr << ds.status() << "\n";
    return 1;
  }
  auto t1 = Clock::now();
  const int64_t n1 = DrainEpoch(**ds, 0);
  const double one_rate = n1 / Seconds(t1);
  const int threads = std::max(2u, std::thread::hardware_concurrency());
  auto t2 = Clock::now();
  const int64_t n2 = DrainEpoch(**ds, threads);
  const double pre_rate = n2 / Seconds(t2);
  fs::remove_all(dir);

  std::printf("lorad-bench data: %d JPEGs of 1024 px -> 512-px buckets (checksum %lld)\n", images,
              static_cast<long long>(checksum));
  std::printf("  reference  plain OpenCV imread+resize+crop, 1 thread : %8.1f images/s\n", ref_rate);
  std::printf("  core/data  decode+resize+crop+tensor, 1 thread       : %8.1f images/s  (%.2fx reference)\n",
              one_rate, one_rate / ref_rate);
  std::printf("  core/data  with prefetch, %2d threads                  : %8.1f images/s  (%.2fx reference)\n",
              threads, pre_rate, pre_rate / ref_rate);
  std::printf("  Dataset::Open (read+validate %d headers)              : %8.3f s\n", images, open_s);
  return 0;
}

}  // namespace

LORAD_BENCH(data, "images/s decoded, resized and cropped into buckets vs a plain OpenCV loop", DataBench);
