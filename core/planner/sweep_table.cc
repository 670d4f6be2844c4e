#include "core/planner/sweep_table.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include <nlohmann/json.hpp>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace lorad::planner {
namespace {

std::vector<std::string> VariedColumns(const std::vector<SweepTableRow>& rows) {
  std::vector<std::string> columns;
  for (const SweepTableRow& row : rows) {
    for (const auto& [key, value] : row.varied) {
      if (std::find(columns.begin(), columns.end(), key) == columns.end()) columns.push_back(key);
    }
  }
  return columns;
}

std::string VariedValue(const SweepTableRow& row, const std::string& key) {
  for (const auto& [k, v] : row.varied) {
    if (k == key) return v;
  }
  return "";
}

std::string Fixed(double value, int decimals) {
  char buffer[64];
  std::snprintf(buffer, sizeof(buffer), "%.*f", decimals, value);
  return buffer;
}

// Shortest exact-enough text for CSV (round-trips a double).
std::string Exact(double value) {
  char buffer[64];
  std::snprintf(buffer, sizeof(buffer), "%.17g", value);
  std::string shortest = buffer;
  for (int digits = 1; digits <= 17; ++digits) {
    std::snprintf(buffer, sizeof(buffer), "%.*g", digits, value);
    if (std::strtod(buffer, nullptr) == value) {
      shortest = buffer;
      break;
    }
  }
  return shortest;
}

std::string StepsText(const SweepTableRow& row) {
  return row.total_steps ? absl::StrCat(row.steps, "/", *row.total_steps) : absl::StrCat(row.steps);
}

std::string CsvField(const std::string& text) {
  if (text.find_first_of(",\"\r\n") == std::string::npos) return text;
  std::string out = "\"";
  for (char c : text) {
    if (c == '"') out += '"';
    out += c;
  }
  return out + "\"";
}

std::vector<std::string> Header(const std::vector<std::string>& varied) {
  std::vector<std::string> header = {"job"};
  header.insert(header.end(), varied.begin(), varied.end());
  for (const char* column : {"state", "final_loss", "min_loss", "steps", "duration",
                             "images_per_s", "lora"}) {
    header.push_back(column);
  }
  return header;
}

std::string FormatText(const std::vector<SweepTableRow>& rows) {
  const std::vector<std::string> varied = VariedColumns(rows);
  std::vector<std::vector<std::string>> cells = {Header(varied)};
  const auto or_dash = [](const std::optional<double>& value, int decimals) {
    return value ? Fixed(*value, decimals) : std::string("-");
  };
  for (const SweepTableRow& row : rows) {
    std::vector<std::string> line = {row.name.empty() ? row.job_id : row.name};
    for (const std::string& key : varied) line.push_back(VariedValue(row, key));
    line.push_back(row.state);
    line.push_back(or_dash(row.final_smoothed_loss, 4));
    line.push_back(or_dash(row.min_smoothed_loss, 4));
    line.push_back(StepsText(row));
    line.push_back(row.duration_s ? FormatDuration(*row.duration_s) : "-");
    line.push_back(or_dash(row.images_per_s, 2));
    line.push_back(row.lora_path.empty() ? "-" : row.lora_path);
    cells.push_back(std::move(line));
  }
  std::vector<size_t> widths(cells.front().size(), 0);
  for (const auto& line : cells) {
    for (size_t i = 0; i < line.size(); ++i) widths[i] = std::max(widths[i], line[i].size());
  }
  std::string out;
  for (const auto& line : cells) {
    std::string text;
    for (size_t i = 0; i < line.size(); ++i) {
      absl::StrAppend(&text, line[i]);
      if (i + 1 < line.size()) text.append(widths[i] - line[i].size() + 2, ' ');
    }
    absl::StrAppend(&out, text, "\n");
  }
  return out;
}

std::string FormatCsv(const std::vector<SweepTableRow>& rows) {
  const std::vector<std::string> varied = VariedColumns(rows);
  // CSV carries raw numbers: seconds, steps and total steps apart.
  std::vector<std::string> header = {"job_id", "name"};
  header.insert(header.end(), varied.begin(), varied.end());
  for (const char* column : {"state", "final_smoothed_loss", "min_smoothed_loss", "steps",
                             "total_steps", "duration_s", "images_per_s", "lora_path"}) {
    header.push_back(column);
  }
  std::string out;
  std::vector<std::string> fields;
  for (const std::string& h : header) fields.push_back(CsvField(h));
  absl::StrAppend(&out, absl::StrJoin(fields, ","), "\n");
  const auto number = [](const std::optional<double>& value) {
    return value ? Exact(*value) : std::string();
  };
  for (const SweepTableRow& row : rows) {
    fields = {CsvField(row.job_id), CsvField(row.name)};
    for (const std::string& key : varied) fields.push_back(CsvField(VariedValue(row, key)));
    fields.push_back(CsvField(row.state));
    fields.push_back(number(row.final_smoothed_loss));
    fields.push_back(number(row.min_smoothed_loss));
    fields.push_back(absl::StrCat(row.steps));
    fields.push_back(row.total_steps ? absl::StrCat(*row.total_steps) : "");
    fields.push_back(number(row.duration_s));
    fields.push_back(number(row.images_per_s));
    fields.push_back(CsvField(row.lora_path));
    absl::StrAppend(&out, absl::StrJoin(fields, ","), "\n");
  }
  return out;
}

std::string FormatJson(const std::vector<SweepTableRow>& rows) {
  nlohmann::json out = nlohmann::json::array();
  const auto number = [](const auto& value) -> nlohmann::json {
    if (value) return *value;
    return nullptr;
  };
  for (const SweepTableRow& row : rows) {
    nlohmann::json varied = nlohmann::json::object();
    for (const auto& [key, value] : row.varied) varied[key] = value;
    out.push_back({{"job_id", row.job_id},
                   {"name", row.name},
                   {"varied", std::move(varied)},
                   {"state", row.state},
                   {"final_smoothed_loss", number(row.final_smoothed_loss)},
                   {"min_smoothed_loss", number(row.min_smoothed_loss)},
                   {"steps", row.steps},
                   {"total_steps", number(row.total_steps)},
                   {"duration_s", number(row.duration_s)},
                   {"images_per_s", number(row.images_per_s)},
                   {"lora_path", row.lora_path}});
  }
  return out.dump(2) + "\n";
}

}  // namespace

