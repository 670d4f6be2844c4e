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
#include <set>

#include <nlohmann/json.hpp>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/base/json_scan.h"
#include "core/base/status_macros.h"

namespace lorad::io {
namespace {

constexpr uint64_t kMaxHeaderBytes = 100ull * 1000 * 1000;  // the reference reader's limit
// Most tensors in one file. An SDXL checkpoint has about 2,500, the largest
// LyCORIS files and training states a few tens of thousands.
constexpr size_t kMaxTensors = 100000;
// Highest tensor rank (Stable Diffusion's are at most 4).
constexpr size_t kMaxRank = 8;

// Builds the header's DOM like nlohmann's own parser, and on the way counts the
// top-level keys (stopping at the tensor limit) and finds a duplicate one
// (nlohmann keeps the last silently). Not nlohmann's callback parser: its
// end_object rescans the parent object, quadratic in the tensor count.
class HeaderSax : public nlohmann::detail::json_sax_dom_parser<nlohmann::json> {
 public:
  using Base = nlohmann::detail::json_sax_dom_parser<nlohmann::json>;
  explicit HeaderSax(nlohmann::json& root) : Base(root, /*allow_exceptions=*/true) {}

  bool start_object(std::size_t len) {
    ++depth_;
    return Base::start_object(len);
  }
  bool end_object() {
    --depth_;
    return Base::end_object();
  }
  bool start_array(std::size_t len) {
    ++depth_;
    return Base::start_array(len);
  }
  bool end_array() {
    --depth_;
    return Base::end_array();
  }
  bool key(std::string& name) {
    if (depth_ == 1) {
      if (top_keys_.size() > kMaxTensors) {  // kMaxTensors + __metadata__
        too_many_ = true;
        return false;
      }
      if (!top_keys_.insert(name).second && duplicate_.empty()) duplicate_ = name;
    }
    return Base::key(name);
  }

  bool too_many() const { return too_many_; }
  const std::string& duplicate() const { return duplicate_; }

