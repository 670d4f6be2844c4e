// Test helpers: the train_reference / model reference fixtures and tolerant comparison.
#pragma once

#include <memory>
#include <string>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "core/io/safetensors.h"

namespace lorad::testing {

// Opens a fixture file (fails the test if missing).
std::shared_ptr<io::SafetensorsFile> OpenFixture(const std::string& name);
// The tensor `key` as float32 (int64 stays int64).
torch::Tensor Get(const io::SafetensorsFile& file, const std::string& key);
// __metadata__[field] parsed as JSON.
nlohmann::json MetadataJson(const io::SafetensorsFile& file, const std::string& field);

// |a - b| <= atol + rtol |b| everywhere, same shape; reports the worst element.
::testing::AssertionResult AllClose(const torch::Tensor& actual, const torch::Tensor& expected, double rtol = 1e-5,
                                    double atol = 1e-5);

}  // namespace lorad::testing
