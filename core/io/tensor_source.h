// A read-only, name-addressed collection of tensors: a safetensors file, a
// diffusers folder, or a renaming view over either.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <torch/torch.h>

#include "absl/status/statusor.h"

namespace lorad::io {

class TensorSource {
 public:
  virtual ~TensorSource() = default;

  // All tensor names, sorted.
  virtual std::vector<std::string> Names() const = 0;
  virtual bool Has(std::string_view name) const = 0;
  // Shape without reading data; NOT_FOUND names the key.
  virtual absl::StatusOr<std::vector<int64_t>> Shape(std::string_view name) const = 0;
  // The tensor, converted to `dtype` when given (a copy), else in its stored
  // dtype (a zero-copy view of the file where possible). NOT_FOUND names the key.
  virtual absl::StatusOr<torch::Tensor> Get(std::string_view name,
                                            std::optional<torch::ScalarType> dtype = std::nullopt) const = 0;
  // Stored dtype name as in safetensors ("F16", "BF16", "F32", ...).
  virtual absl::StatusOr<std::string> DTypeName(std::string_view name) const = 0;
};

}  // namespace lorad::io