 private:
  int depth_ = 0;
  absl::flat_hash_set<std::string> top_keys_;
  std::string duplicate_;
  bool too_many_ = false;
};

struct DTypeEntry {
  DType dtype;
  std::string_view name;
  size_t size;
};
constexpr std::array<DTypeEntry, 15> kDTypes = {{
    {DType::kBool, "BOOL", 1}, {DType::kU8, "U8", 1},       {DType::kI8, "I8", 1},
    {DType::kF8_E5M2, "F8_E5M2", 1}, {DType::kF8_E4M3, "F8_E4M3", 1}, {DType::kI16, "I16", 2},
    {DType::kU16, "U16", 2},   {DType::kF16, "F16", 2},     {DType::kBF16, "BF16", 2},
    {DType::kI32, "I32", 4},   {DType::kU32, "U32", 4},     {DType::kF32, "F32", 4},
    {DType::kF64, "F64", 8},   {DType::kI64, "I64", 8},     {DType::kU64, "U64", 8},
}};

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

std::optional<DType> ParseDType(std::string_view name) {
  for (const auto& e : kDTypes) {
    if (e.name == name) return e.dtype;
  }
  return std::nullopt;
}

std::string_view DTypeToString(DType dtype) {
  for (const auto& e : kDTypes) {
    if (e.dtype == dtype) return e.name;
  }
  return "?";
}

size_t DTypeSize(DType dtype) {
  for (const auto& e : kDTypes) {
    if (e.dtype == dtype) return e.size;
  }
  return 0;
}

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

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

namespace {

// The header length from the 8-byte little-endian prefix. `data` holds at least
// min(8, file_size) bytes.
absl::StatusOr<uint64_t> HeaderLength(const uint8_t* data, uint64_t file_size, std::string_view what) {
  if (file_size < 8) {
    return Invalid(what, absl::StrCat("file is ", file_size,
                                      " bytes, too small for the 8-byte header length; it is not a "
                                      "safetensors file or was truncated"));
  }
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | data[i];
  if (n > kMaxHeaderBytes) {
    return Invalid(what, absl::StrCat("header length ", n, " exceeds the 100 MB limit; the file is "
                                      "corrupt or not a safetensors file"));
  }
  if (n > file_size - 8) {
    return Invalid(what, absl::StrCat("header length ", n, " runs past the end of the file (",
                                      file_size, " bytes); the file was truncated"));
  }
  return n;
}

// Validates the header text (the `n` bytes after the length prefix) of a file
// of `file_size` bytes: JSON, metadata, dtypes, shapes and the exact tiling of
// the data buffer.
absl::Status ParseHeaderText(std::string_view header_text, uint64_t file_size, std::string_view what,
                             std::vector<TensorInfo>* tensors, Metadata* metadata) {
  const uint64_t n = header_text.size();
  if (n == 0 || header_text.front() != '{') {
    return Invalid(what, "header does not start with '{'; not a safetensors file");
  }
  // Scanned before nlohmann sees it: its recursion per nesting level overflows
  // the stack on a header nested 100,000 deep.
  const JsonScan scan = ScanJson(header_text);
  if (scan.depth > kMaxJsonDepth) {
    return Invalid(what, absl::StrCat("header JSON is nested more than ", kMaxJsonDepth,
                                      " levels deep (a safetensors header has 3)"));
  }
  if (scan.end == std::string_view::npos) return Invalid(what, "header is not valid JSON: its object is not closed");
  // Only space padding may follow the JSON (the reference writer pads with
  // spaces); a NUL or anything else is refused.
  for (size_t i = scan.end; i < header_text.size(); ++i) {
    if (header_text[i] != ' ') {
      return Invalid(what, absl::StrCat("header has byte 0x", absl::Hex(static_cast<uint8_t>(header_text[i]),
                                                                           absl::kZeroPad2),
                                        " after its JSON at offset ", i, "; only spaces may pad the header"));
    }
  }
  header_text = header_text.substr(0, scan.end);

  nlohmann::json header;
  HeaderSax sax(header);
  try {
    nlohmann::json::sax_parse(header_text.begin(), header_text.end(), &sax);
  } catch (const nlohmann::json::exception& e) {
    return Invalid(what, absl::StrCat("header is not valid JSON: ", e.what()));
  }
  if (sax.too_many()) {
    return Invalid(what, absl::StrCat("header lists more than ", kMaxTensors, " tensors, the limit per file"));
  }
  if (!sax.duplicate().empty()) {
    return Invalid(what, absl::StrCat("header has the key '", sax.duplicate(), "' twice"));
  }
  if (!header.is_object()) return Invalid(what, "header JSON is not an object");

  const uint64_t buffer_size = file_size - 8 - n;
  tensors->clear();
  metadata->clear();
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& key = it.key();
    const auto& value = it.value();
    if (key == "__metadata__") {
      if (!value.is_object()) return Invalid(what, "__metadata__ is not a JSON object");
      for (auto m = value.begin(); m != value.end(); ++m) {
        if (!m.value().is_string()) {
          return Invalid(what, absl::StrCat("__metadata__ value of '", m.key(),
                                            "' is not a string (only string -> string is allowed)"));
        }
        (*metadata)[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    if (!value.is_object()) return Invalid(what, absl::StrCat("tensor '", key, "' entry is not an object"));
    TensorInfo info;
    info.name = key;
    auto dt = value.find("dtype");
    if (dt == value.end() || !dt->is_string()) {
      return Invalid(what, absl::StrCat("tensor '", key, "' has no dtype string"));
    }
    auto parsed = ParseDType(dt->get<std::string>());
    if (!parsed) {
      return Invalid(what, absl::StrCat("tensor '", key, "' has unknown dtype '", dt->get<std::string>(),
                                        "' (known: BOOL U8 I8 F8_E5M2 F8_E4M3 I16 U16 F16 BF16 I32 U32 "
                                        "F32 F64 I64 U64)"));
    }
    info.dtype = *parsed;
    auto sh = value.find("shape");
    if (sh == value.end() || !sh->is_array()) {
      return Invalid(what, absl::StrCat("tensor '", key, "' has no shape list"));
    }
    if (sh->size() > kMaxRank) {
      return Invalid(what, absl::StrCat("tensor '", key, "' has rank ", sh->size(), "; at most ", kMaxRank,
                                        " dimensions are accepted"));
    }
    uint64_t numel = 1;
    for (const auto& d : *sh) {
      if (!d.is_number_integer() || d.get<int64_t>() < 0) {
        return Invalid(what, absl::StrCat("tensor '", key, "' has a shape entry that is not a "
                                          "non-negative integer: ", d.dump()));
      }
      const auto dim = d.get<uint64_t>();
      if (dim != 0 && numel > std::numeric_limits<uint64_t>::max() / 16 / dim) {
        return Invalid(what, absl::StrCat("tensor '", key, "' shape overflows"));
      }
      numel *= dim;
      info.shape.push_back(static_cast<int64_t>(dim));
    }
    auto off = value.find("data_offsets");
    if (off == value.end() || !off->is_array() || off->size() != 2 || !(*off)[0].is_number_unsigned() ||
        !(*off)[1].is_number_unsigned()) {
      return Invalid(what, absl::StrCat("tensor '", key, "' has no [begin, end] data_offsets"));
    }
    info.begin = (*off)[0].get<uint64_t>();
    info.end = (*off)[1].get<uint64_t>();
    if (info.end < info.begin) {
      return Invalid(what, absl::StrCat("tensor '", key, "' data_offsets end ", info.end,
                                        " is before begin ", info.begin));
    }
    const uint64_t expected = numel * DTypeSize(info.dtype);
    if (info.end - info.begin != expected) {
      return Invalid(what, absl::StrCat("tensor '", key, "' byte range is ", info.end - info.begin,
                                        " bytes but shape x itemsize is ", expected));
    }
    if (info.end > buffer_size) {
      return Invalid(what, absl::StrCat("tensor '", key, "' range [", info.begin, ", ", info.end,
                                        ") is out of bounds of the ", buffer_size,
                                        "-byte data buffer; the file was truncated"));
    }
    tensors->push_back(std::move(info));
  }
  std::sort(tensors->begin(), tensors->end(), [](const TensorInfo& a, const TensorInfo& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t cursor = 0;
  for (const auto& t : *tensors) {
    if (t.begin < cursor) {
      return Invalid(what, absl::StrCat("tensor '", t.name, "' range [", t.begin, ", ", t.end,
                                        ") overlaps the previous tensor (which ends at ", cursor, ")"));
    }
    if (t.begin > cursor) {
      return Invalid(what, absl::StrCat("data buffer has a hole of ", t.begin - cursor,
                                        " bytes before tensor '", t.name, "' (bytes not covered by any tensor)"));
    }
    cursor = t.end;
  }
  if (cursor != buffer_size) {
    return Invalid(what, absl::StrCat("data buffer has ", buffer_size - cursor,
                                      " trailing bytes not covered by any tensor"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ParseSafetensorsHeader(const uint8_t* data, uint64_t size, std::string_view what,
                                    std::vector<TensorInfo>* tensors, Metadata* metadata,
                                    uint64_t* header_size) {
  ASSIGN_OR_RETURN(const uint64_t n, HeaderLength(data, size, what));
  RETURN_IF_ERROR(ParseHeaderText(std::string_view(reinterpret_cast<const char*>(data + 8), n), size, what,
                                  tensors, metadata));
  *header_size = n;
  return absl::OkStatus();
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
    ASSIGN_OR_RETURN(file->header_size_, HeaderLength(prefix.data(), file->file_size_, what));
    std::string header(file->header_size_, '\0');
    RETURN_IF_ERROR(PreadAll(storage->fd, header.data(), header.size(), 8, what));
    RETURN_IF_ERROR(ParseHeaderText(header, file->file_size_, what, &file->tensors_, &file->metadata_));
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
      return absl::DataLossError(absl::StrCat(path.string(), ": write failed: ", std::strerror(err)));
    }
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::filesystem::remove(tmp);
    return absl::DataLossError(absl::StrCat(path.string(), ": rename failed: ", ec.message()));
  }
  return absl::OkStatus();
}

}  // namespace lorad::io
