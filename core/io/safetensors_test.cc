#include "core/io/safetensors.h"

#include <filesystem>
#include <fstream>
#include <map>

#include <gtest/gtest.h>

#include "core/base/status_macros.h"
#include "core/base/testing/scoped_temp_dir.h"
#include "core/common/fixtures.h"

namespace lorad::io {
namespace {

namespace fs = std::filesystem;

using Access = SafetensorsFile::Access;

class SafetensorsTest : public ::testing::Test {
 protected:

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
  // The error opening `bytes`; both access patterns run the same validator,
  // so they must give the same message.
  std::string OpenError(const std::string& bytes) {
    auto p = WriteRaw("bad.safetensors", bytes);
    auto mapped = SafetensorsFile::Open(p, Access::kMapped);
    auto streamed = SafetensorsFile::Open(p, Access::kStreamed);
    EXPECT_FALSE(mapped.ok());
    EXPECT_FALSE(streamed.ok());
    if (mapped.ok() || streamed.ok()) return "";
    EXPECT_EQ(mapped.status(), streamed.status());
    return std::string(mapped.status().message());
  }
  lorad::testing::ScopedTempDir dir_{"lorad_io_test"};
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
  for (auto& e : fs::directory_iterator(dir_.path())) files += e.is_regular_file();
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
  for (Access access : {Access::kMapped, Access::kStreamed}) {
    auto missing = SafetensorsFile::Open(dir_ / "nope.safetensors", access);
    EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
    auto folder = SafetensorsFile::Open(dir_.path(), access);
    EXPECT_EQ(folder.status().code(), absl::StatusCode::kInvalidArgument);
  }
}

// The hostile headers of the hardening report (issue 16): each is a clear
// error, none a crash, and none takes long.
TEST_F(SafetensorsTest, HostileHeadersAreRefusedWithoutCrashing) {
  // A shape nested 100,000 deep (was a stack overflow in the JSON library).
  const std::string deep_shape =
      R"({"t":{"dtype":"F32","shape":)" + std::string(100000, '[') + std::string(100000, ']') +
      R"(,"data_offsets":[0,0]}})";
  EXPECT_NE(OpenError(Image(deep_shape, "")).find("nested more than"), std::string::npos);
  // Metadata nested 1,000,000 deep.
  const std::string deep_meta = R"({"__metadata__":{"fixture_config":)" + std::string(1000000, '{') +
                                std::string(1000000, '}') + "}}";
  EXPECT_NE(OpenError(Image(deep_meta, "")).find("nested more than"), std::string::npos);
  // A NUL (or anything but spaces) after the JSON.
  EXPECT_NE(OpenError(Image(std::string("{}") + '\0' + "     ", "")).find("0x00 after its JSON"), std::string::npos);
  EXPECT_NE(OpenError(Image("{} x", "")).find("only spaces may pad"), std::string::npos);
  EXPECT_NE(OpenError(Image("{\"t\": {", "")).find("not closed"), std::string::npos);
  // A rank above any model's.
  EXPECT_NE(OpenError(Image(R"({"t":{"dtype":"F32","shape":[1,1,1,1,1,1,1,1,1],"data_offsets":[0,4]}})",
                            std::string(4, '\0')))
                .find("rank 9"),
            std::string::npos);
  // 300,000 zero-size tensors (was killed after more than 20 s): refused at
  // the count limit while parsing.
  std::string many = "{";
  for (int i = 0; i < 300000; ++i) {
    if (i > 0) many += ",";
    many += "\"t" + std::to_string(i) + R"(":{"dtype":"F32","shape":[0],"data_offsets":[0,0]})";
  }
  many += "}";
  EXPECT_NE(OpenError(Image(many, "")).find("more than 100000 tensors"), std::string::npos);
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

// Tensors of every stored dtype, including those LibTorch lacks (written raw).
std::string EveryDtypeImage() {
  std::string header =
      R"({"i64":{"dtype":"I64","shape":[1],"data_offsets":[0,8]},)"
      R"("f32":{"dtype":"F32","shape":[2],"data_offsets":[8,16]},)"
      R"("f16":{"dtype":"F16","shape":[2,2],"data_offsets":[16,24]},)"
      R"("u32":{"dtype":"U32","shape":[1],"data_offsets":[24,28]},)"
      R"("u16":{"dtype":"U16","shape":[2],"data_offsets":[28,32]},)"
      R"("e5m2":{"dtype":"F8_E5M2","shape":[2],"data_offsets":[32,34]},)"
      R"("e4m3":{"dtype":"F8_E4M3","shape":[2],"data_offsets":[34,36]},)"
      R"("empty":{"dtype":"F32","shape":[0,3],"data_offsets":[36,36]}})";
  header.append((8 - header.size() % 8) % 8, ' ');  // keep the data 8-byte aligned
  std::string data;
  data += std::string("\x07\x00\x00\x00\x00\x00\x00\x00", 8);  // I64 7
  data += std::string("\x00\x00\x80\x3F\x00\x00\x00\xC0", 8);  // F32 1, -2
  data += std::string("\x00\x3C\x00\x40\x00\xC2\x00\x00", 8);  // F16 1, 2, -3, 0
  data += std::string("\xFF\xFF\xFF\xFF", 4);                      // U32 4294967295
  data += std::string("\xFF\xFF\x01\x00", 4);                      // U16 65535, 1
  data += std::string("\x3C\xC0", 2);                                // E5M2 1.0, -2.0
  data += std::string("\x38\x40", 2);                                // E4M3 1.0, 2.0
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((header.size() >> (8 * i)) & 0xFF);
  return out + header + data;
}

TEST_F(SafetensorsTest, StreamedAndMappedReadTheSameValuesForEveryDtype) {
  auto p = WriteRaw("all.safetensors", EveryDtypeImage());
  auto mapped = SafetensorsFile::Open(p, Access::kMapped);
  auto streamed = SafetensorsFile::Open(p, Access::kStreamed);
  ASSERT_TRUE(mapped.ok()) << mapped.status();
  ASSERT_TRUE(streamed.ok()) << streamed.status();
  EXPECT_EQ((*streamed)->access(), Access::kStreamed);
  EXPECT_EQ((*mapped)->header_size(), (*streamed)->header_size());
  EXPECT_EQ((*mapped)->Names(), (*streamed)->Names());
  for (const auto& name : (*mapped)->Names()) {
    auto m = (*mapped)->Get(name);
    auto s = (*streamed)->Get(name);
    ASSERT_TRUE(m.ok() && s.ok()) << name;
    EXPECT_EQ(m->scalar_type(), s->scalar_type()) << name;
    EXPECT_EQ(m->sizes(), s->sizes()) << name;
    EXPECT_TRUE(torch::equal(*m, *s)) << name;
    EXPECT_EQ(*(*mapped)->DTypeName(name), *(*streamed)->DTypeName(name)) << name;
  }
  auto& f = **streamed;
  EXPECT_EQ(f.Get("u16")->scalar_type(), torch::kInt);
  EXPECT_EQ(f.Get("u16")->index({0}).item<int>(), 65535);
  EXPECT_EQ(f.Get("u32")->index({0}).item<int64_t>(), 4294967295LL);
  EXPECT_FLOAT_EQ(f.Get("e5m2")->index({1}).item<float>(), -2.0f);
  EXPECT_FLOAT_EQ(f.Get("e4m3")->index({1}).item<float>(), 2.0f);
  EXPECT_FLOAT_EQ(f.Get("f16")->index({1, 0}).item<float>(), -3.0f);
  EXPECT_EQ(f.Get("i64")->index({0}).item<int64_t>(), 7);
  auto f32_as_f64 = f.Get("f32", torch::kFloat64);
  ASSERT_TRUE(f32_as_f64.ok());
  EXPECT_EQ(f32_as_f64->scalar_type(), torch::kFloat64);
  EXPECT_DOUBLE_EQ(f32_as_f64->index({1}).item<double>(), -2.0);
  // Streamed tensors are fresh copies, not views of shared memory.
  EXPECT_NE(f.Get("f32")->data_ptr(), f.Get("f32")->data_ptr());
}

TEST_F(SafetensorsTest, StreamedReadIntoFillsTheCallersTensor) {
  const auto weights = torch::arange(12, torch::kFloat32).view({3, 4});
  auto p = dir_ / "w.safetensors";
  ASSERT_TRUE(WriteSafetensors(p, {{"w", weights}, {"h", weights.to(torch::kHalf)}}, {}).ok());
  auto file = SafetensorsFile::Open(p, Access::kStreamed);
  ASSERT_TRUE(file.ok()) << file.status();
  const SafetensorsFile& f = **file;

  // Same dtype, contiguous CPU: read straight into dst's own memory.
  auto dst = torch::zeros({3, 4});
  const void* before = dst.data_ptr();
  ASSERT_TRUE(f.ReadInto("w", dst).ok());
  EXPECT_EQ(dst.data_ptr(), before);
  EXPECT_TRUE(torch::equal(dst, weights));
  // Converted (F16 -> F32), reshaped (same element count), non-contiguous.
  auto converted = torch::zeros({3, 4});
  ASSERT_TRUE(f.ReadInto("h", converted).ok());
  EXPECT_TRUE(torch::equal(converted, weights));
  auto flat = torch::zeros({12}, torch::kFloat64);
  ASSERT_TRUE(f.ReadInto("w", flat).ok());
  EXPECT_TRUE(torch::equal(flat, weights.flatten().to(torch::kFloat64)));
  auto transposed = torch::zeros({4, 3}).t();
  ASSERT_FALSE(transposed.is_contiguous());
  ASSERT_TRUE(f.ReadInto("w", transposed).ok());
  EXPECT_TRUE(torch::equal(transposed, weights));
  // A parameter that requires grad is filled without recording autograd history.
  auto param = torch::zeros({3, 4}, torch::requires_grad());
  ASSERT_TRUE(f.ReadInto("h", param).ok());
  EXPECT_TRUE(torch::equal(param.detach(), weights));

  auto wrong = torch::zeros({5});
  EXPECT_EQ(f.ReadInto("w", wrong).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(f.ReadInto("nope", dst).code(), absl::StatusCode::kNotFound);

  // The mapped file offers the same call (a copy from the mapping).
  auto mapped = SafetensorsFile::Open(p, Access::kMapped);
  ASSERT_TRUE(mapped.ok());
  auto from_mapping = torch::zeros({3, 4});
  ASSERT_TRUE((*mapped)->ReadInto("h", from_mapping).ok());
  EXPECT_TRUE(torch::equal(from_mapping, weights));
}

TEST_F(SafetensorsTest, UnknownNamesAreNullNotFoundOrNullopt) {
  auto p = dir_ / "one.safetensors";
  ASSERT_TRUE(WriteSafetensors(p, {{"b", torch::ones({2})}, {"a", torch::ones({3}, torch::kLong)}}, {}).ok());
  for (Access access : {Access::kMapped, Access::kStreamed}) {
    auto file = SafetensorsFile::Open(p, access);
    ASSERT_TRUE(file.ok());
    const SafetensorsFile& f = **file;
    EXPECT_EQ(f.Find("x"), nullptr);
    EXPECT_FALSE(f.Has("x"));
    EXPECT_EQ(f.Shape("x").status().code(), absl::StatusCode::kNotFound);
    EXPECT_EQ(f.Get("x").status().code(), absl::StatusCode::kNotFound);
    EXPECT_NE(f.Get("x").status().message().find("'x'"), std::string::npos);
    EXPECT_EQ(f.DTypeName("x").status().code(), absl::StatusCode::kNotFound);
    EXPECT_EQ(f.DataOffset("x"), std::nullopt);
    // Known names: the offset is the entry's begin (I64 "a" is written first: larger dtype first).
    ASSERT_NE(f.Find("b"), nullptr);
    EXPECT_EQ(f.DataOffset("a"), 0u);
    EXPECT_EQ(f.DataOffset("b"), f.Find("b")->begin);
    EXPECT_EQ(f.DataOffset("b"), 24u);
  }
}

// A source with no file behind it: the TensorSource defaults.
class MapSource : public TensorSource {
 public:
  explicit MapSource(std::map<std::string, torch::Tensor> tensors) : tensors_(std::move(tensors)) {}
  std::vector<std::string> Names() const override {
    std::vector<std::string> names;
    for (const auto& [k, v] : tensors_) names.push_back(k);
    return names;
  }
  bool Has(std::string_view name) const override { return tensors_.count(std::string(name)) > 0; }
  absl::StatusOr<std::vector<int64_t>> Shape(std::string_view name) const override {
    ASSIGN_OR_RETURN(auto t, Get(name));
    return t.sizes().vec();
  }
  absl::StatusOr<torch::Tensor> Get(std::string_view name,
                                    std::optional<torch::ScalarType> dtype = std::nullopt) const override {
    auto it = tensors_.find(std::string(name));
    if (it == tensors_.end()) return absl::NotFoundError(std::string(name));
    return dtype ? it->second.to(*dtype) : it->second;
  }
  absl::StatusOr<std::string> DTypeName(std::string_view) const override { return std::string("F32"); }

 private:
  std::map<std::string, torch::Tensor> tensors_;
};

TEST(TensorSourceTest, DefaultReadIntoCopiesThroughGetAndHasNoFileOrder) {
  const auto t = torch::arange(6, torch::kFloat32);
  MapSource source({{"t", t}});
  auto dst = torch::zeros({2, 3}, torch::kHalf);
  ASSERT_TRUE(source.ReadInto("t", dst).ok());
  EXPECT_TRUE(torch::equal(dst, t.view({2, 3}).to(torch::kHalf)));
  auto wrong = torch::zeros({4});
  EXPECT_EQ(source.ReadInto("t", wrong).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(source.ReadInto("u", dst).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(source.DataOffset("t"), std::nullopt);
}

TEST_F(SafetensorsTest, ReadsTheSharedFixtures) {
  auto file = SafetensorsFile::Open(FixturePath("tiny_sdxl.safetensors"));
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_TRUE((*file)->metadata().count("fixture_config"));
  EXPECT_GT((*file)->tensors().size(), 100u);
}

}  // namespace
}  // namespace lorad::io
