// Out-of-memory errors become a RESOURCE_EXHAUSTED status that says what was
// being done and what to try; the device stays usable afterwards.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "core/common/out_of_memory.h"
#include "tests/cuda/cuda_test_support.h"

namespace lorad {
namespace {

constexpr char kWhat[] = "a training step with train_batch_size=64 at 1024x1024";
constexpr char kAdvice[] = "lower train_batch_size or enable gradient_checkpointing";

TEST(OutOfMemoryTest, CudaAllocationPastTheDeviceIsResourceExhausted) {
  LORAD_SKIP_WITHOUT_CUDA();
  const torch::Device cuda(torch::kCUDA, 0);
  // 4 TiB: more than any GPU has.
  absl::Status status = CatchOutOfMemory(kWhat, kAdvice, [&]() -> absl::Status {
    (void)torch::empty({int64_t{1} << 41}, torch::TensorOptions().dtype(torch::kBFloat16).device(cuda));
    return absl::OkStatus();
  });
  ASSERT_EQ(status.code(), absl::StatusCode::kResourceExhausted) << status;
  EXPECT_NE(status.message().find(kWhat), std::string::npos) << status;
  EXPECT_NE(status.message().find(kAdvice), std::string::npos) << status;
  EXPECT_NE(status.message().find("out of memory"), std::string::npos) << status;
  EXPECT_EQ(status.message().find('\n'), std::string::npos) << "one line, no backtrace: " << status;

  // The failed allocation leaves the device usable.
  torch::Tensor x = torch::ones({1024, 1024}, torch::TensorOptions().device(cuda));
  EXPECT_EQ((x.matmul(x)).sum().item<double>(), 1024.0 * 1024.0 * 1024.0);
}

TEST(OutOfMemoryTest, ErrorsAreClassified) {
  // What LibTorch's allocators throw, without a GPU.
  const c10::SourceLocation here{__func__, __FILE__, static_cast<uint32_t>(__LINE__)};
  const c10::OutOfMemoryError cuda_oom(here, "CUDA out of memory. Tried to allocate 4.00 TiB.\nmore detail");
  const c10::Error cpu_oom(here, "DefaultCPUAllocator: can't allocate memory: you tried to allocate 4398046511104 bytes.");
  const c10::Error shape(here, "mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)");
  EXPECT_TRUE(IsOutOfMemoryError(cuda_oom));
  EXPECT_TRUE(IsOutOfMemoryError(cpu_oom));
  EXPECT_FALSE(IsOutOfMemoryError(shape));

  absl::Status oom = OutOfMemoryStatus(cuda_oom, kWhat, kAdvice);
  EXPECT_EQ(oom.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(oom.message().find("Tried to allocate 4.00 TiB"), std::string::npos) << oom;
  EXPECT_EQ(oom.message().find("more detail"), std::string::npos) << "first line only: " << oom;

  absl::Status other = CatchOutOfMemory(kWhat, kAdvice, [&]() -> absl::Status { throw shape; });
  EXPECT_EQ(other.code(), absl::StatusCode::kInternal) << other;
  EXPECT_NE(other.message().find("shapes cannot be multiplied"), std::string::npos) << other;
}

}  // namespace
}  // namespace lorad
