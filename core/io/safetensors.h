// safetensors reading (mmap with zero-copy views, or pread streaming into the
// caller's tensors) and writing (aligned header,
// __metadata__, atomic temp-file + rename). Format: the huggingface/safetensors
// README (format section) and safetensors/src/tensor.rs (dtypes, header padding).
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/io/safetensors_header.h"
#include "core/io/tensor_source.h"

namespace lorad::io {

// A validated safetensors file: the one reader of the format in this tree.
// Two access patterns, chosen at Open:
//  - kMapped: the file is memory-mapped; Get returns zero-copy views of the
//    mapping that keep it alive (it is private copy-on-write, so writing to a
//    view never changes the file). For checkpoints (CPU weights in the file's
//    dtype alias the mapping: MappedView), LoRA files, fixtures, caches.
//  - kStreamed: nothing but the header is held; Get returns a fresh tensor
//    read with pread, and ReadInto reads straight into the caller's tensor when
//    dtype and layout allow (else through one tensor-sized staging buffer).
//    For files that may change while they are read.
// Both patterns validate the header with the same parser (ParseSafetensorsHeader).
// Thread-safe for concurrent reads.
class SafetensorsFile : public TensorSource {
 public:
  enum class Access { kMapped, kStreamed };

  // Opens and validates every rule of the format; each violation is a distinct
  // INVALID_ARGUMENT (or NOT_FOUND for a missing file) that names the file.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::filesystem::path& path,
                                                               Access access = Access::kMapped);

  ~SafetensorsFile() override;
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  std::vector<std::string> Names() const override;
  bool Has(std::string_view name) const override;
  absl::StatusOr<std::vector<int64_t>> Shape(std::string_view name) const override;
  // kMapped: a view of the mapping when no conversion is needed; kStreamed: a
  // fresh tensor. Dtypes LibTorch lacks (U16, U32, F8_*) are widened (a copy);
  // U64 is read as I64 (values above 2^63 wrap). NOT_FOUND names the key.
  absl::StatusOr<torch::Tensor> Get(std::string_view name,
                                    std::optional<torch::ScalarType> dtype = std::nullopt) const override;
  absl::StatusOr<std::string> DTypeName(std::string_view name) const override;
  // kStreamed with a contiguous CPU `dst` of the stored dtype: one pread into
  // dst's memory; otherwise Get, then a converting copy.
  absl::Status ReadInto(std::string_view name, torch::Tensor& dst) const override;
  // Offset of the tensor's bytes in the data buffer (TensorInfo::begin).
  std::optional<uint64_t> DataOffset(std::string_view name) const override;
  // kMapped, a dtype stored as LibTorch's `type`, an offset aligned for it.
  std::optional<torch::Tensor> MappedView(std::string_view name, torch::ScalarType type) const override;

  Access access() const { return access_; }
  const Metadata& metadata() const { return metadata_; }
  // Tensors in data-offset order.
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  // The entry of `name`, or nullptr for an unknown name. The pointer is owned
  // by this file and valid as long as it lives.
  const TensorInfo* Find(std::string_view name) const;
  const std::filesystem::path& path() const { return path_; }
  uint64_t file_size() const { return file_size_; }
  uint64_t header_size() const { return header_size_; }

 private:
  struct Storage;
  SafetensorsFile() = default;

  // The stored bytes as a tensor of `type` (same item size): a view of the
  // mapping (kMapped) or a fresh tensor read with pread (kStreamed).
  absl::StatusOr<torch::Tensor> StoredBytes(const TensorInfo& info, torch::ScalarType type) const;
  // pread of the whole tensor into `out` (kStreamed only).
  absl::Status PreadTensor(const TensorInfo& info, void* out) const;
  absl::Status UnknownTensor(std::string_view name) const;

  std::filesystem::path path_;
  Access access_ = Access::kMapped;
  // Shared with the views Get returns (kMapped), so a view outlives the file object.
  std::shared_ptr<Storage> storage_;
  uint64_t file_size_ = 0;
  uint64_t header_size_ = 0;
  Metadata metadata_;
  std::vector<TensorInfo> tensors_;
  absl::flat_hash_map<std::string, size_t> index_;
};


// The safetensors dtype of a LibTorch scalar type; error for unsupported ones.
absl::StatusOr<DType> DTypeFromTorch(torch::ScalarType type);

using NamedTensors = std::vector<std::pair<std::string, torch::Tensor>>;

// Serializes to an in-memory safetensors image: header padded with spaces to a
// multiple of 8, tensors ordered as the reference writer does (larger dtype
// alignment first, then by name).
absl::StatusOr<std::string> SerializeSafetensors(const NamedTensors& tensors, const Metadata& metadata);

// Writes a safetensors file atomically (temp file in the same folder, fsync,
// rename). Streams tensor by tensor: no second copy of the whole file in memory.
absl::Status WriteSafetensors(const std::filesystem::path& path, const NamedTensors& tensors,
                              const Metadata& metadata);

}  // namespace lorad::io
