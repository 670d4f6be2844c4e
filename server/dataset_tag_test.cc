// TagDataset's confinement and argument checks (server/dataset_tag.h); the
// whole RPC runs in tests/daemon_integration_test.cc.
#include "server/dataset_tag.h"

#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>

#include "core/base/testing/scoped_temp_dir.h"

namespace lorad::server {
namespace {
namespace fs = std::filesystem;

TEST(ResolveModelsFile, OnlyRealFilesInsideTheModelsRoot) {
  testing::ScopedTempDir tmp("lorad_tag_paths");
  const fs::path root = fs::canonical(tmp.path()) / "models";
  fs::create_directories(root / "wd14");
  std::ofstream(root / "wd14" / "model.onnx") << "x";
  std::ofstream(tmp.path() / "outside.onnx") << "x";
  auto ok = ResolveModelsFile(root, "wd14/model.onnx", "model");
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(*ok, root / "wd14" / "model.onnx");
  for (const std::string bad : {"../outside.onnx", "/etc/passwd", "wd14/../../outside.onnx", "", "wd14\\model.onnx"}) {
    EXPECT_EQ(ResolveModelsFile(root, bad, "model").status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  EXPECT_EQ(ResolveModelsFile(root, "wd14/none.onnx", "model").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(ResolveModelsFile(root, "wd14", "model").status().code(), absl::StatusCode::kInvalidArgument);
  fs::create_symlink(tmp.path() / "outside.onnx", root / "wd14" / "link.onnx");
  fs::create_directory_symlink(tmp.path(), root / "linkdir");
  auto link = ResolveModelsFile(root, "wd14/link.onnx", "model");
  EXPECT_EQ(link.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_NE(link.status().message().find("symbolic link"), std::string::npos);
  EXPECT_EQ(ResolveModelsFile(root, "linkdir/outside.onnx", "model").status().code(),
            absl::StatusCode::kPermissionDenied);
}

TEST(TagArguments, MapsTheRequestAndRefusesBadValues) {
  lorad::v1::TagDatasetRequest request;
  request.set_threshold(0.5f);
  request.set_trigger("mychar");
  request.set_mode("overwrite");
  request.set_keep_tokens(2);
  request.set_caption_extension("caption");
  request.add_undesired_tags("solo");
  request.add_undesired_tags("smile");
  request.set_use_rating_tags(true);
  auto args = TagArguments(request, "/m/model.onnx", "/m/tags.csv");
  ASSERT_TRUE(args.ok()) << args.status();
  EXPECT_EQ(*args, (std::vector<std::string>{"--model", "/m/model.onnx", "--tags", "/m/tags.csv", "--json",
                                             "--threshold", "0.5", "--mode", "overwrite", "--keep-tokens", "2",
                                             "--trigger", "mychar", "--caption-extension", ".caption",
                                             "--undesired-tags", "solo,smile", "--use-rating-tags"}));
  auto refuse = [&](auto mutate) {
    lorad::v1::TagDatasetRequest bad = request;
    mutate(bad);
    return TagArguments(bad, "/m/model.onnx", "/m/tags.csv").status().code();
  };
  EXPECT_EQ(refuse([](auto& r) { r.set_mode("append"); }), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(refuse([](auto& r) { r.set_threshold(-0.1f); }), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(refuse([](auto& r) { r.set_keep_tokens(-1); }), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(refuse([](auto& r) { r.set_trigger("a, b"); }), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(refuse([](auto& r) { r.set_caption_extension("../x"); }), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace lorad::server
