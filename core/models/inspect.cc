#include "core/models/inspect.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/base/status_macros.h"
#include "core/io/safetensors.h"
#include "core/models/base_model.h"
#include "core/models/checkpoint.h"

namespace lorad::models {
namespace {

bool IsLoraKey(const std::string& k) {
  return absl::StartsWith(k, "lora_unet_") || absl::StartsWith(k, "lora_te") || absl::StrContains(k, ".lora_down.") ||
         absl::StrContains(k, ".lora_up.") || absl::StrContains(k, ".hada_w1_a") || absl::StrContains(k, ".lokr_w1");
}

nlohmann::json InspectLora(const io::SafetensorsFile& file) {
  nlohmann::json r = {{"kind", "lora"}, {"path", file.path().string()}, {"file_bytes", file.file_size()}};
  std::map<std::string, int64_t> dtypes, dims;
  std::set<std::string> modules;
  int64_t unet = 0, te = 0;
  for (const auto& t : file.tensors()) {
    ++dtypes[std::string(io::DTypeToString(t.dtype))];
    const std::string module = t.name.substr(0, t.name.find('.'));
    modules.insert(module);
    if (absl::EndsWith(t.name, ".lora_down.weight") && !t.shape.empty()) ++dims[absl::StrCat(t.shape[0])];
  }
  for (const auto& m : modules) (absl::StartsWith(m, "lora_unet_") ? unet : te) += 1;
  r["tensor_count"] = file.tensors().size();
  r["module_count"] = modules.size();
  r["unet_modules"] = unet;
  r["text_encoder_modules"] = te;
  r["dtypes"] = dtypes;
  r["rank_histogram"] = dims;
  nlohmann::json ss = nlohmann::json::object();
  for (const auto& [k, v] : file.metadata()) {
    if (absl::StartsWith(k, "ss_") || absl::StartsWith(k, "modelspec.")) ss[k] = v;
  }
  r["metadata"] = ss;
  return r;
}

}  // namespace

absl::StatusOr<nlohmann::json> InspectModelFile(const std::filesystem::path& path) {
  if (!std::filesystem::is_directory(path)) {
    ASSIGN_OR_RETURN(auto file, io::SafetensorsFile::Open(path));
    const auto names = file->Names();
    if (!names.empty() && std::all_of(names.begin(), names.end(), [](const std::string& n) {
          return IsLoraKey(n) || absl::EndsWith(n, ".alpha") || absl::EndsWith(n, ".dora_scale");
        }) && std::any_of(names.begin(), names.end(), IsLoraKey)) {
      return InspectLora(*file);
    }
  }
  ASSIGN_OR_RETURN(auto ckpt, Checkpoint::Open(path));
  ASSIGN_OR_RETURN(auto layout, ckpt->DetectLayout());
  nlohmann::json r = {{"kind", "checkpoint"},
                      {"path", path.string()},
                      {"format", layout.diffusers ? "diffusers" : "single-file"},
                      {"family", ModelFamilyName(layout.family)},
                      {"file_bytes", ckpt->TotalBytes()},
                      {"tensor_count", ckpt->TensorCount()},
                      {"dtypes", ckpt->DTypeCounts()}};
  nlohmann::json configs = {{"unet", layout.unet.ToJson()}, {"vae", layout.vae.ToJson()}};
  nlohmann::json te = nlohmann::json::array();
  for (const auto& c : layout.text_encoders) te.push_back(c.ToJson());
  configs["text_encoders"] = te;
  r["config"] = configs;
  // Parameter counts from the expected structure (meta device, nothing allocated).
  std::map<std::string, int64_t> params;
  std::vector<std::pair<std::string, std::string>> groups = {{kUnetPrefix, "unet"}, {kVaePrefix, "vae"}};
  for (size_t i = 0; i < layout.text_locations.size(); ++i) {
    groups.emplace_back(layout.text_locations[i].prefix, absl::StrCat("text_encoder_", i + 1));
  }
  for (const auto& [key, shape] : ExpectedCheckpointKeys(layout)) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    for (const auto& [prefix, group] : groups) {
      if (absl::StartsWith(key, prefix)) {
        params[group] += n;
        break;
      }
    }
  }
  r["parameters"] = params;
  ASSIGN_OR_RETURN(const BaseModelFacts facts, ReadBaseModelFacts(path));
  r["prediction"] = {{"type", PredictionName(facts.prediction)},
                     {"evidence", facts.prediction_evidence},
                     {"zero_terminal_snr", facts.zero_terminal_snr},
                     {"zero_terminal_snr_evidence", facts.zero_terminal_snr_evidence}};
  r["lineage"] = {{"name", facts.lineage}, {"evidence", facts.lineage_evidence}};
  const KeyReport keys = ckpt->CompareKeys(layout);
  r["keys"] = {{"missing", keys.missing},
               {"unexpected", keys.unexpected},
               {"ignored", keys.ignored},
               {"wrong_shape", keys.wrong_shape}};
  return r;
}

