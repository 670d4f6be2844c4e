#include <gtest/gtest.h>

#include "core/networks/network_config.h"

namespace lorad::networks {
namespace {

TEST(NetworkConfig, KohyaDefaultsAndConv) {
  auto c = ParseNetworkConfig({});
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->dim, 4);
  EXPECT_EQ(c->alpha, 1.0);
  EXPECT_FALSE(c->TargetsConvBlocks());
  auto conv = ParseNetworkConfig({"networks.lora", 32, 16.0, 0.1, {"conv_dim=16", "conv_alpha=8", "rank_dropout=0.1"}});
  ASSERT_TRUE(conv.ok()) << conv.status();
  EXPECT_EQ(*conv->conv_dim, 16);
  EXPECT_EQ(conv->conv_alpha, 8.0);
  EXPECT_EQ(conv->dropout, 0.1);
  EXPECT_EQ(conv->rank_dropout, 0.1);
  EXPECT_EQ(conv->NetworkArgsJson(), R"({"conv_alpha": "8", "conv_dim": "16", "rank_dropout": "0.1"})");
}

TEST(NetworkConfig, LycorisAlgosAndDora) {
  auto loha = ParseNetworkConfig({"lycoris.kohya", 8, 4.0, std::nullopt, {"algo=loha", "use_tucker=True"}});
  ASSERT_TRUE(loha.ok()) << loha.status();
  EXPECT_EQ(loha->algo, Algo::kLoha);
  EXPECT_TRUE(loha->use_tucker);
  EXPECT_EQ(*loha->conv_dim, 8);  // LyCORIS default: conv_dim = dim
  EXPECT_EQ(loha->conv_alpha, 4.0);
  auto lokr = ParseNetworkConfig({"lycoris.kohya", 8, 4.0, std::nullopt, {"algo=lokr", "factor=4"}});
  ASSERT_TRUE(lokr.ok());
  EXPECT_EQ(lokr->factor, 4);
  auto dora = ParseNetworkConfig({"lycoris.kohya", 8, 4.0, std::nullopt, {"algo=locon", "dora_wd=True"}});
  ASSERT_TRUE(dora.ok());
  EXPECT_TRUE(dora->dora);
  EXPECT_FALSE(dora->wd_on_output);
  auto kohya_dora = ParseNetworkConfig({"networks.lora", 8, 4.0, std::nullopt, {"use_dora=true"}});
  ASSERT_TRUE(kohya_dora.ok());
  EXPECT_TRUE(kohya_dora->dora);
}

TEST(NetworkConfig, BadValuesNameTheKey) {
  auto expect_error = [](const NetworkConfigInput& in, const std::string& needle) {
    auto c = ParseNetworkConfig(in);
    ASSERT_FALSE(c.ok()) << needle;
    EXPECT_NE(c.status().message().find(needle), std::string::npos) << c.status().message();
  };
  expect_error({"networks.lokr", 4, 1.0, {}, {}}, "networks.lokr");
  expect_error({"networks.lora", 0, 1.0, {}, {}}, "network_dim");
  expect_error({"networks.lora", 4, 1.0, {}, {"conv_dim=abc"}}, "conv_dim=abc");
  expect_error({"networks.lora", 4, 1.0, {}, {"algo=loha"}}, "lycoris.kohya");
  expect_error({"lycoris.kohya", 4, 1.0, {}, {"algo=glora"}}, "algo=glora");
  expect_error({"networks.lora", 4, 1.0, {}, {"factor=2"}}, "factor");
  expect_error({"networks.lora", 4, 1.0, {}, {"block_dims=1,2"}}, "block_dims");
  expect_error({"networks.lora", 4, 1.0, {}, {"rank_dropout=1.5"}}, "rank_dropout");
  expect_error({"networks.lora", 4, 1.0, {}, {"conv_dim"}}, "key=value");
  expect_error({"networks.lora", 4, 1.0, 1.0, {}}, "network_dropout");
}

}  // namespace
}  // namespace lorad::networks
