// GoogleTest helpers shared by the training-loop tests (CPU and cuda-labelled):
// a per-binary scratch folder, reading a saved LoRA, comparing two LoRAs bit for
// bit, and an observer that cancels at a given step. Header-only; test code only.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "core/base/testing/scoped_temp_dir.h"
#include "core/io/safetensors.h"
#include "core/train/observer.h"

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
