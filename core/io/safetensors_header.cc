#include "core/io/safetensors_header.h"

#include <algorithm>
#include <array>
#include <limits>

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

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// The header length from the 8-byte little-endian prefix. `data` holds at least
// min(8, file_size) bytes.
absl::StatusOr<uint64_t> ReadSafetensorsHeaderLength(const uint8_t* data, uint64_t file_size, std::string_view what) {
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
absl::Status ParseSafetensorsHeaderText(std::string_view header_text, uint64_t file_size, std::string_view what,
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

absl::Status ParseSafetensorsHeader(const uint8_t* data, uint64_t size, std::string_view what,
                                    std::vector<TensorInfo>* tensors, Metadata* metadata,
                                    uint64_t* header_size) {
  ASSIGN_OR_RETURN(const uint64_t n, ReadSafetensorsHeaderLength(data, size, what));
  RETURN_IF_ERROR(ParseSafetensorsHeaderText(std::string_view(reinterpret_cast<const char*>(data + 8), n), size, what,
                                  tensors, metadata));
  *header_size = n;
  return absl::OkStatus();
}

}  // namespace lorad::io
