#include "core/io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/base/status_macros.h"

namespace lorad::io {
namespace {



absl::Status Invalid(std::string_view what, const std::string& msg) {
  return absl::InvalidArgumentError(absl::StrCat(std::string(what), ": ", msg));
}

// Float8 decoders (LibTorch 1.13 has no float8 types): 256-entry tables.
float DecodeF8(uint8_t byte, int exp_bits, int man_bits, int bias, bool e4m3fn) {
  const int sign = byte >> 7;
  const int exp = (byte >> man_bits) & ((1 << exp_bits) - 1);
  const int man = byte & ((1 << man_bits) - 1);
  float value;
  if (e4m3fn && exp == 0xF && man == 0x7) {
    value = std::numeric_limits<float>::quiet_NaN();
  } else if (!e4m3fn && exp == (1 << exp_bits) - 1) {
    value = man == 0 ? std::numeric_limits<float>::infinity() : std::numeric_limits<float>::quiet_NaN();
  } else if (exp == 0) {
    value = std::ldexp(static_cast<float>(man) / (1 << man_bits), 1 - bias);
  } else {
    value = std::ldexp(1.0f + static_cast<float>(man) / (1 << man_bits), exp - bias);
  }
  return sign ? -value : value;
}

torch::Tensor DecodeFloat8(const torch::Tensor& bytes, DType dtype) {
  std::array<float, 256> table{};
  for (int i = 0; i < 256; ++i) {
    table[i] = dtype == DType::kF8_E4M3 ? DecodeF8(static_cast<uint8_t>(i), 4, 3, 7, true)
                                        : DecodeF8(static_cast<uint8_t>(i), 5, 2, 15, false);
  }
  auto lut = torch::from_blob(table.data(), {256}, torch::kFloat32).clone();
  return lut.index_select(0, bytes.flatten().to(torch::kLong)).view(bytes.sizes());
}

}  // namespace


absl::StatusOr<DType> DTypeFromTorch(torch::ScalarType type) {
  switch (type) {
    case torch::kBool: return DType::kBool;
    case torch::kByte: return DType::kU8;
    case torch::kChar: return DType::kI8;
    case torch::kShort: return DType::kI16;
    case torch::kHalf: return DType::kF16;
    case torch::kBFloat16: return DType::kBF16;
    case torch::kInt: return DType::kI32;
    case torch::kFloat: return DType::kF32;
    case torch::kDouble: return DType::kF64;
    case torch::kLong: return DType::kI64;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("safetensors cannot store LibTorch dtype ", c10::toString(type)));
  }
}



// What a SafetensorsFile reads from: the mapping (kMapped) or an open
// descriptor (kStreamed). Shared with the views Get returns.
struct SafetensorsFile::Storage {
  void* addr = nullptr;  // the mapping; nullptr when kStreamed or the file is empty
  size_t size = 0;
  int fd = -1;  // kStreamed only
  ~Storage() {
    if (addr != nullptr) munmap(addr, size);
    if (fd >= 0) ::close(fd);
  }
};

namespace {

// The LibTorch type holding the stored bytes unchanged (same item size).
torch::ScalarType StorageType(DType dtype) {
  switch (dtype) {
    case DType::kBool: return torch::kBool;
    case DType::kU8:
    case DType::kF8_E4M3:
    case DType::kF8_E5M2: return torch::kByte;
    case DType::kI8: return torch::kChar;
    case DType::kI16:
    case DType::kU16: return torch::kShort;
    case DType::kF16: return torch::kHalf;
    case DType::kBF16: return torch::kBFloat16;
    case DType::kI32:
    case DType::kU32: return torch::kInt;
    case DType::kF32: return torch::kFloat;
    case DType::kF64: return torch::kDouble;
    case DType::kI64:
    case DType::kU64: return torch::kLong;
  }
  return torch::kByte;
}

// True when the stored bytes are the values of StorageType(dtype) without conversion.
bool StoredAsIs(DType dtype) {
  return dtype != DType::kU16 && dtype != DType::kU32 && dtype != DType::kF8_E4M3 && dtype != DType::kF8_E5M2;
}

// pread until `size` bytes are read; an early end of file is DATA_LOSS.
absl::Status PreadAll(int fd, void* out, uint64_t size, uint64_t offset, const std::string& what) {
  auto* p = static_cast<char*>(out);
  while (size > 0) {
    const size_t chunk = static_cast<size_t>(std::min<uint64_t>(size, 1ull << 30));
    const ssize_t n = ::pread(fd, p, chunk, static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      return absl::DataLossError(
          absl::StrCat(what, ": ", n < 0 ? std::strerror(errno) : "unexpected end of file"));
    }
    p += n;
    offset += static_cast<uint64_t>(n);
    size -= static_cast<uint64_t>(n);
  }
  return absl::OkStatus();
}

}  // namespace

