#include "core/models/weights.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/common/status_macros.h"

namespace lorad::models {
namespace {

std::optional<torch::ScalarType> TorchType(io::DType d) {
  switch (d) {
    case io::DType::kBool: return torch::kBool;
    case io::DType::kU8: return torch::kUInt8;
    case io::DType::kI8: return torch::kInt8;
    case io::DType::kI16: return torch::kInt16;
    case io::DType::kF16: return torch::kFloat16;
    case io::DType::kBF16: return torch::kBFloat16;
    case io::DType::kI32: return torch::kInt32;
    case io::DType::kF32: return torch::kFloat32;
    case io::DType::kF64: return torch::kFloat64;
    case io::DType::kI64: return torch::kInt64;
    default: return std::nullopt;
  }
}

std::string ShapeString(c10::IntArrayRef shape) { return absl::StrCat("[", absl::StrJoin(shape, ","), "]"); }

}  // namespace

absl::StatusOr<std::unique_ptr<FileTensorSource>> FileTensorSource::Open(const std::filesystem::path& path) {
  ASSIGN_OR_RETURN(auto file, io::SafetensorsFile::Open(path));
  std::unique_ptr<FileTensorSource> source(new FileTensorSource());
  source->fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (source->fd_ < 0) {
    return absl::NotFoundError(absl::StrCat("cannot open ", path.string(), ": ", std::strerror(errno)));
  }
  source->file_ = std::move(file);
  return source;
}

FileTensorSource::~FileTensorSource() {
  if (fd_ >= 0) ::close(fd_);
}

absl::StatusOr<torch::Tensor> FileTensorSource::Get(std::string_view name,
                                                    std::optional<torch::ScalarType> dtype) const {
  const io::TensorInfo* info = file_->Find(name);
  if (info == nullptr) {
    return absl::NotFoundError(absl::StrCat("tensor '", std::string(name), "' not found in ", file_->path().string()));
  }
  auto type = TorchType(info->dtype);
  if (!type) {
    // Types LibTorch cannot hold here (unsigned wide, float8): the reader's own conversion.
    return file_->Get(name, dtype);
  }
  torch::Tensor t = torch::empty(info->shape, torch::TensorOptions().dtype(*type));
  RETURN_IF_ERROR(ReadInto(name, t));
  if (dtype && *dtype != *type) t = t.to(*dtype);
  return t;
}

absl::Status FileTensorSource::ReadInto(std::string_view name, torch::Tensor& dst) const {
  const io::TensorInfo* info = file_->Find(name);
  if (info == nullptr) {
    return absl::NotFoundError(absl::StrCat("tensor '", std::string(name), "' not found in ", file_->path().string()));
  }
  if (info->numel() != dst.numel()) {
    return absl::InvalidArgumentError(absl::StrCat("tensor '", std::string(name), "' has ", info->numel(),
                                                   " elements, the destination ", dst.numel()));
  }
  auto type = TorchType(info->dtype);
  const bool direct = type && *type == dst.scalar_type() && dst.device().is_cpu() && dst.is_contiguous();
  if (!direct) {
    if (!type) {
      ASSIGN_OR_RETURN(auto converted, file_->Get(name, dst.scalar_type()));
      torch::NoGradGuard no_grad;
      dst.copy_(converted.reshape(dst.sizes()));
      return absl::OkStatus();
    }
    torch::Tensor staging = torch::empty(dst.sizes(), torch::TensorOptions().dtype(*type));
    RETURN_IF_ERROR(ReadInto(name, staging));
    torch::NoGradGuard no_grad;
    dst.copy_(staging);
    return absl::OkStatus();
  }
  auto* out = static_cast<char*>(dst.data_ptr());
  uint64_t remaining = info->end - info->begin;
  uint64_t offset = 8 + file_->header_size() + info->begin;
  while (remaining > 0) {
    const size_t chunk = static_cast<size_t>(std::min<uint64_t>(remaining, 1ull << 30));
    const ssize_t n = ::pread(fd_, out, chunk, static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      return absl::DataLossError(absl::StrCat("reading tensor '", std::string(name), "' from ",
                                              file_->path().string(), ": ",
                                              n < 0 ? std::strerror(errno) : "unexpected end of file"));
    }
    out += n;
    offset += static_cast<uint64_t>(n);
    remaining -= static_cast<uint64_t>(n);
  }
  return absl::OkStatus();
}

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
  return CopyTensorInto(*base_, e->base_name, dst);
}

absl::Status CopyTensorInto(const io::TensorSource& source, const std::string& name, torch::Tensor& dst) {
  if (const auto* file = dynamic_cast<const FileTensorSource*>(&source)) return file->ReadInto(name, dst);
  if (const auto* renamed = dynamic_cast<const RenamedTensorSource*>(&source)) return renamed->ReadInto(name, dst);
  ASSIGN_OR_RETURN(auto t, source.Get(name));
  if (t.numel() != dst.numel()) {
    return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' has ", t.numel(), " elements, expected ",
                                                   dst.numel()));
  }
  torch::NoGradGuard no_grad;
  dst.copy_(t.reshape(dst.sizes()));
  return absl::OkStatus();
}

namespace {

// Byte offset of `name` in its file (for reading in file order); 0 when unknown.
uint64_t FileOffset(const io::TensorSource& source, const std::string& name) {
  if (const auto* file = dynamic_cast<const FileTensorSource*>(&source)) {
    const io::TensorInfo* info = file->file().Find(name);
    return info ? info->begin : 0;
  }
  if (const auto* renamed = dynamic_cast<const RenamedTensorSource*>(&source)) {
    auto base = renamed->BaseName(name);
    return base ? FileOffset(renamed->base(), *base) : 0;
  }
  return 0;
}

}  // namespace

absl::Status LoadModuleWeights(torch::nn::Module& module, const io::TensorSource& source, const std::string& prefix) {
  std::vector<std::pair<std::string, torch::Tensor>> targets;
  for (const auto& p : module.named_parameters(/*recurse=*/true)) targets.emplace_back(p.key(), p.value());
  for (const auto& b : module.named_buffers(/*recurse=*/true)) targets.emplace_back(b.key(), b.value());
  // Read in file order: sequential reads let the kernel's readahead work on a cold cache.
  std::vector<std::pair<uint64_t, size_t>> order;
  for (size_t i = 0; i < targets.size(); ++i) order.emplace_back(FileOffset(source, prefix + targets[i].first), i);
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
    auto status = CopyTensorInto(source, key, dst);
    if (!status.ok()) return status;
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
