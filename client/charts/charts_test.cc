#include "client/charts/charts.h"
#include "core/base/testing/scoped_temp_dir.h"

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>

#include <gtest/gtest.h>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

namespace lorad::charts {
namespace {

namespace fs = std::filesystem;

// A fresh temporary directory removed at the end of the test.
class TempDir {
 public:
  std::string File(const std::string& name) const { return (dir_ / name).string(); }

 private:
  lorad::testing::ScopedTempDir dir_{"lorad_charts"};
};

int CountNear(const cv::Mat& image, const cv::Scalar& color, double tolerance,
              const cv::Rect& region) {
  int count = 0;
  const cv::Mat roi = image(region);
  for (int y = 0; y < roi.rows; ++y) {
    for (int x = 0; x < roi.cols; ++x) {
      const cv::Vec3b p = roi.at<cv::Vec3b>(y, x);
      const double d = std::abs(p[0] - color[0]) + std::abs(p[1] - color[1]) + std::abs(p[2] - color[2]);
      if (d <= tolerance) ++count;
    }
  }
  return count;
}

int CountNonWhite(const cv::Mat& image) {
  return image.rows * image.cols - CountNear(image, {255, 255, 255}, 0, {0, 0, image.cols, image.rows});
}

std::vector<LossSeries> ThreeJobs() {
  std::vector<LossSeries> series;
  for (int job = 0; job < 3; ++job) {
    LossSeries s;
    s.label = "ds=cats lr=" + std::to_string(job + 1) + "e-4";
    for (int step = 1; step <= 300; ++step) {
      const double noise = 0.03 * std::sin(step * 1.7 + job);
      s.points.emplace_back(step, 0.15 + 0.1 * job + 0.3 * std::exp(-step / 60.0) + noise);
    }
    series.push_back(std::move(s));
  }
  return series;
}

TEST(LossPlotTest, HasRequestedSizeAxesAndOneColourPerSeries) {
  LossPlotOptions options;
  options.width = 900;
  options.height = 500;
  auto plot = RenderLossPlot(ThreeJobs(), options);
  ASSERT_TRUE(plot.ok()) << plot.status();
  EXPECT_EQ(plot->cols, 900);
  EXPECT_EQ(plot->rows, 500);
  EXPECT_EQ(plot->type(), CV_8UC3);
  // Curves, grid, ticks and labels: well over 2% of the pixels are drawn.
  EXPECT_GT(CountNonWhite(*plot), 900 * 500 / 50);
  const cv::Rect all(0, 0, plot->cols, plot->rows);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_GT(CountNear(*plot, SeriesColor(i), 30, all), 300) << "series " << i;
  }
  // A colour for a fourth series is absent: only three were drawn.
  EXPECT_LT(CountNear(*plot, SeriesColor(3), 10, all), 5);
  // Tick labels: grey text below the plot area and left of it (x ticks every
  // 50 steps, y ticks every 0.1).
  const cv::Rect below(78, 446, 800, 24), beside(0, 40, 72, 400);
  EXPECT_GT(below.area() - CountNear(*plot, {255, 255, 255}, 0, below), 150);
  EXPECT_GT(beside.area() - CountNear(*plot, {255, 255, 255}, 0, beside), 150);
}

TEST(LossPlotTest, SmoothingNarrowsTheCurve) {
  LossSeries noisy{"noisy", {}};
  for (int step = 0; step < 400; ++step) noisy.points.emplace_back(step, step % 2 ? 1.0 : 2.0);
  noisy.points.emplace_back(400, 0.5);  // pins the y range
  noisy.points.emplace_back(401, 2.5);
  // Rows touched by the series colour: the raw zig-zag spans the full band,
  // the smoothed curve converges to a thin line near 1.5.
  const auto rows_touched = [&](double smoothing) {
    LossPlotOptions options;
    options.smoothing = smoothing;
    options.show_raw = false;
    options.width = 600;
    options.height = 400;
    const cv::Mat plot = *RenderLossPlot({noisy}, options);
    std::set<int> rows;
    for (int y = 0; y < plot.rows; ++y) {
      for (int x = 150; x < 400; ++x) {  // middle of the run, left of the legend
        const cv::Vec3b p = plot.at<cv::Vec3b>(y, x);
        const cv::Scalar c = SeriesColor(0);
        if (std::abs(p[0] - c[0]) + std::abs(p[1] - c[1]) + std::abs(p[2] - c[2]) < 20) rows.insert(y);
      }
    }
    return rows.size();
  };
  const size_t raw = rows_touched(0.0);
  const size_t smooth = rows_touched(0.95);
  EXPECT_GT(raw, 80u);
  EXPECT_LT(smooth, raw / 4);
}

TEST(LossPlotTest, ManySeriesGetDistinctColours) {
  std::set<std::tuple<int, int, int>> colours;
  for (size_t i = 0; i < 40; ++i) {
    const cv::Scalar c = SeriesColor(i);
    colours.insert({static_cast<int>(c[0]), static_cast<int>(c[1]), static_cast<int>(c[2])});
    EXPECT_LT(c[0] + c[1] + c[2], 3 * 240) << i;  // visible on white
  }
  EXPECT_EQ(colours.size(), 40u);
  std::vector<LossSeries> many;
  for (int i = 0; i < 30; ++i) many.push_back({"job " + std::to_string(i), {{0, 1.0 + i}, {10, 0.5 + i}}});
  LossPlotOptions options;
  options.width = 400;
  options.height = 300;
  EXPECT_TRUE(RenderLossPlot(many, options).ok());  // legend overflows into "+N more"
}

TEST(LossPlotTest, RejectsBadInput) {
  LossPlotOptions tiny;
  tiny.width = 100;
  EXPECT_EQ(RenderLossPlot(ThreeJobs(), tiny).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(RenderLossPlot({}, {}).ok());
  EXPECT_FALSE(RenderLossPlot({{"nan", {{1, std::nan("")}}}}, {}).ok());
  // One point and a flat series still render.
  EXPECT_TRUE(RenderLossPlot({{"one", {{5, 0.2}}}}, {}).ok());
  EXPECT_TRUE(RenderLossPlot({{"flat", {{1, 0.2}, {2, 0.2}}}}, {}).ok());
}

TEST(LossPlotTest, WritesAPngThatReadsBackIdentically) {
  TempDir dir;
  auto plot = RenderLossPlot(ThreeJobs(), {});
  ASSERT_TRUE(plot.ok());
  const std::string path = dir.File("loss.png");
  ASSERT_TRUE(WritePng(*plot, path).ok());
  EXPECT_FALSE(fs::exists(path + ".tmp"));
  const cv::Mat back = cv::imread(path, cv::IMREAD_COLOR);
  ASSERT_EQ(back.size(), plot->size());
  EXPECT_EQ(cv::norm(back, *plot, cv::NORM_INF), 0.0);
  EXPECT_FALSE(WritePng(*plot, dir.File("no/such/dir/loss.png")).ok());
  EXPECT_FALSE(WritePng(cv::Mat(), dir.File("empty.png")).ok());
}

TEST(SampleGridTest, LaysOutJobsByPromptsWithPlaceholders) {
  TempDir dir;
  const std::string red = dir.File("red.png");
  const std::string blue = dir.File("blue.jpg");
  cv::imwrite(red, cv::Mat(96, 64, CV_8UC3, cv::Scalar(0, 0, 255)));     // portrait
  cv::imwrite(blue, cv::Mat(64, 128, CV_8UC3, cv::Scalar(255, 0, 0)));  // landscape
  const std::string corrupt = dir.File("corrupt.png");
  std::ofstream(corrupt) << "not a png";

  SampleGrid grid;
  grid.row_labels = {"ds=cats lr=1e-4", "ds=dogs lr=5e-4 with a long label that must wrap"};
  grid.column_labels = {"a cat on a sofa", "a photo of a very detailed landscape at sunset, "
                        "golden hour, masterpiece"};
  grid.image_paths = {{red, ""}, {corrupt, blue}};
  SampleGridOptions options;
  options.cell_size = 128;
  auto image = RenderSampleGrid(grid, options);
  ASSERT_TRUE(image.ok()) << image.status();
  const cv::Size expected = SampleGridSize(grid, options);
  EXPECT_EQ(expected, cv::Size(220 + 2 * 132 + 4, 64 + 2 * 132 + 4));
  EXPECT_EQ(image->size(), expected);

  const auto cell = [&](int r, int c) {
    return cv::Rect(220 + 4 + c * 132, 64 + 4 + r * 132, 128, 128);
  };
  // Images fill their cells (centre pixel), aspect kept (white bars at the sides/top).
  EXPECT_GT(CountNear(*image, {0, 0, 255}, 10, cell(0, 0)), 128 * 80);
  EXPECT_GT(CountNear(*image, {255, 255, 255}, 0, cell(0, 0)), 128 * 30);
  EXPECT_GT(CountNear(*image, {255, 0, 0}, 10, cell(1, 1)), 128 * 60);
  // Missing and unreadable cells are grey with a word in them.
  for (const cv::Rect& placeholder : {cell(0, 1), cell(1, 0)}) {
    const int grey = CountNear(*image, {200, 200, 200}, 0, placeholder);
    EXPECT_GT(grey, 128 * 110);
    EXPECT_LT(grey, 128 * 128);  // the text
  }
  // Labels are drawn: dark pixels in the header and the label column.
  EXPECT_GT(CountNear(*image, {0, 0, 0}, 150, cv::Rect(224, 0, 260, 64)), 100);
  EXPECT_GT(CountNear(*image, {0, 0, 0}, 150, cv::Rect(0, 68, 220, 260)), 100);

  ASSERT_TRUE(WritePng(*image, dir.File("grid.png")).ok());
  EXPECT_EQ(cv::imread(dir.File("grid.png")).size(), expected);
}

TEST(SampleGridTest, RejectsMismatchedTables) {
  SampleGrid grid;
  EXPECT_FALSE(RenderSampleGrid(grid).ok());
  grid.row_labels = {"a", "b"};
  grid.column_labels = {"p"};
  grid.image_paths = {{""}};
  EXPECT_FALSE(RenderSampleGrid(grid).ok());
  grid.image_paths = {{""}, {"", ""}};
  EXPECT_FALSE(RenderSampleGrid(grid).ok());
  grid.image_paths = {{""}, {""}};
  EXPECT_TRUE(RenderSampleGrid(grid).ok());
}

}  // namespace
}  // namespace lorad::charts