SafetensorsFile::~SafetensorsFile() = default;

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::filesystem::path& path,
                                                                       Access access) {
  const std::string what = path.string();
  auto storage = std::make_shared<Storage>();
  storage->fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (storage->fd < 0) {
    const int err = errno;
    if (err == ENOENT) return absl::NotFoundError(absl::StrCat(what, ": no such file"));
    return absl::PermissionDeniedError(absl::StrCat(what, ": cannot open: ", std::strerror(err)));
  }
  struct stat st {};
  if (fstat(storage->fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": not a regular file"));
  }
  auto file = std::unique_ptr<SafetensorsFile>(new SafetensorsFile());
  file->path_ = path;
  file->access_ = access;
  file->file_size_ = static_cast<uint64_t>(st.st_size);
  if (access == Access::kMapped) {
    if (st.st_size > 0) {
      // Private + writable: tensor views may be written in place without touching the file.
      void* addr = mmap(nullptr, st.st_size, PROT_READ | PROT_WRITE, MAP_PRIVATE, storage->fd, 0);
      if (addr == MAP_FAILED) {
        return absl::ResourceExhaustedError(absl::StrCat(what, ": mmap failed: ", std::strerror(errno)));
      }
      storage->addr = addr;
      storage->size = st.st_size;
    }
    ::close(storage->fd);  // the mapping stays valid without the descriptor
    storage->fd = -1;
    RETURN_IF_ERROR(ParseSafetensorsHeader(static_cast<const uint8_t*>(storage->addr), file->file_size_, what,
                                           &file->tensors_, &file->metadata_, &file->header_size_));
  } else {
    // Only the header is read; the same two validation steps ParseSafetensorsHeader runs.
    std::array<uint8_t, 8> prefix{};
    const uint64_t prefix_size = std::min<uint64_t>(8, file->file_size_);
    RETURN_IF_ERROR(PreadAll(storage->fd, prefix.data(), prefix_size, 0, what));
    ASSIGN_OR_RETURN(file->header_size_, ReadSafetensorsHeaderLength(prefix.data(), file->file_size_, what));
    std::string header(file->header_size_, '\0');
    RETURN_IF_ERROR(PreadAll(storage->fd, header.data(), header.size(), 8, what));
    RETURN_IF_ERROR(ParseSafetensorsHeaderText(header, file->file_size_, what, &file->tensors_, &file->metadata_));
  }
  file->storage_ = std::move(storage);
  for (size_t i = 0; i < file->tensors_.size(); ++i) file->index_[file->tensors_[i].name] = i;
  return file;
}

