#include "client/charts/charts.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "absl/strings/str_cat.h"
#include "client/charts/text_layout.h"
#include "core/planner/loss_stats.h"

namespace lorad::charts {
namespace {

const cv::Scalar kWhite(255, 255, 255);
const cv::Scalar kBlack(0, 0, 0);
const cv::Scalar kGridGrey(228, 228, 228);
const cv::Scalar kAxisGrey(90, 90, 90);
const cv::Scalar kCellGrey(200, 200, 200);

struct Range {
  double lo = 0;
  double hi = 1;
};

// "Nice" tick positions (1, 2, 5 x 10^k) covering [lo, hi] with at most ~max_ticks.
std::vector<double> NiceTicks(const Range& range, int max_ticks) {
  const double span = range.hi - range.lo;
  const double raw_step = span / std::max(1, max_ticks);
  const double magnitude = std::pow(10.0, std::floor(std::log10(raw_step)));
  double step = magnitude;
  for (double factor : {1.0, 2.0, 5.0, 10.0}) {
    step = factor * magnitude;
    if (step >= raw_step) break;
  }
  std::vector<double> ticks;
  for (double t = std::ceil(range.lo / step) * step; t <= range.hi + step * 1e-9; t += step) {
    ticks.push_back(std::fabs(t) < step * 1e-9 ? 0.0 : t);
  }
  return ticks;
}

std::string TickLabel(double value) {
  char buffer[32];
  std::snprintf(buffer, sizeof(buffer), "%.4g", value);
  return buffer;
}

// The value at fraction q of sorted `values` (nearest rank).
double Quantile(std::vector<double> values, double q) {
  std::sort(values.begin(), values.end());
  const size_t index = static_cast<size_t>(q * static_cast<double>(values.size() - 1) + 0.5);
  return values[std::min(index, values.size() - 1)];
}

cv::Scalar Lighten(const cv::Scalar& color, double keep) {
  return cv::Scalar(color[0] * keep + 255 * (1 - keep), color[1] * keep + 255 * (1 - keep),
                    color[2] * keep + 255 * (1 - keep));
}

class PlotMapper {
 public:
  PlotMapper(cv::Rect area, Range x, Range y) : area_(area), x_(x), y_(y) {}
  cv::Point Map(double step, double loss) const {
    const double fx = (step - x_.lo) / (x_.hi - x_.lo);
    const double fy = (loss - y_.lo) / (y_.hi - y_.lo);
    // Clamp far-off values so integer conversion cannot overflow; clipLine trims.
    const double px = std::clamp(area_.x + fx * area_.width, -1e6, 1e6);
    const double py = std::clamp(area_.y + area_.height - fy * area_.height, -1e6, 1e6);
    return cv::Point(static_cast<int>(std::lround(px)), static_cast<int>(std::lround(py)));
  }

