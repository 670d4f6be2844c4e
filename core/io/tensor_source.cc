#include "core/io/tensor_source.h"

#include "absl/strings/str_cat.h"
#include "core/base/status_macros.h"

namespace lorad::io {

absl::Status TensorSource::ReadInto(std::string_view name, torch::Tensor& dst) const {
  ASSIGN_OR_RETURN(torch::Tensor t, Get(name));
  if (t.numel() != dst.numel()) {
    return absl::InvalidArgumentError(absl::StrCat("tensor '", std::string(name), "' has ", t.numel(),
                                                   " elements, the destination ", dst.numel()));
  }
  torch::NoGradGuard no_grad;
  dst.copy_(t.reshape(dst.sizes()));
  return absl::OkStatus();
}

std::optional<uint64_t> TensorSource::DataOffset(std::string_view) const { return std::nullopt; }

std::optional<torch::Tensor> TensorSource::MappedView(std::string_view, torch::ScalarType) const {
  return std::nullopt;
}

absl::Status AliasOrReadInto(const TensorSource& source, std::string_view name, torch::Tensor& dst) {
  if (dst.device().is_cpu() && dst.is_contiguous()) {
    if (auto view = source.MappedView(name, dst.scalar_type())) {
      dst.set_data(view->reshape(dst.sizes()));  // dst now aliases the mapping
      return absl::OkStatus();
    }
  }
  return source.ReadInto(name, dst);
}

}  // namespace lorad::io
