#include "core/io/safetensors.h"

#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>

#include "core/common/fixtures.h"

namespace lorad::io {
namespace {

namespace fs = std::filesystem;

class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("lorad_io_test_" + std::to_string(::getpid()));
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  fs::path WriteRaw(const std::string& name, const std::string& bytes) {
    auto p = dir_ / name;
    std::ofstream(p, std::ios::binary) << bytes;
    return p;
  }
  // A file image from a header text and a data buffer.
  static std::string Image(const std::string& header, const std::string& data) {
    std::string out(8, '\0');
    uint64_t n = header.size();
    for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xFF);
    return out + header + data;
  }
  std::string OpenError(const std::string& bytes) {
    auto p = WriteRaw("bad.safetensors", bytes);
    auto r = SafetensorsFile::Open(p);
    EXPECT_FALSE(r.ok());
    return r.ok() ? "" : std::string(r.status().message());
  }
  fs::path dir_;
};

TEST_F(SafetensorsTest, RoundTripKeepsValuesDtypesAndMetadata) {
  NamedTensors tensors = {
      {"b.f32", torch::arange(12, torch::kFloat32).view({3, 4})},
      {"a.f16", torch::linspace(-1, 1, 5).to(torch::kHalf)},
      {"c.bf16", torch::randn({2, 3}).to(torch::kBFloat16)},
      {"d.i64", torch::arange(77, torch::kLong).view({1, 77})},
      {"scalar", torch::tensor(4.0f).to(torch::kHalf)},
      {"empty", torch::zeros({0, 3})},
  };
  Metadata meta = {{"ss_network_dim", "8"}, {"modelspec.title", "x"}};
  auto path = dir_ / "rt.safetensors";
  ASSERT_TRUE(WriteSafetensors(path, tensors, meta).ok());
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->metadata(), meta);
  EXPECT_EQ(((*file)->header_size()) % 8, 0u);
  for (const auto& [name, t] : tensors) {
    auto got = (*file)->Get(name);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(got->scalar_type(), t.scalar_type()) << name;
    EXPECT_EQ(got->sizes(), t.sizes()) << name;
    EXPECT_TRUE(torch::equal(*got, t)) << name;
  }
  auto as_f32 = (*file)->Get("a.f16", torch::kFloat32);
  ASSERT_TRUE(as_f32.ok());
  EXPECT_EQ(as_f32->scalar_type(), torch::kFloat32);
  EXPECT_TRUE(torch::allclose(*as_f32, tensors[1].second.to(torch::kFloat32)));
  // The writer leaves no temp file behind, and serialization equals the file bytes.
  int files = 0;
  for (auto& e : fs::directory_iterator(dir_)) files += e.is_regular_file();
  EXPECT_EQ(files, 1);
  auto bytes = SerializeSafetensors(tensors, meta);
  ASSERT_TRUE(bytes.ok());
  EXPECT_EQ(bytes->size(), fs::file_size(path));
}

TEST_F(SafetensorsTest, ViewsAreZeroCopyAndWritesDoNotTouchTheFile) {
  auto path = dir_ / "v.safetensors";
  ASSERT_TRUE(WriteSafetensors(path, {{"w", torch::ones({4, 4})}}, {}).ok());
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok());
  auto a = *(*file)->Get("w");
  auto b = *(*file)->Get("w");
  EXPECT_EQ(a.data_ptr(), b.data_ptr());  // same mapping, no copy
  a.mul_(3);
  file->reset();  // the view keeps the mapping alive
  EXPECT_FLOAT_EQ(a[0][0].item<float>(), 3.0f);
  auto reopened = SafetensorsFile::Open(path);
  EXPECT_FLOAT_EQ((*reopened)->Get("w")->index({0, 0}).item<float>(), 1.0f);
}

TEST_F(SafetensorsTest, EveryMalformedFileIsADistinctClearError) {
  const std::string f32x2 = R"("t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  const std::string data8(8, '\0');
  EXPECT_NE(OpenError("abc").find("too small"), std::string::npos);
  {
    std::string img(8, '\0');
    img[5] = 1;  // huge length
    EXPECT_NE(OpenError(img + "{}").find("100 MB"), std::string::npos);
  }
  {
    std::string img = Image("{}", "");
    img[0] = 100;  // length past the end
    EXPECT_NE(OpenError(img).find("past the end"), std::string::npos);
  }
  EXPECT_NE(OpenError(Image("[1,2]   ", "")).find("does not start with '{'"), std::string::npos);
  EXPECT_NE(OpenError(Image("{\"t\":", "")).find("not valid JSON"), std::string::npos);
  EXPECT_NE(OpenError(Image("{" + f32x2 + "," + f32x2 + "}", data8)).find("twice"), std::string::npos);
  EXPECT_NE(OpenError(Image(R"({"t":{"dtype":"F17","shape":[2],"data_offsets":[0,8]}})", data8))
                .find("unknown dtype 'F17'"),
            std::string::npos);
  EXPECT_NE(OpenError(Image(R"({"t":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", data8))
                .find("shape x itemsize"),
            std::string::npos);
  EXPECT_NE(OpenError(Image(R"({"t":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", data8))
                .find("out of bounds"),
            std::string::npos);
  EXPECT_NE(OpenError(Image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                            R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                            std::string(12, '\0')))
                .find("overlaps"),
            std::string::npos);
  EXPECT_NE(OpenError(Image(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", data8))
                .find("hole"),
            std::string::npos);
  EXPECT_NE(OpenError(Image("{" + f32x2 + "}", std::string(12, '\0'))).find("trailing"), std::string::npos);
  EXPECT_NE(OpenError(Image(R"({"__metadata__":{"a":1}})", "")).find("not a string"), std::string::npos);
  EXPECT_NE(OpenError(Image(R"({"t":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", data8))
                .find("non-negative"),
            std::string::npos);
  auto missing = SafetensorsFile::Open(dir_ / "nope.safetensors");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
}

TEST_F(SafetensorsTest, HeaderPaddingWithSpacesIsAccepted) {
  auto p = WriteRaw("pad.safetensors", Image("{}      ", ""));
  EXPECT_TRUE(SafetensorsFile::Open(p).ok());
}

TEST_F(SafetensorsTest, Float8E4M3DecodesToFloat) {
  // 0x38 = 1.0, 0xC0 = -2.0, 0x01 = smallest subnormal 2^-9.
  std::string data = {'\x38', '\xC0', '\x01', '\x00'};
  auto p = WriteRaw("f8.safetensors",
                    Image(R"({"t":{"dtype":"F8_E4M3","shape":[4],"data_offsets":[0,4]}})", data));
  auto file = SafetensorsFile::Open(p);
  ASSERT_TRUE(file.ok()) << file.status();
  auto t = *(*file)->Get("t");
  EXPECT_FLOAT_EQ(t[0].item<float>(), 1.0f);
  EXPECT_FLOAT_EQ(t[1].item<float>(), -2.0f);
  EXPECT_FLOAT_EQ(t[2].item<float>(), std::ldexp(1.0f, -9));
  EXPECT_FLOAT_EQ(t[3].item<float>(), 0.0f);
}

TEST_F(SafetensorsTest, ReadsTheSharedFixtures) {
  auto file = SafetensorsFile::Open(FixturePath("tiny_sdxl.safetensors"));
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_TRUE((*file)->metadata().count("fixture_config"));
  EXPECT_GT((*file)->tensors().size(), 100u);
}

}  // namespace
}  // namespace lorad::io