 private:
  cv::Rect area_;
  Range x_, y_;
};

void DrawCurve(cv::Mat& image, const cv::Rect& area, const PlotMapper& mapper,
               const planner::LossCurve& curve, const cv::Scalar& color, int thickness) {
  for (size_t i = 1; i < curve.size(); ++i) {
    cv::Point a = mapper.Map(static_cast<double>(curve[i - 1].first), curve[i - 1].second);
    cv::Point b = mapper.Map(static_cast<double>(curve[i].first), curve[i].second);
    if (cv::clipLine(area, a, b)) cv::line(image, a, b, color, thickness, cv::LINE_AA);
  }
  if (curve.size() == 1) {
    const cv::Point p = mapper.Map(static_cast<double>(curve[0].first), curve[0].second);
    if (area.contains(p)) cv::circle(image, p, thickness + 1, color, cv::FILLED, cv::LINE_AA);
  }
}

void DrawLegend(cv::Mat& image, const cv::Rect& area, const std::vector<LossSeries>& series) {
  if (series.empty()) return;
  constexpr double kScale = 0.45;
  constexpr int kRow = 18;
  constexpr int kSwatch = 22;
  const int max_text = std::max(40, area.width / 2 - kSwatch - 16);
  const int max_rows = std::max(1, (area.height - 16) / kRow);
  const size_t shown = std::min(series.size(), static_cast<size_t>(max_rows));
  const bool overflow = shown < series.size();
  const size_t rows = overflow ? std::max<size_t>(1, shown - 1) : shown;
  std::vector<std::string> labels;
  int text_width = 0;
  for (size_t i = 0; i < rows; ++i) {
    labels.push_back(Ellipsize(series[i].label.empty() ? absl::StrCat("series ", i + 1)
                                                       : series[i].label,
                               kScale, max_text));
    text_width = std::max(text_width, TextWidth(labels.back(), kScale));
  }
  const std::string more = absl::StrCat("+", series.size() - rows, " more");
  if (overflow) text_width = std::max(text_width, TextWidth(more, kScale));
  const int box_w = kSwatch + 14 + text_width;
  const int box_h = static_cast<int>(rows + (overflow ? 1 : 0)) * kRow + 10;
  const cv::Rect box(area.x + area.width - box_w - 8, area.y + 8, box_w, box_h);
  cv::Mat roi = image(box & cv::Rect(0, 0, image.cols, image.rows));
  cv::addWeighted(roi, 0.15, cv::Mat(roi.size(), roi.type(), kWhite), 0.85, 0, roi);
  cv::rectangle(image, box, kAxisGrey, 1);
  for (size_t i = 0; i < rows; ++i) {
    const int y = box.y + 5 + static_cast<int>(i) * kRow + kRow / 2;
    cv::line(image, {box.x + 6, y}, {box.x + 6 + kSwatch, y}, SeriesColor(i), 3, cv::LINE_AA);
    cv::putText(image, labels[i], {box.x + kSwatch + 12, y + 5}, kFont, kScale, kBlack, 1,
                cv::LINE_AA);
  }
  if (overflow) {
    const int y = box.y + 5 + static_cast<int>(rows) * kRow + kRow / 2;
    cv::putText(image, more, {box.x + kSwatch + 12, y + 5}, kFont, kScale, kAxisGrey, 1,
                cv::LINE_AA);
  }
}

// Fits `source` (any depth/channels imread gives with IMREAD_COLOR) into a
// size x size cell, aspect kept, centred on white.
void DrawFitted(cv::Mat& cell, const cv::Mat& source) {
  cell.setTo(kWhite);
  const double scale = std::min(static_cast<double>(cell.cols) / source.cols,
                                static_cast<double>(cell.rows) / source.rows);
  const cv::Size size(std::max(1, static_cast<int>(source.cols * scale)),
                      std::max(1, static_cast<int>(source.rows * scale)));
  cv::Mat resized;
  cv::resize(source, resized, size, 0, 0, scale < 1 ? cv::INTER_AREA : cv::INTER_LINEAR);
  resized.copyTo(cell(cv::Rect((cell.cols - size.width) / 2, (cell.rows - size.height) / 2,
                               size.width, size.height)));
}

void DrawPlaceholder(cv::Mat& cell, const std::string& word) {
  cell.setTo(kCellGrey);
  const double scale = std::max(0.4, cell.cols / 320.0);
  int baseline = 0;
  const cv::Size text = cv::getTextSize(word, kFont, scale, 1, &baseline);
  cv::putText(cell, word, {(cell.cols - text.width) / 2, (cell.rows + text.height) / 2}, kFont,
              scale, cv::Scalar(80, 80, 80), 1, cv::LINE_AA);
}

}  // namespace

cv::Scalar SeriesColor(size_t index) {
  // Tableau 10 (matplotlib's default cycle), as BGR.
  static const cv::Scalar kTableau[] = {
      {180, 119, 31}, {14, 127, 255}, {44, 160, 44},   {40, 39, 214},   {189, 103, 148},
      {75, 86, 140},  {194, 119, 227}, {127, 127, 127}, {34, 189, 188}, {207, 190, 23}};
  if (index < 10) return kTableau[index];
  // Beyond ten: hues spaced by the golden ratio, saturated and mid-dark.
  const double hue = std::fmod(static_cast<double>(index - 10) * 0.618033988749895 + 0.07, 1.0);
  cv::Mat hsv(1, 1, CV_8UC3, cv::Scalar(hue * 180, 200, 200 - (index % 3) * 35));
  cv::Mat bgr;
  cv::cvtColor(hsv, bgr, cv::COLOR_HSV2BGR);
  const cv::Vec3b c = bgr.at<cv::Vec3b>(0, 0);
  return cv::Scalar(c[0], c[1], c[2]);
}

absl::StatusOr<cv::Mat> RenderLossPlot(const std::vector<LossSeries>& series,
                                       const LossPlotOptions& options) {
  if (options.width < 200 || options.height < 150) {
    return absl::InvalidArgumentError(absl::StrCat("plot size ", options.width, "x",
                                                   options.height, " is too small (min 200x150)"));
  }
  std::vector<planner::LossCurve> raw(series.size()), smooth(series.size());
  std::vector<double> xs, ys_raw, ys_smooth;
  for (size_t i = 0; i < series.size(); ++i) {
    for (const auto& [step, loss] : series[i].points) {
      if (!std::isfinite(loss)) continue;
      raw[i].emplace_back(step, loss);
      xs.push_back(static_cast<double>(step));
      ys_raw.push_back(loss);
    }
    smooth[i] = planner::SmoothLoss(raw[i], options.smoothing);
    for (const auto& point : smooth[i]) ys_smooth.push_back(point.second);
  }
  if (xs.empty()) {
    return absl::InvalidArgumentError("no finite loss values to plot (every series is empty)");
  }
  Range x{*std::min_element(xs.begin(), xs.end()), *std::max_element(xs.begin(), xs.end())};
  Range y{*std::min_element(ys_smooth.begin(), ys_smooth.end()),
          *std::max_element(ys_smooth.begin(), ys_smooth.end())};
  if (options.show_raw) {
    // Raw spikes should not flatten the curves: keep the 1st-99th percentile.
    y.lo = std::min(y.lo, Quantile(ys_raw, 0.01));
    y.hi = std::max(y.hi, Quantile(ys_raw, 0.99));
  }
  if (x.hi <= x.lo) x = {x.lo - 1, x.hi + 1};
  if (y.hi <= y.lo) {
    const double pad = std::max(std::fabs(y.lo) * 0.1, 1e-3);
    y = {y.lo - pad, y.hi + pad};
  }
  const double y_pad = (y.hi - y.lo) * 0.05;
  y = {y.lo - y_pad, y.hi + y_pad};

  cv::Mat image(options.height, options.width, CV_8UC3, kWhite);
  const int left = 78, right = 24, top = 40, bottom = 58;
  const cv::Rect area(left, top, options.width - left - right, options.height - top - bottom);
  const PlotMapper mapper(area, x, y);
  constexpr double kTickScale = 0.42;

  for (double t : NiceTicks(x, std::max(2, area.width / 110))) {
    const cv::Point p = mapper.Map(t, y.lo);
    cv::line(image, {p.x, area.y}, {p.x, area.y + area.height}, kGridGrey, 1);
    cv::line(image, {p.x, area.y + area.height}, {p.x, area.y + area.height + 5}, kAxisGrey, 1);
    const std::string label = TickLabel(t);
    cv::putText(image, label, {p.x - TextWidth(label, kTickScale) / 2, area.y + area.height + 20},
                kFont, kTickScale, kAxisGrey, 1, cv::LINE_AA);
  }
  for (double t : NiceTicks(y, std::max(2, area.height / 60))) {
    const cv::Point p = mapper.Map(x.lo, t);
    cv::line(image, {area.x, p.y}, {area.x + area.width, p.y}, kGridGrey, 1);
    cv::line(image, {area.x - 5, p.y}, {area.x, p.y}, kAxisGrey, 1);
    const std::string label = TickLabel(t);
    cv::putText(image, label, {area.x - 8 - TextWidth(label, kTickScale), p.y + 5}, kFont,
                kTickScale, kAxisGrey, 1, cv::LINE_AA);
  }
  cv::rectangle(image, area, kAxisGrey, 1);
  cv::putText(image, "step", {area.x + area.width / 2 - TextWidth("step", 0.5) / 2,
                              options.height - 14},
              kFont, 0.5, kBlack, 1, cv::LINE_AA);
  cv::Mat y_label(24, 60, CV_8UC3, kWhite);
  cv::putText(y_label, "loss", {8, 17}, kFont, 0.5, kBlack, 1, cv::LINE_AA);
  cv::rotate(y_label, y_label, cv::ROTATE_90_COUNTERCLOCKWISE);
  const int label_y = std::clamp(area.y + area.height / 2 - 30, 0, options.height - 60);
  y_label.copyTo(image(cv::Rect(4, label_y, y_label.cols, y_label.rows)));
  std::string title = options.title;
  if (options.smoothing > 0) {
    absl::StrAppend(&title, " (EMA smoothing ", TickLabel(options.smoothing), ")");
  }
  cv::putText(image, Ellipsize(title, 0.6, options.width - 20), {left, 26}, kFont, 0.6, kBlack,
              1, cv::LINE_AA);

  if (options.show_raw && options.smoothing > 0) {
    for (size_t i = 0; i < series.size(); ++i) {
      DrawCurve(image, area, mapper, raw[i], Lighten(SeriesColor(i), 0.25), 1);
    }
  }
  for (size_t i = 0; i < series.size(); ++i) {
    DrawCurve(image, area, mapper, smooth[i], SeriesColor(i), 2);
  }
  DrawLegend(image, area, series);
  return image;
}

cv::Size SampleGridSize(const SampleGrid& grid, const SampleGridOptions& options) {
  const int rows = static_cast<int>(grid.row_labels.size());
  const int cols = static_cast<int>(grid.column_labels.size());
  const int pitch = options.cell_size + options.padding;
  return cv::Size(options.row_label_width + cols * pitch + options.padding,
                  options.header_height + rows * pitch + options.padding);
}

absl::StatusOr<cv::Mat> RenderSampleGrid(const SampleGrid& grid,
                                         const SampleGridOptions& options) {
  const size_t rows = grid.row_labels.size();
  const size_t cols = grid.column_labels.size();
  if (rows == 0 || cols == 0) {
    return absl::InvalidArgumentError("sample grid needs at least one job row and one prompt column");
  }
  if (grid.image_paths.size() != rows) {
    return absl::InvalidArgumentError(absl::StrCat("sample grid has ", rows, " row labels but ",
                                                   grid.image_paths.size(), " rows of paths"));
  }
  for (size_t r = 0; r < rows; ++r) {
    if (grid.image_paths[r].size() != cols) {
      return absl::InvalidArgumentError(absl::StrCat("sample grid row ", r, " has ",
                                                     grid.image_paths[r].size(),
                                                     " paths but there are ", cols, " prompts"));
    }
  }
  if (options.cell_size < 32 || options.cell_size > 4096 || options.padding < 0 ||
      options.row_label_width < 0 || options.header_height < 0) {
    return absl::InvalidArgumentError("sample grid: cell_size must be 32-4096, margins >= 0");
  }
  const cv::Size size = SampleGridSize(grid, options);
  if (static_cast<int64_t>(size.width) * size.height > 400'000'000) {
    return absl::InvalidArgumentError(absl::StrCat("sample grid would be ", size.width, "x",
                                                   size.height, " pixels; use a smaller cell_size"));
  }
  cv::Mat image(size, CV_8UC3, kWhite);
  const int pitch = options.cell_size + options.padding;
  constexpr double kScale = 0.45;
  constexpr int kLine = 16;
  for (size_t c = 0; c < cols; ++c) {
    const int x = options.row_label_width + options.padding + static_cast<int>(c) * pitch;
    const auto lines = WrapText(grid.column_labels[c], kScale, options.cell_size - 4,
                                std::max(1, (options.header_height - 4) / kLine));
    DrawLines(image, lines, {x + 2, 2}, kScale, kLine, kBlack);
  }
  for (size_t r = 0; r < rows; ++r) {
    const int y = options.header_height + options.padding + static_cast<int>(r) * pitch;
    const auto lines = WrapText(grid.row_labels[r], kScale, options.row_label_width - 10,
                                std::max(1, options.cell_size / kLine));
    DrawLines(image, lines, {6, y}, kScale, kLine, kBlack);
    for (size_t c = 0; c < cols; ++c) {
      const int x = options.row_label_width + options.padding + static_cast<int>(c) * pitch;
      cv::Mat cell = image(cv::Rect(x, y, options.cell_size, options.cell_size));
      const std::string& path = grid.image_paths[r][c];
      std::error_code error;
      if (path.empty() || !std::filesystem::is_regular_file(path, error)) {
        DrawPlaceholder(cell, "missing");
        continue;
      }
      const cv::Mat source = cv::imread(path, cv::IMREAD_COLOR);
      if (source.empty()) {
        DrawPlaceholder(cell, "unreadable");
        continue;
      }
      DrawFitted(cell, source);
    }
  }
  return image;
}

absl::Status WritePng(const cv::Mat& image, const std::string& path) {
  if (image.empty()) return absl::InvalidArgumentError("cannot write an empty image");
  std::vector<uchar> bytes;
  try {
    if (!cv::imencode(".png", image, bytes)) {
      return absl::InternalError(absl::StrCat("PNG encoding failed for ", path));
    }
  } catch (const cv::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("PNG encoding failed for ", path, ": ", e.what()));
  }
  const std::string temp = absl::StrCat(path, ".tmp");
  {
    std::ofstream out(temp, std::ios::binary | std::ios::trunc);
    if (!out) return absl::PermissionDeniedError(absl::StrCat("cannot write '", temp, "'"));
    out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    out.close();
    if (!out) return absl::DataLossError(absl::StrCat("short write to '", temp, "'"));
  }
  std::error_code error;
  std::filesystem::rename(temp, path, error);
  if (error) {
    const std::string reason = error.message();
    std::filesystem::remove(temp, error);
    return absl::PermissionDeniedError(absl::StrCat("cannot write '", path, "': ", reason));
  }
  return absl::OkStatus();
}

}  // namespace lorad::charts