absl::StatusOr<TableFormat> ParseTableFormat(absl::string_view text) {
  const std::string lower = absl::AsciiStrToLower(text);
  if (lower == "text" || lower == "table") return TableFormat::kText;
  if (lower == "csv") return TableFormat::kCsv;
  if (lower == "json") return TableFormat::kJson;
  return absl::InvalidArgumentError(
      absl::StrCat("table format '", std::string(text), "' is not one of: text, csv, json"));
}

std::string FormatSweepTable(const std::vector<SweepTableRow>& rows, TableFormat format) {
  switch (format) {
    case TableFormat::kCsv: return FormatCsv(rows);
    case TableFormat::kJson: return FormatJson(rows);
    case TableFormat::kText: break;
  }
  return FormatText(rows);
}

std::string FormatDuration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "-";
  const int64_t total = static_cast<int64_t>(std::llround(seconds));
  const int64_t hours = total / 3600;
  const int64_t minutes = (total % 3600) / 60;
  const int64_t secs = total % 60;
  char buffer[48];
  if (hours > 0) {
    std::snprintf(buffer, sizeof(buffer), "%lldh%02lldm", static_cast<long long>(hours),
                  static_cast<long long>(minutes));
  } else if (minutes > 0) {
    std::snprintf(buffer, sizeof(buffer), "%lldm%02llds", static_cast<long long>(minutes),
                  static_cast<long long>(secs));
  } else {
    std::snprintf(buffer, sizeof(buffer), "%llds", static_cast<long long>(secs));
  }
  return buffer;
}

}  // namespace lorad::planner
