// Test helpers: small images drawn with OpenCV, including the awkward kinds
// (alpha, 16-bit, grayscale, EXIF-rotated JPEG, truncated JPEG).
#pragma once

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <unistd.h>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <zlib.h>

namespace lorad::data::testing {

inline void WriteText(const std::filesystem::path& p, const std::string& text) {
  std::ofstream(p, std::ios::binary) << text;
}

inline std::string ReadAll(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// A BGR picture with a few shapes; `variant` changes the drawing.
inline cv::Mat Drawing(int w, int h, int variant) {
  cv::Mat img(h, w, CV_8UC3, cv::Scalar(40 + 20 * (variant % 5), 90, 160));
  cv::circle(img, {w / 3 + variant * 3 % (w / 3 + 1), h / 2}, std::max(2, std::min(w, h) / 4),
             cv::Scalar(20 * variant % 255, 200, 30), -1);
  cv::rectangle(img, {w / 2, h / 5}, {w - 2, h / 2 + variant % (h / 3 + 1)}, cv::Scalar(250, 30, 200 - variant), -1);
  cv::line(img, {0, h - 1 - variant % h}, {w - 1, variant % h}, cv::Scalar(0, 0, 0), 2);
  return img;
}

inline void WriteImage(const std::filesystem::path& p, const cv::Mat& img) { cv::imwrite(p.string(), img); }

// A JPEG with an EXIF APP1 segment carrying orientation `orientation`.
inline void WriteJpegWithOrientation(const std::filesystem::path& p, const cv::Mat& img, int orientation) {
  std::vector<uchar> jpg;
  cv::imencode(".jpg", img, jpg, {cv::IMWRITE_JPEG_QUALITY, 95});
  // TIFF (little endian): header, IFD0 with one entry 0x0112 SHORT = orientation.
  std::string tiff("II\x2a\x00\x08\x00\x00\x00", 8);
  tiff += std::string("\x01\x00", 2);                                             // 1 entry
  tiff += std::string("\x12\x01\x03\x00\x01\x00\x00\x00", 8);                     // tag, type, count
  tiff += std::string(1, char(orientation)) + std::string("\x00\x00\x00", 3);     // value
  tiff += std::string("\x00\x00\x00\x00", 4);                                     // next IFD
  const std::string payload = std::string("Exif\0\0", 6) + tiff;
  const size_t len = payload.size() + 2;
  std::string app1 = std::string("\xFF\xE1", 2) + char(len >> 8) + char(len & 0xFF) + payload;
  std::string out(jpg.begin(), jpg.begin() + 2);
  out += app1;
  out.append(jpg.begin() + 2, jpg.end());
  WriteText(p, out);
}

// A PNG (any channels) with an eXIf chunk carrying orientation `orientation`.
inline void WritePngWithOrientation(const std::filesystem::path& p, const cv::Mat& img, int orientation) {
  std::vector<uchar> png;
  cv::imencode(".png", img, png);
  std::string tiff("MM\x00\x2a\x00\x00\x00\x08", 8);
  tiff += std::string("\x00\x01", 2);
  tiff += std::string("\x01\x12\x00\x03\x00\x00\x00\x01", 8);
  tiff += std::string("\x00", 1) + std::string(1, char(orientation)) + std::string("\x00\x00", 2);
  tiff += std::string("\x00\x00\x00\x00", 4);
  const std::string body = "eXIf" + tiff;
  const uLong crc = crc32(0L, reinterpret_cast<const Bytef*>(body.data()), static_cast<uInt>(body.size()));
  auto be32 = [](uint32_t v) {
    return std::string{char(v >> 24), char((v >> 16) & 0xFF), char((v >> 8) & 0xFF), char(v & 0xFF)};
  };
  const std::string chunk = be32(static_cast<uint32_t>(tiff.size())) + body + be32(static_cast<uint32_t>(crc));
  std::string out(png.begin(), png.begin() + 33);  // signature + IHDR
  out += chunk;
  out.append(png.begin() + 33, png.end());
  WriteText(p, out);
}

// A JPEG cut off in the middle of its image data.
inline void WriteTruncatedJpeg(const std::filesystem::path& p, const cv::Mat& img) {
  std::vector<uchar> jpg;
  cv::imencode(".jpg", img, jpg);
  WriteText(p, std::string(jpg.begin(), jpg.begin() + jpg.size() / 2));
}

// A fresh temp folder removed at scope exit.
class TempDir {
 public:
  TempDir() {
    path_ = std::filesystem::temp_directory_path() /
            ("lorad_data_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter()++));
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  const std::filesystem::path& path() const { return path_; }

 private:
  static int& counter() {
    static int c = 0;
    return c;
  }
  std::filesystem::path path_;
};

}  // namespace lorad::data::testing
