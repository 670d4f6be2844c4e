// The fused CPU AdamW8bit kernel against the torch-ops version: same codes,
// absmax and parameters, bit for bit.
#include "core/optim/adamw8bit_kernel.h"

#include <cmath>
#include <cstring>
#include <limits>

#include <gtest/gtest.h>

namespace lorad::optim {
namespace {

// The lookup table with its +-1 correction equals torch.searchsorted over the
// midpoints for map entries, midpoints, their float neighbours, special values
// and random bit patterns.
TEST(Adam8bitKernel, LookupEqualsSearchSorted) {
  DynamicMaps maps;
  const DynamicMaps::OnDevice& q = maps.On(torch::kCPU);
  std::vector<float> xs = {0.0f, -0.0f, 1.0f, -1.0f, 2.0f, -2.0f, INFINITY, -INFINITY, NAN, -NAN,
                           std::numeric_limits<float>::denorm_min(), std::numeric_limits<float>::max()};
  for (const torch::Tensor& t : {q.qmap1, q.qmap2, q.mid1, q.mid2}) {
    for (int64_t i = 0; i < t.numel(); ++i) {
      const float v = t[i].item<float>();
      for (float x : {v, -v, std::nextafter(v, INFINITY), std::nextafter(v, -INFINITY)}) xs.push_back(x);
    }
  }
  torch::manual_seed(3);
  torch::Tensor bits = torch::randint(std::numeric_limits<int32_t>::min(), std::numeric_limits<int32_t>::max(),
                                      {200000}, torch::kInt);
  torch::Tensor random = bits.view(torch::kFloat);
  xs.insert(xs.end(), random.data_ptr<float>(), random.data_ptr<float>() + random.numel());
  torch::Tensor uniform = torch::rand({200000}) * 2 - 1;
  xs.insert(xs.end(), uniform.data_ptr<float>(), uniform.data_ptr<float>() + uniform.numel());
  torch::Tensor x = torch::tensor(xs);
  for (bool is_signed : {true, false}) {
    torch::Tensor ref = torch::searchsorted(is_signed ? q.mid1 : q.mid2, x, /*out_int32=*/true);
    int mismatches = 0;
    for (int64_t i = 0; i < x.numel(); ++i) {
      const int ours = maps.NearestCode(is_signed, xs[i]);
      const int expected = ref[i].item<int>();
      if (ours != expected && ++mismatches <= 5) {
        ADD_FAILURE() << (is_signed ? "signed" : "unsigned") << " x=" << xs[i] << " code " << ours << " vs "
                      << expected;
      }
    }
    EXPECT_EQ(mismatches, 0);
  }
}

struct PathRun {
  torch::Tensor param;
  Adam8bitState state;
};

PathRun NewRun(const torch::Tensor& init) {
  const int64_t n = init.numel(), blocks = (n + kAdam8bitBlock - 1) / kAdam8bitBlock;
  return {init.clone(),
          {torch::zeros({n}, torch::kUInt8), torch::zeros({n}, torch::kUInt8), torch::zeros({blocks}),
           torch::zeros({blocks})}};
}

void ExpectSame(const PathRun& fused, const PathRun& ops, const std::string& what) {
  EXPECT_TRUE(torch::equal(fused.state.state1, ops.state.state1))
      << what << ": state1 codes differ at " << fused.state.state1.ne(ops.state.state1).sum().item<int64_t>();
  EXPECT_TRUE(torch::equal(fused.state.state2, ops.state.state2))
      << what << ": state2 codes differ at " << fused.state.state2.ne(ops.state.state2).sum().item<int64_t>();
  EXPECT_TRUE(torch::equal(fused.state.absmax1, ops.state.absmax1)) << what << ": absmax1";
  EXPECT_TRUE(torch::equal(fused.state.absmax2, ops.state.absmax2)) << what << ": absmax2";
  EXPECT_TRUE(torch::equal(fused.param, ops.param))
      << what << ": params differ at " << fused.param.ne(ops.param).sum().item<int64_t>();
}

// 10,003 elements (a partial last block whose length is not a multiple of 8),
// gradients spanning six decades, an all-zero block (absmax 0), NaN/Inf
// gradients at step 3, weight decay on and off, float32 and float64 parameters;
// the fused kernel's SIMD and portable versions.
TEST(Adam8bitKernel, FusedCpuEqualsTorchOps) {
  for (double wd : {0.01, 0.0}) {
    for (torch::ScalarType type : {torch::kFloat, torch::kDouble}) {
      torch::manual_seed(11);
      const int64_t n = 10003;
      torch::Tensor init = torch::randn({7, n / 7}).to(type);
      DynamicMaps maps_fused, maps_ops;
      PathRun fused = NewRun(init), portable = NewRun(init), ops = NewRun(init);
      const Adam8bitHyper h{0.9, 0.999, 1e-8, wd};
      int64_t changed_codes = 0;
      for (int step = 1; step <= 6; ++step) {
        torch::Tensor g = torch::randn({7, n / 7}) * torch::pow(10.0, torch::rand({7, n / 7}) * 6 - 5);
        g.view({-1}).slice(0, 512, 768).zero_();
        if (step == 3) {
          g.view({-1})[5] = NAN;
          g.view({-1})[300] = INFINITY;
          g.view({-1})[10001] = -INFINITY;
        }
        g = g.to(type);
        torch::Tensor before = fused.state.state1.clone();
        Adam8bitStepFusedCpu(maps_fused, h, 1e-3, step, fused.param, g, fused.state);
        Adam8bitStepFusedCpu(maps_fused, h, 1e-3, step, portable.param, g, portable.state, /*portable_only=*/true);
        Adam8bitStepTorchOps(maps_ops, h, 1e-3, step, ops.param, g, ops.state);
        changed_codes += before.ne(fused.state.state1).sum().item<int64_t>();
        const std::string what =
            std::string(c10::toString(type)) + " wd=" + std::to_string(wd) + " step " + std::to_string(step);
        ExpectSame(fused, ops, what);
        ExpectSame(portable, ops, what + " (portable kernel)");
      }
      EXPECT_GT(changed_codes, n);  // the state really moves
      EXPECT_FALSE(torch::equal(fused.param, init));
    }
  }
}

}  // namespace
}  // namespace lorad::optim
