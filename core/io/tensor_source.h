// A read-only, name-addressed collection of tensors: a safetensors file, a
// diffusers folder, or a renaming view over either.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <torch/torch.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace lorad::io {

class TensorSource {
 public:
  virtual ~TensorSource() = default;

  // Implementations allow concurrent calls to their const methods.

  // All tensor names, sorted.
  virtual std::vector<std::string> Names() const = 0;
  // False for an unknown name.
  virtual bool Has(std::string_view name) const = 0;
  // Shape without reading data; NOT_FOUND names the key.
  virtual absl::StatusOr<std::vector<int64_t>> Shape(std::string_view name) const = 0;
  // The tensor, converted to `dtype` when given (a copy), else in its stored
  // dtype (a zero-copy view of the file where possible). NOT_FOUND names the key.
  virtual absl::StatusOr<torch::Tensor> Get(std::string_view name,
                                            std::optional<torch::ScalarType> dtype = std::nullopt) const = 0;
  // Stored dtype name as in safetensors ("F16", "BF16", "F32", ...). NOT_FOUND names the key.
  virtual absl::StatusOr<std::string> DTypeName(std::string_view name) const = 0;

  // Copies the tensor into `dst` (same element count; converted to dst's dtype
  // and device; reshaped to dst's shape). NOT_FOUND names the key,
  // INVALID_ARGUMENT a different element count. This default goes through Get;
  // a file reader overrides it to read straight into dst.
  virtual absl::Status ReadInto(std::string_view name, torch::Tensor& dst) const;

  // Where the tensor's bytes start in its file, so that callers can read in
  // file order (sequential reads let the kernel's readahead work on a cold
  // cache); nullopt for an unknown name or a source that has no file order.
  virtual std::optional<uint64_t> DataOffset(std::string_view name) const;

  // A zero-copy CPU view of the tensor, stored exactly as `type`, that shares
  // the file's memory mapping; nullopt when the source has none for it (not
  // mapped, another dtype, an unaligned offset, no bytes). Loading aliases
  // frozen CPU weights with it: nothing is copied or zero-filled, and the page
  // cache holds the only copy of the weights. The view keeps the mapping alive.
  virtual std::optional<torch::Tensor> MappedView(std::string_view name, torch::ScalarType type) const;
};

// Fills `dst` (a model's weight) from `source[name]`: a contiguous CPU `dst`
// becomes an alias of the file's mapping when MappedView offers one (set_data),
// anything else is read with ReadInto. Errors as ReadInto.
absl::Status AliasOrReadInto(const TensorSource& source, std::string_view name, torch::Tensor& dst);

}  // namespace lorad::io
