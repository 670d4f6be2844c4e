// LoRA file metadata as kohya writes it: the ss_* training record (sd-scripts
// train_network.py), modelspec.* (library/sai_model_spec.py), and the two hashes A1111
// reads (library/train_util.py:precalculate_safetensors_hashes).
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/common/sha256.h"
#include "core/io/safetensors.h"
#include "core/networks/network_config.h"

namespace lorad::networks {

enum class BaseModel { kSd15, kSdxl };

// Python's str() of a float ("0.0001", "1e-05", "1.0"), as kohya's metadata holds them.
std::string PythonFloat(double value);
// "True" / "False".
std::string PythonBool(bool value);

// Builds the ss_* map. Keys must be ones kohya writes (a typo is an error, not
// a silently wrong key). Not thread-safe.
class LoraMetadataBuilder {
 public:
  absl::Status Set(const std::string& key, const std::string& value);
  absl::Status Set(const std::string& key, const char* value) { return Set(key, std::string(value)); }
  absl::Status SetFloat(const std::string& key, std::optional<double> value);  // nullopt -> "None"
  absl::Status SetInt(const std::string& key, std::optional<int64_t> value);
  absl::Status SetBool(const std::string& key, bool value);
  absl::Status SetJson(const std::string& key, const nlohmann::json& value);

  // ss_network_module / dim / alpha / dropout / args from the config.
  void SetNetwork(const NetworkConfig& config);
  // ss_base_model_version ("sd_v1" / "sdxl_base_v1-0"), ss_v2 "False".
  void SetBaseModel(BaseModel base, bool v_parameterization);

  const io::Metadata& metadata() const { return metadata_; }
  // With --no_metadata kohya keeps only the network keys.
  io::Metadata MinimalMetadata() const;

 private:
  io::Metadata metadata_;
};

// Whether `key` is one of the ss_* keys kohya's train_network.py writes.
bool IsKnownSsKey(const std::string& key);

struct ModelSpecInput {
  BaseModel base = BaseModel::kSdxl;
  bool v_prediction = false;
  std::string title;  // empty -> "LoRA@<date>"
  std::string date;   // ISO-8601 local time; empty -> now
  std::string resolution;  // "WxH"; empty -> 512x512 / 1024x1024
  std::string description, author, license, tags, trigger_phrase;
  std::optional<int64_t> min_timestep, max_timestep;  // timestep_range only if set
  std::optional<int64_t> clip_skip;                    // encoder_layer
  std::string implementation_version;                  // e.g. "lorad/<version>"
};

// modelspec.* keys for a LoRA (sai_model_spec 1.0.1).
io::Metadata BuildModelSpec(const ModelSpecInput& input);

struct SafetensorsHashes {
  std::string model_hash;   // sshs_model_hash: sha256 of the data buffer
  std::string legacy_hash;  // sshs_legacy_hash: first 8 hex of sha256(bytes[0x100000, +0x10000))
};

// kohya's precalculate_safetensors_hashes: serializes `tensors` with only the
// ss_* entries of `metadata`, then hashes (addnet_hash_safetensors, addnet_hash_legacy).
absl::StatusOr<SafetensorsHashes> ComputeSafetensorsHashes(const io::NamedTensors& tensors,
                                                           const io::Metadata& metadata);

// SHA-256 hex digest (the one implementation, core/common/sha256.h).
using ::lorad::Sha256Hex;

}  // namespace lorad::networks