std::string FormatInspection(const nlohmann::json& r) {
  std::string s;
  auto line = [&s](const std::string& k, const std::string& v) { absl::StrAppend(&s, absl::StrFormat("%-18s %s\n", k, v)); };
  auto list = [](const nlohmann::json& j) {
    std::vector<std::string> parts;
    for (const auto& [k, v] : j.items()) parts.push_back(absl::StrCat(k, "=", v.dump()));
    return absl::StrJoin(parts, ", ");
  };
  line("file", r.value("path", ""));
  line("size", absl::StrFormat("%.2f MB", r.value("file_bytes", 0.0) / 1e6));
  if (r.value("kind", "") == "lora") {
    line("kind", "LoRA");
    line("tensors", r["tensor_count"].dump());
    line("modules", absl::StrCat(r["module_count"].dump(), " (U-Net ", r["unet_modules"].dump(), ", text ",
                                 r["text_encoder_modules"].dump(), ")"));
    line("dtypes", list(r["dtypes"]));
    line("ranks", list(r["rank_histogram"]));
    for (const auto& [k, v] : r["metadata"].items()) {
      std::string value = v.get<std::string>();
      if (value.size() > 200) value = value.substr(0, 200) + "...";
      line(k, value);
    }
    return s;
  }
  line("kind", absl::StrCat("Stable Diffusion checkpoint (", r.value("format", ""), ")"));
  line("family", r.value("family", ""));
  if (r.contains("lineage") && !r["lineage"]["name"].get<std::string>().empty()) {
    line("lineage", absl::StrCat(r["lineage"]["name"].get<std::string>(), " (",
                                 r["lineage"]["evidence"].get<std::string>(), ")"));
  }
  if (r.contains("prediction")) {
    const auto& p = r["prediction"];
    std::string prediction = p["type"].get<std::string>();
    if (!p["evidence"].get<std::string>().empty()) absl::StrAppend(&prediction, " (", p["evidence"].get<std::string>(), ")");
    if (p["zero_terminal_snr"].get<bool>()) {
      absl::StrAppend(&prediction, ", zero terminal SNR (", p["zero_terminal_snr_evidence"].get<std::string>(), ")");
    }
    line("prediction", prediction);
  }
  line("tensors", r["tensor_count"].dump());
  line("dtypes", list(r["dtypes"]));
  int64_t total = 0;
  for (const auto& [k, v] : r["parameters"].items()) {
    line(absl::StrCat("params ", k), absl::StrFormat("%.2f M", v.get<int64_t>() / 1e6));
    total += v.get<int64_t>();
  }
  line("params total", absl::StrFormat("%.2f M", total / 1e6));
  line("unet", r["config"]["unet"].dump());
  line("vae", r["config"]["vae"].dump());
  for (const auto& te : r["config"]["text_encoders"]) line("text encoder", te.dump());
  for (const char* k : {"missing", "unexpected", "wrong_shape", "ignored"}) {
    const auto& keys = r["keys"][k];
    std::string shown;
    for (size_t i = 0; i < keys.size() && i < 10; ++i) absl::StrAppend(&shown, i ? ", " : "", keys[i].get<std::string>());
    if (keys.size() > 10) absl::StrAppend(&shown, ", ... (", keys.size() - 10, " more)");
    line(absl::StrCat(k, " keys"), absl::StrCat(keys.size(), keys.empty() ? "" : ": ", shown));
  }
  return s;
}

}  // namespace lorad::models
