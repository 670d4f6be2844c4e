#include "client/charts/text_layout.h"

#include <opencv2/imgproc.hpp>

#include "absl/strings/str_split.h"

namespace lorad::charts {

int TextWidth(const std::string& text, double scale) {
  int baseline = 0;
  return cv::getTextSize(text, kFont, scale, 1, &baseline).width;
}

std::string Ellipsize(const std::string& text, double scale, int max_width) {
  if (TextWidth(text, scale) <= max_width) return text;
  std::string cut = text;
  while (!cut.empty() && TextWidth(cut + "...", scale) > max_width) cut.pop_back();
  return cut.empty() ? std::string() : cut + "...";
}

std::vector<std::string> WrapText(const std::string& text, double scale, int max_width,
                                  int max_lines) {
  std::vector<std::string> lines;
  if (max_lines <= 0) return lines;
  std::string current;
  std::vector<std::string> words = absl::StrSplit(text, ' ', absl::SkipEmpty());
  for (size_t i = 0; i < words.size(); ++i) {
    std::string word = words[i];
    const std::string candidate = current.empty() ? word : current + " " + word;
    if (TextWidth(candidate, scale) <= max_width) {
      current = candidate;
      continue;
    }
    if (!current.empty()) {
      lines.push_back(current);
      current.clear();
    }
    // A word wider than the line is split.
    while (TextWidth(word, scale) > max_width && word.size() > 1) {
      size_t fit = word.size() - 1;
      while (fit > 1 && TextWidth(word.substr(0, fit), scale) > max_width) --fit;
      lines.push_back(word.substr(0, fit));
      word = word.substr(fit);
    }
    current = word;
  }
  if (!current.empty()) lines.push_back(current);
  if (static_cast<int>(lines.size()) > max_lines) {
    lines.resize(max_lines);
    std::string last = lines.back();
    while (!last.empty() && TextWidth(last + "...", scale) > max_width) last.pop_back();
    lines.back() = last + "...";
  }
  return lines;
}

void DrawLines(cv::Mat& image, const std::vector<std::string>& lines, cv::Point origin,
               double scale, int line_height, const cv::Scalar& color) {
  for (size_t i = 0; i < lines.size(); ++i) {
    const cv::Point baseline(origin.x, origin.y + static_cast<int>(i + 1) * line_height - 4);
    cv::putText(image, lines[i], baseline, kFont, scale, color, 1, cv::LINE_AA);
  }
}

}  // namespace lorad::charts
