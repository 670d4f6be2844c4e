#include "core/models/weights.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/base/status_macros.h"

namespace lorad::models {
namespace {

std::string ShapeString(c10::IntArrayRef shape) { return absl::StrCat("[", absl::StrJoin(shape, ","), "]"); }

}  // namespace

RenamedTensorSource::RenamedTensorSource(std::shared_ptr<const io::TensorSource> base,
                                         std::map<std::string, Entry> entries)
    : base_(std::move(base)), entries_(std::move(entries)) {}

const RenamedTensorSource::Entry* RenamedTensorSource::Find(std::string_view name) const {
  auto it = entries_.find(std::string(name));
  return it == entries_.end() ? nullptr : &it->second;
}

std::vector<std::string> RenamedTensorSource::Names() const {
  std::vector<std::string> names;
  names.reserve(entries_.size());
  for (const auto& [name, entry] : entries_) names.push_back(name);
  return names;
}

bool RenamedTensorSource::Has(std::string_view name) const { return Find(name) != nullptr; }

absl::StatusOr<std::vector<int64_t>> RenamedTensorSource::Shape(std::string_view name) const {
  const Entry* e = Find(name);
  if (e == nullptr) return absl::NotFoundError(absl::StrCat("tensor '", std::string(name), "' not found"));
  return e->shape;
}

absl::StatusOr<torch::Tensor> RenamedTensorSource::Get(std::string_view name,
                                                       std::optional<torch::ScalarType> dtype) const {
  const Entry* e = Find(name);
  if (e == nullptr) return absl::NotFoundError(absl::StrCat("tensor '", std::string(name), "' not found"));
  ASSIGN_OR_RETURN(auto t, base_->Get(e->base_name, dtype));
  return t.reshape(e->shape);
}

absl::StatusOr<std::string> RenamedTensorSource::DTypeName(std::string_view name) const {
  const Entry* e = Find(name);
  if (e == nullptr) return absl::NotFoundError(absl::StrCat("tensor '", std::string(name), "' not found"));
  return base_->DTypeName(e->base_name);
}

std::optional<std::string> RenamedTensorSource::BaseName(std::string_view name) const {
  const Entry* e = Find(name);
  if (e == nullptr) return std::nullopt;
  return e->base_name;
}

absl::Status RenamedTensorSource::ReadInto(std::string_view name, torch::Tensor& dst) const {
  const Entry* e = Find(name);
  if (e == nullptr) return absl::NotFoundError(absl::StrCat("tensor '", std::string(name), "' not found"));
  return base_->ReadInto(e->base_name, dst);
}

std::optional<torch::Tensor> RenamedTensorSource::MappedView(std::string_view name, torch::ScalarType type) const {
  const Entry* e = Find(name);
  if (e == nullptr) return std::nullopt;
  auto view = base_->MappedView(e->base_name, type);
  if (!view) return std::nullopt;
  return view->reshape(e->shape);
}

std::optional<uint64_t> RenamedTensorSource::DataOffset(std::string_view name) const {
  const Entry* e = Find(name);
  if (e == nullptr) return std::nullopt;
  return base_->DataOffset(e->base_name);
}

absl::Status LoadModuleWeights(torch::nn::Module& module, const io::TensorSource& source, const std::string& prefix) {
  std::vector<std::pair<std::string, torch::Tensor>> targets;
  for (const auto& p : module.named_parameters(/*recurse=*/true)) targets.emplace_back(p.key(), p.value());
  for (const auto& b : module.named_buffers(/*recurse=*/true)) targets.emplace_back(b.key(), b.value());
  // Read in file order: sequential reads let the kernel's readahead work on a cold cache.
  std::vector<std::pair<uint64_t, size_t>> order;
  for (size_t i = 0; i < targets.size(); ++i) {
    order.emplace_back(source.DataOffset(prefix + targets[i].first).value_or(0), i);
  }
  std::sort(order.begin(), order.end());
  std::vector<std::pair<std::string, torch::Tensor>> sorted;
  sorted.reserve(targets.size());
  for (const auto& [offset, i] : order) sorted.push_back(std::move(targets[i]));
  targets = std::move(sorted);
  for (auto& [name, dst] : targets) {
    const std::string key = prefix + name;
    auto shape = source.Shape(key);
    if (!shape.ok()) {
      return absl::NotFoundError(absl::StrCat("checkpoint is missing tensor '", key, "'"));
    }
    if (c10::IntArrayRef(*shape) != dst.sizes()) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", key, "' has shape ", ShapeString(*shape),
                                                     ", the model expects ", ShapeString(dst.sizes())));
    }
    RETURN_IF_ERROR(io::AliasOrReadInto(source, key, dst));
  }
  return absl::OkStatus();
}

std::vector<std::pair<std::string, std::vector<int64_t>>> ModuleKeys(torch::nn::Module& module,
                                                                     const std::string& prefix) {
  std::vector<std::pair<std::string, std::vector<int64_t>>> keys;
  for (const auto& p : module.named_parameters(true)) keys.emplace_back(prefix + p.key(), p.value().sizes().vec());
  for (const auto& b : module.named_buffers(true)) keys.emplace_back(prefix + b.key(), b.value().sizes().vec());
  return keys;
}

}  // namespace lorad::models
