#include "core/common/test_fixtures.h"

#include "core/common/fixtures.h"

namespace lorad::testing {

std::shared_ptr<io::SafetensorsFile> OpenFixture(const std::string& name) {
  auto file = io::SafetensorsFile::Open(FixturePath(name));
  EXPECT_TRUE(file.ok()) << file.status();
  if (!file.ok()) return nullptr;
  return std::shared_ptr<io::SafetensorsFile>(std::move(file).value());
}

torch::Tensor Get(const io::SafetensorsFile& file, const std::string& key) {
  auto t = file.Get(key);
  EXPECT_TRUE(t.ok()) << key << ": " << t.status();
  if (!t.ok()) return torch::Tensor();
  auto v = t->clone();
  if (v.is_floating_point()) return v.to(torch::kFloat32);
  return v;
}

nlohmann::json MetadataJson(const io::SafetensorsFile& file, const std::string& field) {
  auto it = file.metadata().find(field);
  EXPECT_NE(it, file.metadata().end()) << "metadata field " << field;
  if (it == file.metadata().end()) return nlohmann::json();
  return nlohmann::json::parse(it->second);
}

::testing::AssertionResult AllClose(const torch::Tensor& actual, const torch::Tensor& expected, double rtol,
                                    double atol) {
  if (!actual.defined() || !expected.defined()) return ::testing::AssertionFailure() << "undefined tensor";
  if (actual.sizes() != expected.sizes()) {
    return ::testing::AssertionFailure() << "shape " << actual.sizes() << " != " << expected.sizes();
  }
  auto a = actual.detach().to(torch::kCPU, torch::kFloat64);
  auto e = expected.detach().to(torch::kCPU, torch::kFloat64);
  auto excess = (a - e).abs() - (atol + rtol * e.abs());
  auto worst = excess.flatten().argmax().item<int64_t>();
  if (excess.numel() > 0 && excess.flatten()[worst].item<double>() > 0) {
    return ::testing::AssertionFailure()
           << "element " << worst << ": " << a.flatten()[worst].item<double>() << " vs expected "
           << e.flatten()[worst].item<double>() << " (max abs diff " << (a - e).abs().max().item<double>() << ")";
  }
  return ::testing::AssertionSuccess() << "max abs diff "
                                       << (excess.numel() ? (a - e).abs().max().item<double>() : 0.0);
}

}  // namespace lorad::testing
