// Text fitting for chart labels (internal to lorad_charts).
#pragma once

#include <string>
#include <vector>

#include <opencv2/core.hpp>

namespace lorad::charts {

inline constexpr int kFont = 0;  // cv::FONT_HERSHEY_SIMPLEX

// Width in pixels of `text` at `scale` (thickness 1).
int TextWidth(const std::string& text, double scale);

// `text` shortened with "..." so it is at most `max_width` pixels wide.
std::string Ellipsize(const std::string& text, double scale, int max_width);

// Greedy word wrap into at most `max_lines` lines of at most `max_width`
// pixels; words longer than a line are split; the last line is ellipsized when
// text remains.
std::vector<std::string> WrapText(const std::string& text, double scale, int max_width,
                                  int max_lines);

// Draws `lines` top-aligned at `origin` (top-left), `line_height` apart.
void DrawLines(cv::Mat& image, const std::vector<std::string>& lines, cv::Point origin,
               double scale, int line_height, const cv::Scalar& color);

}  // namespace lorad::charts
