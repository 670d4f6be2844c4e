// Loading checkpoint tensors into module parameters, and a renaming view over
// a tensor source (diffusers names presented in the single-file layout). The
// file itself is read by io::SafetensorsFile (kStreamed for checkpoints: each
// tensor is read straight into its parameter, no second copy of the model).
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/io/tensor_source.h"

namespace lorad::models {

// A renaming view: exposes `base` tensors under new names. `entries` gives, for
// each exposed name, the base name; tensors whose stored shape differs from the
// entry's `shape` (same element count) are reshaped (e.g. diffusers' Linear VAE
// attention weights as LDM 1x1 convs). Unknown names: Has is false, BaseName
// and DataOffset nullopt, the others NOT_FOUND. Thread-safe for concurrent reads.
class RenamedTensorSource : public io::TensorSource {
 public:
  struct Entry {
    std::string base_name;
    std::vector<int64_t> shape;  // exposed shape
  };
  RenamedTensorSource(std::shared_ptr<const io::TensorSource> base, std::map<std::string, Entry> entries);

  std::vector<std::string> Names() const override;
  bool Has(std::string_view name) const override;
  absl::StatusOr<std::vector<int64_t>> Shape(std::string_view name) const override;
  absl::StatusOr<torch::Tensor> Get(std::string_view name,
                                    std::optional<torch::ScalarType> dtype = std::nullopt) const override;
  absl::StatusOr<std::string> DTypeName(std::string_view name) const override;
  // Both forward to the base under the base name (so a file base reads
  // straight into dst, in file order).
  absl::Status ReadInto(std::string_view name, torch::Tensor& dst) const override;
  std::optional<uint64_t> DataOffset(std::string_view name) const override;
  // The base's view, reshaped to the exposed shape.
  std::optional<torch::Tensor> MappedView(std::string_view name, torch::ScalarType type) const override;

  // The base name behind an exposed name; nullopt for an unknown name.
  std::optional<std::string> BaseName(std::string_view name) const;
  const io::TensorSource& base() const { return *base_; }

 private:
  const Entry* Find(std::string_view name) const;
  std::shared_ptr<const io::TensorSource> base_;
  std::map<std::string, Entry> entries_;
};

// Copies `source[prefix + name]` into every parameter and buffer of `module`,
// in the source's file order (TensorSource::DataOffset) and through
// TensorSource::ReadInto; a contiguous CPU tensor whose dtype the file stores
// as is becomes a view of the file's mapping instead (TensorSource::MappedView).
// A missing key or a shape mismatch is an error naming the key.
absl::Status LoadModuleWeights(torch::nn::Module& module, const io::TensorSource& source, const std::string& prefix);

// The parameter names and shapes of `module` (buffers included), prefixed.
std::vector<std::pair<std::string, std::vector<int64_t>>> ModuleKeys(torch::nn::Module& module,
                                                                     const std::string& prefix);

}  // namespace lorad::models
