#include "core/models/base_model.h"

#include <algorithm>
#include <array>
#include <fstream>
#include <set>

#include <nlohmann/json.hpp>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/base/status_macros.h"

namespace lorad::models {
namespace {

struct Lineage {
  const char* name;
  std::vector<const char*> needles;  // lower-case substrings of a metadata value
};

// Checked in order: a NoobAI merge often names Illustrious (its base) too.
const std::vector<Lineage>& Lineages() {
  static const auto* lineages = new std::vector<Lineage>{
      {"NoobAI-XL", {"noobai", "noob-ai", "noob ai", "laxhar"}},
      {"Illustrious-XL", {"illustrious"}},
      {"Pony Diffusion", {"pony diffusion", "ponydiffusion", "pony_diffusion", "ponyxl", "pony xl", "pony_xl",
                          "pony-xl", "ponyv6", "pony v6", "pony_v6"}},
      {"Animagine XL", {"animagine"}},
  };
  return *lineages;
}

// Metadata keys that name a model (ordered: the most specific first).
constexpr std::array<const char*, 6> kNamingKeys = {"modelspec.title",    "modelspec.description",
                                                    "modelspec.author",   "ss_sd_model_name",
                                                    "ss_output_name",     "ss_training_comment"};

std::string Shown(const std::string& value) {
  return value.size() <= 80 ? value : absl::StrCat(value.substr(0, 80), "...");
}

absl::StatusOr<io::Metadata> ReadHeader(const std::filesystem::path& path, std::vector<std::string>* names) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open checkpoint ", path.string()));
  std::error_code ec;
  const uint64_t size = std::filesystem::file_size(path, ec);
  if (ec) return absl::NotFoundError(absl::StrCat("cannot read the size of ", path.string(), ": ", ec.message()));
  uint8_t prefix[8] = {};
  in.read(reinterpret_cast<char*>(prefix), static_cast<std::streamsize>(std::min<uint64_t>(8, size)));
  ASSIGN_OR_RETURN(const uint64_t length, io::ReadSafetensorsHeaderLength(prefix, size, path.string()));
  std::string text(length, '\0');
  if (!in.read(text.data(), static_cast<std::streamsize>(length))) {
    return absl::DataLossError(absl::StrCat(path.string(), ": the safetensors header is cut short"));
  }
  std::vector<io::TensorInfo> tensors;
  io::Metadata metadata;
  RETURN_IF_ERROR(io::ParseSafetensorsHeaderText(text, size, path.string(), &tensors, &metadata));
  for (const auto& t : tensors) names->push_back(t.name);
  return metadata;
}

absl::StatusOr<BaseModelFacts> ReadDiffusersFolder(const std::filesystem::path& folder) {
  BaseModelFacts facts;
  const std::filesystem::path scheduler = folder / "scheduler" / "scheduler_config.json";
  std::ifstream in(scheduler);
  if (!in) return facts;  // no scheduler config: diffusers' defaults (epsilon)
  nlohmann::json config = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (config.is_discarded() || !config.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(scheduler.string(), " is not valid JSON"));
  }
  if (config.value("prediction_type", std::string()) == "v_prediction") {
    facts.prediction = Prediction::kV;
    facts.prediction_evidence = "scheduler_config.json prediction_type = v_prediction";
  }
  if (config.value("rescale_betas_zero_snr", false)) {
    facts.zero_terminal_snr = true;
    facts.zero_terminal_snr_evidence = "scheduler_config.json rescale_betas_zero_snr = true";
  }
  std::ifstream index(folder / "model_index.json");
  if (index) {
    nlohmann::json model_index = nlohmann::json::parse(index, nullptr, false);
    if (model_index.is_object() && model_index.contains("_name_or_path") && model_index["_name_or_path"].is_string()) {
      const std::string name = model_index["_name_or_path"];
      io::Metadata metadata = {{"modelspec.title", name}};
      BaseModelFacts named = DescribeBaseModel({}, metadata);
      facts.lineage = named.lineage;
      if (!named.lineage.empty()) facts.lineage_evidence = absl::StrCat("model_index.json _name_or_path = \"", Shown(name), "\"");
    }
  }
  return facts;
}

}  // namespace

std::string PredictionName(Prediction prediction) {
  switch (prediction) {
    case Prediction::kV:
      return "v";
    case Prediction::kEdm:
      return "edm";
    default:
      return "epsilon";
  }
}