const TensorInfo* SafetensorsFile::Find(std::string_view name) const {
  auto it = index_.find(std::string(name));
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

absl::Status SafetensorsFile::UnknownTensor(std::string_view name) const {
  return absl::NotFoundError(absl::StrCat(path_.string(), ": has no tensor '", std::string(name), "'"));
}

std::vector<std::string> SafetensorsFile::Names() const {
  std::vector<std::string> names;
  names.reserve(tensors_.size());
  for (const auto& t : tensors_) names.push_back(t.name);
  std::sort(names.begin(), names.end());
  return names;
}

bool SafetensorsFile::Has(std::string_view name) const { return Find(name) != nullptr; }

absl::StatusOr<std::vector<int64_t>> SafetensorsFile::Shape(std::string_view name) const {
  const TensorInfo* info = Find(name);
  if (info == nullptr) return UnknownTensor(name);
  return info->shape;
}

absl::StatusOr<std::string> SafetensorsFile::DTypeName(std::string_view name) const {
  const TensorInfo* info = Find(name);
  if (info == nullptr) return UnknownTensor(name);
  return std::string(DTypeToString(info->dtype));
}

std::optional<uint64_t> SafetensorsFile::DataOffset(std::string_view name) const {
  const TensorInfo* info = Find(name);
  if (info == nullptr) return std::nullopt;
  return info->begin;
}

absl::Status SafetensorsFile::PreadTensor(const TensorInfo& info, void* out) const {
  return PreadAll(storage_->fd, out, info.end - info.begin, 8 + header_size_ + info.begin,
                  absl::StrCat("reading tensor '", info.name, "' from ", path_.string()));
}

absl::StatusOr<torch::Tensor> SafetensorsFile::StoredBytes(const TensorInfo& info, torch::ScalarType type) const {
  const auto options = torch::TensorOptions().dtype(type);
  if (info.numel() == 0) return torch::empty(info.shape, options);
  if (access_ == Access::kStreamed) {
    torch::Tensor t = torch::empty(info.shape, options);
    RETURN_IF_ERROR(PreadTensor(info, t.data_ptr()));
    return t;
  }
  uint8_t* base = static_cast<uint8_t*>(storage_->addr) + 8 + header_size_ + info.begin;
  std::shared_ptr<Storage> keep = storage_;
  return torch::from_blob(base, info.shape, [keep](void*) mutable { keep.reset(); }, options);
}

absl::StatusOr<torch::Tensor> SafetensorsFile::Get(std::string_view name,
                                                   std::optional<torch::ScalarType> dtype) const {
  const TensorInfo* info = Find(name);
  if (info == nullptr) return UnknownTensor(name);
  ASSIGN_OR_RETURN(torch::Tensor stored, StoredBytes(*info, StorageType(info->dtype)));
  // Types LibTorch 1.13 lacks are widened (a copy).
  switch (info->dtype) {
    case DType::kU16: stored = stored.to(torch::kInt).bitwise_and(0xFFFF); break;
    case DType::kU32: stored = stored.to(torch::kLong).bitwise_and(static_cast<int64_t>(0xFFFFFFFF)); break;
    case DType::kF8_E4M3:
    case DType::kF8_E5M2: stored = DecodeFloat8(stored, info->dtype); break;
    default: break;  // U64 stays I64: values above 2^63 wrap
  }
  if (dtype.has_value() && stored.scalar_type() != *dtype) return stored.to(*dtype);
  return stored;
}

std::optional<torch::Tensor> SafetensorsFile::MappedView(std::string_view name, torch::ScalarType type) const {
  const TensorInfo* info = Find(name);
  if (info == nullptr || access_ != Access::kMapped || info->numel() == 0 || !StoredAsIs(info->dtype) ||
      StorageType(info->dtype) != type) {
    return std::nullopt;
  }
  const uint64_t offset = 8 + header_size_ + info->begin;
  if (offset % DTypeSize(info->dtype) != 0) return std::nullopt;  // elements must be aligned
  auto view = StoredBytes(*info, type);
  if (!view.ok()) return std::nullopt;
  return *view;
}

absl::Status SafetensorsFile::ReadInto(std::string_view name, torch::Tensor& dst) const {
  const TensorInfo* info = Find(name);
  if (info == nullptr) return UnknownTensor(name);
  if (info->numel() != dst.numel()) {
    return absl::InvalidArgumentError(absl::StrCat(path_.string(), ": tensor '", std::string(name), "' has ",
                                                   info->numel(), " elements, the destination ", dst.numel()));
  }
  if (access_ == Access::kStreamed && StoredAsIs(info->dtype) && StorageType(info->dtype) == dst.scalar_type() &&
      dst.device().is_cpu() && dst.is_contiguous()) {
    return PreadTensor(*info, dst.data_ptr());  // no staging copy
  }
  ASSIGN_OR_RETURN(torch::Tensor t, Get(name));
  torch::NoGradGuard no_grad;
  dst.copy_(t.reshape(dst.sizes()));
  return absl::OkStatus();
}

namespace {

struct PlannedTensor {
  std::string name;
  DType dtype;
  torch::Tensor tensor;  // contiguous, CPU
  uint64_t begin = 0, end = 0;
};

absl::StatusOr<std::pair<std::string, std::vector<PlannedTensor>>> PlanLayout(const NamedTensors& tensors,
                                                                             const Metadata& metadata) {
  std::vector<PlannedTensor> planned;
  planned.reserve(tensors.size());
  std::set<std::string> seen;
  for (const auto& [name, tensor] : tensors) {
    if (name == "__metadata__") return absl::InvalidArgumentError("a tensor cannot be named __metadata__");
    if (!seen.insert(name).second) {
      return absl::InvalidArgumentError(absl::StrCat("tensor name '", name, "' given twice"));
    }
    if (!tensor.defined()) return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' is undefined"));
    ASSIGN_OR_RETURN(DType dt, DTypeFromTorch(tensor.scalar_type()));
    planned.push_back({name, dt, tensor, 0, 0});
  }
  // Reference writer order: larger alignment first, then by name.
  std::stable_sort(planned.begin(), planned.end(), [](const PlannedTensor& a, const PlannedTensor& b) {
    const size_t sa = DTypeSize(a.dtype), sb = DTypeSize(b.dtype);
    return sa != sb ? sa > sb : a.name < b.name;
  });
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    nlohmann::ordered_json meta = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata) meta[k] = v;
    header["__metadata__"] = std::move(meta);
  }
  uint64_t cursor = 0;
  for (auto& p : planned) {
    const uint64_t bytes = static_cast<uint64_t>(p.tensor.numel()) * DTypeSize(p.dtype);
    p.begin = cursor;
    p.end = cursor + bytes;
    cursor = p.end;
    nlohmann::ordered_json entry;
    entry["dtype"] = std::string(DTypeToString(p.dtype));
    entry["shape"] = p.tensor.sizes().vec();
    entry["data_offsets"] = {p.begin, p.end};
    header[p.name] = std::move(entry);
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  return std::make_pair(std::move(text), std::move(planned));
}

std::string LengthPrefix(uint64_t n) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xFF);
  return out;
}

