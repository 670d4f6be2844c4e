// GoogleTest helpers shared by the training-loop tests (CPU and cuda-labelled):
// a per-binary scratch folder, reading a saved LoRA, comparing two LoRAs bit for
// bit, the fixed-noise loss with a saved LoRA applied, and an observer that
// cancels at a given step. Header-only; test code only.
#pragma once

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "core/base/testing/scoped_temp_dir.h"
#include "core/io/safetensors.h"
#include "core/networks/lora_network.h"
#include "core/train/model_bundle.h"
#include "core/train/observer.h"
#include "core/train/test_support.h"

namespace lorad::train::testing {

// An empty folder `name` inside this test binary's scratch dir, which is removed
// at exit even when a test fails an ASSERT.
inline std::filesystem::path FreshDir(const std::string& name) {
  static const lorad::testing::ScopedTempDir root("lorad_train_tests");
  auto dir = root / name;
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

// The tensors of a saved LoRA (cloned, so the file may go), and its metadata when
// `metadata` is set. A file that does not open fails the calling test.
inline std::map<std::string, torch::Tensor> ReadLora(const std::filesystem::path& path,
                                                     io::Metadata* metadata = nullptr) {
  std::map<std::string, torch::Tensor> out;
  auto file = io::SafetensorsFile::Open(path);
  EXPECT_TRUE(file.ok()) << file.status();
  if (!file.ok()) return out;
  for (const auto& name : (*file)->Names()) out[name] = (*file)->Get(name).value().clone();
  if (metadata != nullptr) *metadata = (*file)->metadata();
  return out;
}

inline void ExpectBitIdentical(const std::map<std::string, torch::Tensor>& a,
                               const std::map<std::string, torch::Tensor>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [k, v] : a) {
    ASSERT_TRUE(b.count(k)) << k;
    EXPECT_TRUE(torch::equal(v, b.at(k))) << k << " differs by " << (v - b.at(k)).abs().max().item<double>();
  }
}

// Training-set loss at fixed timesteps and noise (FixedLoss) of the model of
// `config` loaded on `device`, with the LoRA file `lora` applied (none when
// empty). Checks that the file loads into the network bit for bit.
inline double LossWithLora(const TrainConfig& config, const CaptionedImages& data, const std::filesystem::path& lora,
                           const torch::Device& device = torch::kCPU) {
  ModelBundleOptions options;
  options.device = device;
  auto model = ModelBundle::Load(config, options);
  EXPECT_TRUE(model.ok()) << model.status();
  if (!model.ok()) return std::nan("");
  // Outlives the loss below: the network takes its adapters off the model when destroyed.
  std::unique_ptr<networks::LoraNetwork> network;
  if (!lora.empty()) {
    networks::NetworkConfigInput input;
    input.network_module = config.network_module;
    input.network_dim = config.network_dim;
    input.network_alpha = config.network_alpha;
    input.network_args = config.network_args;
    auto net_config = networks::ParseNetworkConfig(input);
    EXPECT_TRUE(net_config.ok()) << net_config.status();
    if (!net_config.ok()) return std::nan("");
    auto targets = (*model)->NetworkTargets(true, !config.network_train_unet_only, net_config->TargetsConvBlocks());
    EXPECT_TRUE(targets.ok()) << targets.status();
    if (!targets.ok()) return std::nan("");
    auto created = networks::LoraNetwork::Create(*net_config, *targets);
    EXPECT_TRUE(created.ok()) << created.status();
    if (!created.ok()) return std::nan("");
    network = *std::move(created);
    absl::Status loaded = network->LoadWeights(lora);
    EXPECT_TRUE(loaded.ok()) << loaded;
    const auto saved = ReadLora(lora);
    const auto state = network->StateDict(torch::kFloat32);
    EXPECT_EQ(state.size(), saved.size());
    for (const auto& [key, value] : state) {
      EXPECT_TRUE(saved.count(key) && torch::equal(value, saved.at(key).to(torch::kFloat32))) << key;
    }
    network->Apply();
    network->Train(false);
  }
  return FixedLoss(**model, data, 99);
}

// Cancels (with state) when the run reaches `step`. `token` must outlive the run.
struct CancelAt : TrainObserver {
  CancelAt(CancellationToken* token, int64_t step) : token(token), step(step) {}
  void OnStep(const StepReport& r) override {
    if (r.step == step) token->Cancel(true);
  }
  CancellationToken* token;
  int64_t step;
};

}  // namespace lorad::train::testing
