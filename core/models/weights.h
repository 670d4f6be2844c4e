// Reading checkpoint tensors into module parameters without a second copy of
// the model in memory: FileTensorSource reads each tensor with pread (the page
// cache, not the process, holds the file), straight into the destination when
// dtypes match, else through one tensor-sized staging buffer.
#pragma once

#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/io/safetensors.h"
#include "core/io/tensor_source.h"

namespace lorad::models {

// A safetensors file read with pread. Thread-safe for concurrent reads.
class FileTensorSource : public io::TensorSource {
 public:
  static absl::StatusOr<std::unique_ptr<FileTensorSource>> Open(const std::filesystem::path& path);
  ~FileTensorSource() override;

  std::vector<std::string> Names() const override { return file_->Names(); }
  bool Has(std::string_view name) const override { return file_->Has(name); }
  absl::StatusOr<std::vector<int64_t>> Shape(std::string_view name) const override { return file_->Shape(name); }
  // A fresh tensor read from the file (converted when `dtype` is given).
  absl::StatusOr<torch::Tensor> Get(std::string_view name,
                                    std::optional<torch::ScalarType> dtype = std::nullopt) const override;
  absl::StatusOr<std::string> DTypeName(std::string_view name) const override { return file_->DTypeName(name); }

  // Reads `name` into `dst` (same number of elements; converted to dst's dtype/device).
  absl::Status ReadInto(std::string_view name, torch::Tensor& dst) const;

  const io::SafetensorsFile& file() const { return *file_; }

 private:
  FileTensorSource() = default;
  std::unique_ptr<io::SafetensorsFile> file_;
  int fd_ = -1;
};

// A renaming view: exposes `base` tensors under new names. `map` gives, for
// each exposed name, the base name; tensors whose stored shape differs from
// `shapes` (same element count) are reshaped (e.g. diffusers' Linear VAE
// attention weights as LDM 1x1 convs).
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

  absl::Status ReadInto(std::string_view name, torch::Tensor& dst) const;
  // The base name behind an exposed name.
  std::optional<std::string> BaseName(std::string_view name) const;
  const io::TensorSource& base() const { return *base_; }

 private:
  const Entry* Find(std::string_view name) const;
  std::shared_ptr<const io::TensorSource> base_;
  std::map<std::string, Entry> entries_;
};

// Copies `source[name]` into dst (pread fast path for the two classes above).
absl::Status CopyTensorInto(const io::TensorSource& source, const std::string& name, torch::Tensor& dst);

// Copies `source[prefix + name]` into every parameter and buffer of `module`.
// A missing key or a shape mismatch is an error naming the key.
absl::Status LoadModuleWeights(torch::nn::Module& module, const io::TensorSource& source, const std::string& prefix);

// The parameter names and shapes of `module` (buffers included), prefixed.
std::vector<std::pair<std::string, std::vector<int64_t>>> ModuleKeys(torch::nn::Module& module,
                                                                     const std::string& prefix);

}  // namespace lorad::models
