// The op counter's three counts on small CPU programs whose ops are known.
#include "bench/op_counter.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

namespace lorad::bench {
namespace {

int64_t KernelsNamed(const OpCounts& counts, const std::string& name) {
  for (const auto& [n, c] : counts.kernels_by_name) {
    if (n == name) return c;
  }
  return 0;
}

TEST(OpCounterTest, ViewsAndNoOpConversionsLaunchNoKernel) {
  auto x = torch::randn({4, 6});
  OpCounter counter;
  auto y = x.view({6, 4}).reshape({4, 6}).detach().to(torch::kFloat).unsqueeze(0).squeeze(0).t().t();
  const OpCounts counts = counter.Take();
  EXPECT_GE(counts.outermost, 6);
  EXPECT_EQ(counts.kernels, 0) << "views and a to() that converts nothing launch no kernel";
  EXPECT_TRUE(y.sizes() == x.sizes());
}

TEST(OpCounterTest, ArithmeticAndRealConversionsCountOnceEach) {
  auto x = torch::randn({4, 6});
  auto w = torch::randn({3, 6});
  auto b = torch::randn({3});
  OpCounter counter;
  auto out = torch::nn::functional::linear(x, w, b);  // linear -> t + addmm: one kernel
  auto sum = out.add(out);                            // one
  auto wide = sum.to(torch::kDouble);                 // _to_copy -> empty_strided + copy_: one
  const OpCounts counts = counter.Take();
  EXPECT_EQ(counts.kernels, 3);
  EXPECT_EQ(KernelsNamed(counts, "aten::addmm"), 1);
  EXPECT_EQ(KernelsNamed(counts, "aten::add"), 1);
  EXPECT_EQ(KernelsNamed(counts, "aten::copy_"), 1);
  EXPECT_GT(counts.all, counts.kernels) << "nested ops (t, empty_strided) are dispatched too";
  EXPECT_EQ(wide.scalar_type(), torch::kDouble);
}

TEST(OpCounterTest, ScalarOverloadsAndReductionsCountOnce) {
  auto x = torch::randn({4, 6});
  torch::NoGradGuard no_grad;
  OpCounter counter;
  x.mul_(0.5);                                        // mul_.Scalar wraps its argument
  auto d = x.div(3.0);                                // div.Scalar
  auto n = at::linalg_vector_norm(d, 2);              // one reduction
  const double v = n.item<double>();                  // one read-back
  const OpCounts counts = counter.Take();
  EXPECT_EQ(counts.kernels, 4) << "mul_, div, the norm and the read-back, each once";
  EXPECT_GT(v, 0);
}

TEST(OpCounterTest, MultiTensorOpsCountAsOneLaunch) {
  std::vector<torch::Tensor> params = {torch::randn({5}), torch::randn({7}), torch::randn({2, 3})};
  OpCounter counter;
  torch::NoGradGuard no_grad;
  at::_foreach_mul_(params, 0.5);
  OpCounts counts = counter.Take();
  EXPECT_EQ(counts.kernels, 1) << "one _foreach_mul_ over three tensors (its CPU loop is not counted)";
  counter.Reset();
  for (auto& p : params) p.mul_(0.5);
  counts = counter.Take();
  EXPECT_EQ(counts.kernels, 3);
  EXPECT_EQ(counts.outermost, 3);
}

TEST(OpCounterTest, BackwardOpsAreCountedOnAutogradsThreads) {
  auto w = torch::randn({3, 6}, torch::requires_grad());
  auto x = torch::randn({4, 6});
  auto loss = torch::nn::functional::linear(x, w).sum();
  OpCounter counter;
  loss.backward();
  const OpCounts counts = counter.Take();
  EXPECT_GE(counts.kernels, 1);
  EXPECT_GE(KernelsNamed(counts, "aten::mm"), 1);
  ASSERT_TRUE(w.grad().defined());
}

}  // namespace
}  // namespace lorad::bench
