// channels_last and cudnn.benchmark are CUDA-only: the CPU keeps its layout
// (and so its results); on a GPU the U-Net's convolutions switch to NHWC.
#include "core/train/cuda_tuning.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "tests/cuda/cuda_test_support.h"

namespace lorad::train {
namespace {

TEST(CudaTuningTest, CpuModulesAndTensorsAreLeftAlone) {
  torch::nn::Conv2d conv(torch::nn::Conv2dOptions(4, 8, 3));
  const bool benchmark_before = at::globalContext().benchmarkCuDNN();
  TuneForCuda(*conv, torch::Device(torch::kCPU));
  EXPECT_TRUE(conv->weight.is_contiguous());
  EXPECT_EQ(at::globalContext().benchmarkCuDNN(), benchmark_before);
  torch::Tensor x = torch::randn({2, 4, 8, 8});
  EXPECT_TRUE(ChannelsLastOnCuda(x).is_same(x));
}

TEST(CudaTuningTest, CudaConvolutionsRunChannelsLastWithTheSameResult) {
  LORAD_SKIP_WITHOUT_CUDA();
  const torch::Device cuda(torch::kCUDA, 0);
  // cuDNN may run float32 convolutions in TF32 (LibTorch's default), whose
  // rounding differs by algorithm and so by layout: compare in full float32.
  const bool tf32_before = at::globalContext().allowTF32CuDNN();
  at::globalContext().setAllowTF32CuDNN(false);
  struct RestoreTf32 {
    bool value;
    ~RestoreTf32() { at::globalContext().setAllowTF32CuDNN(value); }
  } restore{tf32_before};
  torch::manual_seed(3);
  torch::nn::Conv2d conv(torch::nn::Conv2dOptions(4, 8, 3).padding(1));
  conv->to(cuda);
  torch::Tensor x = torch::randn({2, 4, 16, 16}, torch::TensorOptions().device(cuda));
  const torch::Tensor reference = conv->forward(x).cpu();
  TuneForCuda(*conv, cuda);
  EXPECT_TRUE(at::globalContext().benchmarkCuDNN());
  EXPECT_TRUE(conv->weight.is_contiguous(torch::MemoryFormat::ChannelsLast));
  torch::Tensor nhwc = ChannelsLastOnCuda(x);
  EXPECT_TRUE(nhwc.is_contiguous(torch::MemoryFormat::ChannelsLast));
  torch::Tensor y = conv->forward(nhwc);
  EXPECT_TRUE(torch::allclose(y.cpu(), reference, 1e-4, 1e-5));
  // Gradients still reach the (channels_last) weight.
  y.sum().backward();
  ASSERT_TRUE(conv->weight.grad().defined());
  EXPECT_TRUE(torch::isfinite(conv->weight.grad()).all().item<bool>());
}

}  // namespace
}  // namespace lorad::train
