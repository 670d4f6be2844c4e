// GPU tests: skip with a message where no CUDA device is present.
//
//   TEST(Gpu, Something) {
//     LORAD_SKIP_WITHOUT_CUDA();
//     ...
//   }
#pragma once

#include <string>

#include <gtest/gtest.h>
#include <torch/cuda.h>

#include "core/common/torch_compat.h"

namespace lorad::testing {

inline std::string NoCudaMessage() {
  return "no CUDA device (LibTorch " + compat::TorchVersion() +
         "): this test runs on a GPU machine (ctest -L cuda; bench/gpu/run.sh)";
}

}  // namespace lorad::testing

#define LORAD_SKIP_WITHOUT_CUDA()                                          \
  do {                                                                     \
    if (!torch::cuda::is_available()) {                                    \
      GTEST_SKIP() << ::lorad::testing::NoCudaMessage();                   \
    }                                                                      \
  } while (0)
