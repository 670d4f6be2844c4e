// PNG writer, fp16 loss scaler, checkpoint naming and pruning.
#include <zlib.h>

#include <fstream>

#include <gtest/gtest.h>

#include "core/train/checkpoint_files.h"
#include "core/train/loss_scaler.h"
#include "core/train/png.h"
#include "core/base/testing/scoped_temp_dir.h"

namespace lorad::train {
namespace {

uint32_t ReadU32(const std::string& s, size_t at) {
  return (uint32_t(uint8_t(s[at])) << 24) | (uint32_t(uint8_t(s[at + 1])) << 16) |
         (uint32_t(uint8_t(s[at + 2])) << 8) | uint32_t(uint8_t(s[at + 3]));
}

TEST(PngTest, EncodesRgbThatDecodesBack) {
  torch::Tensor image = torch::rand({3, 5, 7}, torch::TensorOptions().dtype(torch::kFloat32));
  auto png = EncodePng(image);
  ASSERT_TRUE(png.ok()) << png.status();
  ASSERT_EQ(png->substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
  EXPECT_EQ(png->substr(12, 4), "IHDR");
  EXPECT_EQ(ReadU32(*png, 16), 7u);  // width
  EXPECT_EQ(ReadU32(*png, 20), 5u);  // height
  const size_t idat = png->find("IDAT");
  ASSERT_NE(idat, std::string::npos);
  const uint32_t length = ReadU32(*png, idat - 4);
  const std::string compressed = png->substr(idat + 4, length);
  // Each chunk's CRC covers type + data.
  const uint32_t crc = static_cast<uint32_t>(crc32(0, reinterpret_cast<const Bytef*>(png->data() + idat), length + 4));
  EXPECT_EQ(ReadU32(*png, idat + 4 + length), crc);
  std::string raw(5 * (7 * 3 + 1), '\0');
  uLongf raw_size = raw.size();
  ASSERT_EQ(uncompress(reinterpret_cast<Bytef*>(raw.data()), &raw_size,
                       reinterpret_cast<const Bytef*>(compressed.data()), compressed.size()),
            Z_OK);
  ASSERT_EQ(raw_size, raw.size());
  const torch::Tensor expected = (image.permute({1, 2, 0}) * 255).round().to(torch::kUInt8).contiguous();
  for (int y = 0; y < 5; ++y) {
    EXPECT_EQ(raw[static_cast<size_t>(y) * 22], '\0');  // filter byte
    for (int i = 0; i < 21; ++i) {
      EXPECT_EQ(uint8_t(raw[static_cast<size_t>(y) * 22 + 1 + i]), expected.data_ptr<uint8_t>()[y * 21 + i]);
    }
  }
  EXPECT_FALSE(EncodePng(torch::rand({4, 5, 7})).ok());
}

TEST(LossScalerTest, SkipsInfStepsAndBacksOffThenGrows) {
  DynamicLossScaler scaler(1024.0, /*growth_interval=*/2);
  torch::Tensor p = torch::zeros({3}, torch::requires_grad());
  p.mutable_grad() = torch::tensor({2048.0f, 1024.0f, std::numeric_limits<float>::infinity()});
  EXPECT_FALSE(scaler.UnscaleAndCheck({p}));
  scaler.Update(true);
  EXPECT_DOUBLE_EQ(scaler.scale(), 512.0);
  p.mutable_grad() = torch::tensor({512.0f, 256.0f, 0.0f});
  EXPECT_TRUE(scaler.UnscaleAndCheck({p}));
  EXPECT_TRUE(torch::equal(p.grad(), torch::tensor({1.0f, 0.5f, 0.0f})));
  scaler.Update(false);
  EXPECT_DOUBLE_EQ(scaler.scale(), 512.0);
  scaler.Update(false);
  EXPECT_DOUBLE_EQ(scaler.scale(), 1024.0);  // grew after 2 clean steps
  DynamicLossScaler restored;
  ASSERT_TRUE(restored.LoadState(scaler.SaveState()).ok());
  EXPECT_DOUBLE_EQ(restored.scale(), 1024.0);
  EXPECT_FALSE(restored.LoadState({}).ok());
}

TEST(CheckpointFilesTest, KohyaNamesAndPruning) {
  const lorad::testing::ScopedTempDir tmp("lorad_ckpt_names_test");
  const std::filesystem::path& dir = tmp.path();
  CheckpointNames names(dir, "mylora");
  EXPECT_EQ(names.FinalLora().filename(), "mylora.safetensors");
  EXPECT_EQ(names.StepLora(30).filename(), "mylora-step00000030.safetensors");
  EXPECT_EQ(names.EpochLora(2).filename(), "mylora-000002.safetensors");
  EXPECT_EQ(names.StepState(30).filename(), "mylora-step00000030-state");
  EXPECT_EQ(names.LastState().filename(), "mylora-state");
  EXPECT_EQ(names.Sample(30, 2).filename(), "mylora_000030_02.png");
  for (int step : {10, 20, 30, 40}) {
    std::ofstream(names.StepLora(step)) << "x";
    std::filesystem::create_directories(names.StepState(step));
  }
  std::ofstream(names.FinalLora()) << "x";
  CheckpointRegistry registry;
  registry.RemoveOldSteps(names, 40, /*keep_lora=*/20, /*keep_state=*/10);
  EXPECT_FALSE(std::filesystem::exists(names.StepLora(10)));
  EXPECT_FALSE(std::filesystem::exists(names.StepLora(20)));
  EXPECT_TRUE(std::filesystem::exists(names.StepLora(30)));
  EXPECT_TRUE(std::filesystem::exists(names.StepLora(40)));
  EXPECT_FALSE(std::filesystem::exists(names.StepState(30)));
  EXPECT_TRUE(std::filesystem::exists(names.StepState(40)));
  EXPECT_TRUE(std::filesystem::exists(names.FinalLora()));
  for (int epoch : {1, 2, 3, 4}) std::ofstream(names.EpochLora(epoch)) << "x";
  registry.RemoveOldEpochs(names, 4, 1, /*keep_lora=*/2, std::nullopt);
  EXPECT_FALSE(std::filesystem::exists(names.EpochLora(2)));
  EXPECT_TRUE(std::filesystem::exists(names.EpochLora(3)));
}



}  // namespace
}  // namespace lorad::train
