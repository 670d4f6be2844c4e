// The morning pictures of a sweep, drawn with OpenCV: loss curves (one colour
// per job, EMA-smoothed, legend with the varied values) and a sample grid
// (jobs x prompts). Used by `loractl plot` and `loractl grid`.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <opencv2/core.hpp>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace lorad::charts {

struct LossSeries {
  std::string label;  // legend text, e.g. "ds=cats lr=1e-4"
  std::vector<std::pair<int64_t, double>> points;  // (step, loss), step order
};

struct LossPlotOptions {
  double smoothing = 0.9;  // EMA factor in [0, 0.999]; 0 = raw
  int width = 1200;
  int height = 700;
  bool show_raw = true;    // faint raw curve under the smoothed one
  std::string title = "training loss";
};

// Draws the plot into a width x height BGR image (CV_8UC3, white background):
// axes with "nice" ticks and labels ("step", "loss"), one colour per series
// (SeriesColor), smoothed curves and a legend. InvalidArgument for a size
// under 200x150 or no points at all; series without points appear in the
// legend only.
absl::StatusOr<cv::Mat> RenderLossPlot(const std::vector<LossSeries>& series,
                                       const LossPlotOptions& options = {});

// The colour of series `index` (BGR): the 10 Tableau colours, then hues spread
// by the golden ratio, so colours stay distinct for large sweeps.
cv::Scalar SeriesColor(size_t index);

// A sample grid: rows are jobs, columns are prompts; cell (r, c) is the image
// path for job r and prompt c ("" when the job made none).
struct SampleGrid {
  std::vector<std::string> row_labels;     // one per job
  std::vector<std::string> column_labels;  // one per prompt
  std::vector<std::vector<std::string>> image_paths;  // [row][column]
};

struct SampleGridOptions {
  int cell_size = 256;      // each image is fitted (aspect kept) into a square cell
  int row_label_width = 220;
  int header_height = 64;   // column labels (prompt text, wrapped)
  int padding = 4;          // between cells
};

// Output size: width = row_label_width + cols * (cell_size + padding) + padding,
// height = header_height + rows * (cell_size + padding) + padding.
cv::Size SampleGridSize(const SampleGrid& grid, const SampleGridOptions& options = {});

// Draws the grid. A missing path or file is a grey cell reading "missing", an
// undecodable file a grey cell reading "unreadable". InvalidArgument when the
// grid is empty or the path table does not match the labels.
absl::StatusOr<cv::Mat> RenderSampleGrid(const SampleGrid& grid,
                                         const SampleGridOptions& options = {});

// Encodes `image` as PNG and writes it atomically (temp file + rename).
absl::Status WritePng(const cv::Mat& image, const std::string& path);

}  // namespace lorad::charts
