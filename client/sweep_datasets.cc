#include "client/sweep_datasets.h"

#include <algorithm>
#include <cstdlib>

#include <toml++/toml.h>

#include "absl/strings/str_cat.h"
#include "core/base/toml.h"

namespace lorad::client {
namespace fs = std::filesystem;

namespace {

// Where `value` would be on this machine, when it is a folder here.
std::optional<fs::path> LocalFolder(const std::string& value, const fs::path& base_dir) {
  if (value.empty()) return std::nullopt;
  fs::path path;
  if (value.rfind("~/", 0) == 0) {
    const char* home = std::getenv("HOME");
    if (home == nullptr || *home == '\0') return std::nullopt;
    path = fs::path(home) / value.substr(2);
  } else {
    path = fs::path(value);
    if (path.is_relative()) path = base_dir / path;
  }
  std::error_code ec;
  if (!fs::is_directory(path, ec)) return std::nullopt;
  return fs::weakly_canonical(path, ec);
}

void AddIfLocal(const toml::node& node, const fs::path& base_dir, std::vector<LocalDatasetEntry>* out) {
  const auto value = node.value_exact<std::string>();
  if (!value) return;
  if (auto folder = LocalFolder(*value, base_dir)) {
    out->push_back(LocalDatasetEntry{*value, *folder, static_cast<int>(node.source().begin.line),
                                     static_cast<int>(node.source().begin.column)});
  }
}

// Byte offset of (line, column) in `text`, columns counted in code points
// (toml++'s source positions), or npos.
size_t OffsetOf(const std::string& text, int line, int column) {
  size_t offset = 0;
  for (int l = 1; l < line; ++l) {
    offset = text.find('\n', offset);
    if (offset == std::string::npos) return offset;
    ++offset;
  }
  for (int c = 1; c < column && offset < text.size() && text[offset] != '\n'; ++c) {
    ++offset;
    while (offset < text.size() && (static_cast<unsigned char>(text[offset]) & 0xC0) == 0x80) ++offset;
  }
  return offset;
}

std::string FolderLabel(const std::string& value) {
  std::string text = value;
  while (text.size() > 1 && text.back() == '/') text.pop_back();
  const std::string name = fs::path(text).filename().string();
  return name.empty() ? text : name;
}

}  // namespace

absl::StatusOr<std::vector<LocalDatasetEntry>> FindLocalDatasetEntries(const std::string& sweep_toml,
                                                                       const fs::path& base_dir) {
  auto parsed = ParseToml(sweep_toml, "sweep file");
  if (!parsed.ok()) return parsed.status();
  std::vector<LocalDatasetEntry> entries;
  if (const toml::node* top = parsed->get("dataset")) AddIfLocal(*top, base_dir, &entries);
  if (const toml::table* sweep = (*parsed)["sweep"].as_table()) {
    if (const toml::array* list = (*sweep)["dataset"].as_array()) {
      for (const toml::node& item : *list) AddIfLocal(item, base_dir, &entries);
    }
  }
  return entries;
}

absl::StatusOr<std::string> RewriteDatasetEntries(const std::string& sweep_toml,
                                                  const std::vector<LocalDatasetEntry>& entries,
                                                  const std::vector<std::string>& ids) {
  if (ids.size() != entries.size()) return absl::InternalError("one id per dataset entry is needed");
  struct Edit {
    size_t begin, end;
    std::string text;
  };
  std::vector<Edit> edits;
  for (size_t i = 0; i < entries.size(); ++i) {
    const LocalDatasetEntry& entry = entries[i];
    const size_t begin = OffsetOf(sweep_toml, entry.line, entry.column);
    const auto refuse = [&] {
      return absl::InvalidArgumentError(absl::StrCat(
          "sweep file line ", entry.line, ": cannot rewrite dataset '", entry.value,
          "' (write it as a plain \"...\" string, or upload it with `loractl datasets upload` and use the id)"));
    };
    if (begin == std::string::npos || begin >= sweep_toml.size()) return refuse();
    const char quote = sweep_toml[begin];
    if (quote != '"' && quote != '\'') return refuse();
    const size_t end = sweep_toml.find(quote, begin + 1);
    if (end == std::string::npos || sweep_toml.substr(begin + 1, end - begin - 1) != entry.value ||
        sweep_toml.compare(begin, 3, std::string(3, quote)) == 0) {
      return refuse();  // escapes, multi-line strings: not worth guessing
    }
    edits.push_back(Edit{begin, end + 1, absl::StrCat("\"", ids[i], "\"")});
  }
  // From the end, so earlier offsets stay valid.
  std::sort(edits.begin(), edits.end(), [](const Edit& a, const Edit& b) { return a.begin > b.begin; });
  std::string out = sweep_toml;
  for (const Edit& edit : edits) out.replace(edit.begin, edit.end - edit.begin, edit.text);
  return out;
}

absl::StatusOr<PreparedSweep> UploadSweepDatasets(Client& client, const std::string& sweep_toml,
                                                  const fs::path& base_dir,
                                                  const std::function<void(const std::string&)>& note) {
  auto entries = FindLocalDatasetEntries(sweep_toml, base_dir);
  if (!entries.ok()) return entries.status();
  PreparedSweep prepared;
  std::map<fs::path, std::string> done;  // folder -> id: each folder once
  std::vector<std::string> ids;
  for (const LocalDatasetEntry& entry : *entries) {
    auto known = done.find(entry.folder);
    if (known == done.end()) {
      auto ensured = client.EnsureDataset(entry.folder, FolderLabel(entry.value));
      if (!ensured.ok()) {
        return absl::Status(ensured.status().code(), absl::StrCat("dataset folder ", entry.folder.string(), ": ",
                                                                  ensured.status().message()));
      }
      const auto& d = ensured->dataset;
      (ensured->uploaded ? prepared.uploaded : prepared.already_there) += 1;
      if (note) {
        note(absl::StrCat(entry.value, " -> dataset ", d.id(), ensured->uploaded ? " (uploaded, " : " (already on the daemon, ",
                          d.files(), " files, ", d.images(), " images)"));
      }
      known = done.emplace(entry.folder, d.id()).first;
      prepared.dataset_labels[d.id()] = FolderLabel(entry.value);
    }
    ids.push_back(known->second);
  }
  auto rewritten = RewriteDatasetEntries(sweep_toml, *entries, ids);
  if (!rewritten.ok()) return rewritten.status();
  prepared.sweep_toml = std::move(*rewritten);
  return prepared;
}

}  // namespace lorad::client