BaseModelFacts DescribeBaseModel(const std::vector<std::string>& tensor_names, const io::Metadata& metadata) {
  BaseModelFacts facts;
  const std::set<std::string> names(tensor_names.begin(), tensor_names.end());
  const bool edm_vpred = std::any_of(names.begin(), names.end(),
                                     [](const std::string& n) { return absl::StartsWith(n, "edm_vpred."); });
  if (names.count("edm_mean") || edm_vpred) {
    facts.prediction = Prediction::kEdm;
    facts.prediction_evidence = names.count("edm_mean") ? "tensor 'edm_mean'" : "tensors 'edm_vpred.*'";
  } else if (names.count("v_pred")) {
    facts.prediction = Prediction::kV;
    facts.prediction_evidence = "tensor 'v_pred'";
  } else if (auto it = metadata.find("modelspec.prediction_type"); it != metadata.end()) {
    const std::string type = absl::AsciiStrToLower(it->second);
    if (type == "v" || type == "v_prediction" || type == "v-prediction") facts.prediction = Prediction::kV;
    if (type == "v" || type == "v_prediction" || type == "v-prediction" || type == "epsilon") {
      facts.prediction_evidence = absl::StrCat("metadata modelspec.prediction_type = \"", it->second, "\"");
    }
  }
  if (names.count("ztsnr")) {
    facts.zero_terminal_snr = true;
    facts.zero_terminal_snr_evidence = "tensor 'ztsnr'";
  } else if (auto it = metadata.find("ss_zero_terminal_snr"); it != metadata.end() && it->second == "True") {
    facts.zero_terminal_snr = true;
    facts.zero_terminal_snr_evidence = "metadata ss_zero_terminal_snr = True";
  }
  for (const Lineage& lineage : Lineages()) {
    for (const char* key : kNamingKeys) {
      auto it = metadata.find(key);
      if (it == metadata.end()) continue;
      const std::string lower = absl::AsciiStrToLower(it->second);
      for (const char* needle : lineage.needles) {
        if (absl::StrContains(lower, needle)) {
          facts.lineage = lineage.name;
          facts.lineage_evidence = absl::StrCat("metadata ", key, " = \"", Shown(it->second), "\"");
          return facts;
        }
      }
    }
  }
  return facts;
}

absl::StatusOr<BaseModelFacts> ReadBaseModelFacts(const std::filesystem::path& checkpoint) {
  if (std::filesystem::is_directory(checkpoint)) return ReadDiffusersFolder(checkpoint);
  std::vector<std::string> names;
  ASSIGN_OR_RETURN(io::Metadata metadata, ReadHeader(checkpoint, &names));
  return DescribeBaseModel(names, metadata);
}

absl::Status ApplyBaseModelFacts(const BaseModelFacts& facts, train::TrainConfig& config,
                                 std::vector<std::string>* warnings) {
  const std::string model = facts.lineage.empty() ? "this checkpoint" : absl::StrCat("this ", facts.lineage, " checkpoint");
  if (facts.prediction == Prediction::kEdm) {
    return absl::FailedPreconditionError(absl::StrCat(
        model, " is an EDM model (", facts.prediction_evidence,
        ": Playground v2.5 / CosXL style); lorad trains DDPM (epsilon or v-prediction) SD 1.5 and SDXL models. "
        "Use another base model"));
  }
  const bool v_set = config.explicitly_set.count("v_parameterization") > 0;
  if (facts.prediction == Prediction::kV) {
    if (v_set && !config.v_parameterization) {
      return absl::InvalidArgumentError(absl::StrCat(
          "config key 'v_parameterization' = false, but ", model, " is v-prediction (", facts.prediction_evidence,
          "): an epsilon-trained LoRA on it produces noise. Remove v_parameterization or set it to true"));
    }
    if (!config.v_parameterization) {
      config.v_parameterization = true;
      warnings->push_back(absl::StrCat(model, " is v-prediction (", facts.prediction_evidence,
                                       "): training with v_parameterization = true"));
    }
    // NoobAI-XL v-pred was trained with zero terminal SNR; so are checkpoints with a ztsnr marker.
    const bool ztsnr = facts.zero_terminal_snr || facts.lineage == "NoobAI-XL";
    if (ztsnr && !config.zero_terminal_snr) {
      const std::string why = facts.zero_terminal_snr ? facts.zero_terminal_snr_evidence : "NoobAI-XL v-pred";
      if (config.explicitly_set.count("zero_terminal_snr")) {
        warnings->push_back(absl::StrCat(model, " was trained with zero terminal SNR (", why,
                                         ") but zero_terminal_snr = false: kept as set; the LoRA may darken or "
                                         "wash out images"));
      } else {
        config.zero_terminal_snr = true;
        warnings->push_back(absl::StrCat(model, " was trained with zero terminal SNR (", why,
                                         "): training with zero_terminal_snr = true"));
      }
    }
  } else if (config.v_parameterization && !facts.prediction_evidence.empty()) {
    warnings->push_back(absl::StrCat("v_parameterization = true, but ", model, " says epsilon (",
                                     facts.prediction_evidence, ")"));
  } else if (config.v_parameterization && facts.prediction == Prediction::kEpsilon && !config.v2) {
    warnings->push_back(absl::StrCat("v_parameterization = true, but ", model,
                                     " carries no v-prediction marker (no 'v_pred' tensor, no "
                                     "modelspec.prediction_type): check that it is a v-prediction model"));
  }
  return absl::OkStatus();
}

}  // namespace lorad::models
