// Adapters built on a GPU from a seeded CPU generator: the same initial weights
// as on the CPU, for every algorithm (a CUDA tensor cannot draw from the CPU
// generator itself, so the draw happens on the CPU and is copied).
#include <ostream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "core/networks/adapter.h"
#include "core/nn/layer.h"
#include "tests/cuda/cuda_test_support.h"

namespace lorad::networks {
namespace {

struct InitCase {
  std::string name;
  Algo algo;
  bool conv;
  bool tucker;
};

// ctest shows the case's name rather than its bytes.
void PrintTo(const InitCase& c, std::ostream* os) { *os << c.name; }

class AdapterInitOnGpuTest : public ::testing::TestWithParam<InitCase> {};

TEST_P(AdapterInitOnGpuTest, SameSeedSameWeightsAsOnTheCpu) {
  LORAD_SKIP_WITHOUT_CUDA();
  const InitCase& c = GetParam();
  AdapterSpec spec;
  spec.algo = c.algo;
  spec.dim = 4;
  spec.alpha = 2;
  spec.use_tucker = c.tucker;
  std::vector<io::NamedTensors> states;
  for (const torch::Device device : {torch::Device(torch::kCPU), torch::Device(torch::kCUDA, 0)}) {
    const auto opts = torch::TensorOptions().dtype(torch::kFloat32).device(device);
    nn::Layer layer(c.conv ? nn::Conv2dOptions(8, 16, 3, 1, 1, true, opts) : nn::LinearOptions(8, 16, true, opts));
    auto adapter = CreateAdapter(*layer, spec, at::detail::createCPUGenerator(11));
    ASSERT_TRUE(adapter.ok()) << device << ": " << adapter.status();
    states.push_back((*adapter)->StateDict());
  }
  ASSERT_EQ(states[0].size(), states[1].size());
  for (size_t i = 0; i < states[0].size(); ++i) {
    EXPECT_EQ(states[0][i].first, states[1][i].first);
    EXPECT_TRUE(torch::equal(states[0][i].second, states[1][i].second.cpu())) << c.name << " " << states[0][i].first;
  }
}

INSTANTIATE_TEST_SUITE_P(Algos, AdapterInitOnGpuTest,
                         ::testing::Values(InitCase{"lora_linear", Algo::kLora, false, false},
                                           InitCase{"locon_tucker", Algo::kLora, true, true},
                                           InitCase{"loha_conv", Algo::kLoha, true, false},
                                           InitCase{"lokr_linear", Algo::kLokr, false, false}),
                         [](const ::testing::TestParamInfo<InitCase>& info) { return info.param.name; });

}  // namespace
}  // namespace lorad::networks