torch::Tensor HostBytes(const torch::Tensor& t) {
  return t.detach().to(torch::kCPU).contiguous();
}

}  // namespace

absl::StatusOr<std::string> SerializeSafetensors(const NamedTensors& tensors, const Metadata& metadata) {
  ASSIGN_OR_RETURN(auto plan, PlanLayout(tensors, metadata));
  auto& [header, planned] = plan;
  std::string out = LengthPrefix(header.size());
  out += header;
  for (const auto& p : planned) {
    auto host = HostBytes(p.tensor);
    out.append(static_cast<const char*>(host.data_ptr()), p.end - p.begin);
  }
  return out;
}

absl::Status WriteSafetensors(const std::filesystem::path& path, const NamedTensors& tensors,
                              const Metadata& metadata) {
  ASSIGN_OR_RETURN(auto plan, PlanLayout(tensors, metadata));
  auto& [header, planned] = plan;
  std::filesystem::path tmp = path;
  tmp += absl::StrCat(".tmp.", ::getpid());
  {
    int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
      return absl::PermissionDeniedError(
          absl::StrCat(tmp.string(), ": cannot create: ", std::strerror(errno)));
    }
    auto write_all = [&](const void* data, size_t size) -> bool {
      const char* p = static_cast<const char*>(data);
      while (size > 0) {
        ssize_t w = ::write(fd, p, std::min<size_t>(size, 1 << 30));
        if (w < 0) {
          if (errno == EINTR) continue;
          return false;
        }
        p += w;
        size -= static_cast<size_t>(w);
      }
      return true;
    };
    const std::string prefix = LengthPrefix(header.size());
    bool ok = write_all(prefix.data(), prefix.size()) && write_all(header.data(), header.size());
    for (size_t i = 0; ok && i < planned.size(); ++i) {
      auto host = HostBytes(planned[i].tensor);
      ok = write_all(host.data_ptr(), planned[i].end - planned[i].begin);
    }
    const int err = errno;
    ok = ok && ::fsync(fd) == 0;
    ::close(fd);
    if (!ok) {
      std::filesystem::remove(tmp);
      // UNAVAILABLE, not DATA_LOSS: nothing is corrupt, the disk is full or failing.
      return absl::UnavailableError(absl::StrCat(path.string(), ": write failed: ", std::strerror(err)));
    }
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::filesystem::remove(tmp);
    return absl::UnavailableError(absl::StrCat(path.string(), ": rename failed: ", ec.message()));
  }
  return absl::OkStatus();
}

}  // namespace lorad::io
