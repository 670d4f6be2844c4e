#include "core/models/checkpoint.h"

#include <fstream>
#include <set>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/base/json_scan.h"
#include "core/base/status_macros.h"
#include "core/io/safetensors.h"
#include "core/models/detect.h"
#include "core/models/name_mapping.h"
#include "core/nn/layer.h"

namespace lorad::models {
namespace {

namespace fs = std::filesystem;
using KeyShapes = std::vector<std::pair<std::string, std::vector<int64_t>>>;

constexpr char kTe1Sd15[] = "cond_stage_model.transformer.";
constexpr char kTe1Sdxl[] = "conditioner.embedders.0.transformer.";
constexpr char kTe2Sdxl[] = "conditioner.embedders.1.model.";

// Checkpoints are memory-mapped: CPU weights in the file's dtype alias the
// mapping (LoadModuleWeights), so loading copies and zero-fills nothing and the
// page cache holds the only copy; the others are converted from it. (A
// checkpoint must not be truncated while a run maps it; replacing the file by
// a rename, as downloads and lorad's own writers do, is safe.)
absl::StatusOr<std::unique_ptr<io::SafetensorsFile>> OpenCheckpointFile(const fs::path& path) {
  return io::SafetensorsFile::Open(path, io::SafetensorsFile::Access::kMapped);
}

bool HasPrefix(const std::vector<std::string>& sorted, const std::string& prefix) {
  auto it = std::lower_bound(sorted.begin(), sorted.end(), prefix);
  return it != sorted.end() && absl::StartsWith(*it, prefix);
}

// Keys real files carry that no component uses: EMA copies, schedule buffers, markers.
bool IsKnownExtra(const std::string& key) {
  static const char* kBuffers[] = {"betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                                   "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod",
                                   "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod", "posterior_variance",
                                   "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
                                   "logvar", "v_pred", "ztsnr"};
  if (absl::StartsWith(key, "model_ema.") || absl::StartsWith(key, "edm_vpred.")) return true;
  if (absl::EndsWith(key, "position_ids") || absl::EndsWith(key, "logit_scale")) return true;
  for (const char* b : kBuffers) {
    if (key == b) return true;
  }
  return false;
}

std::string ShapeString(const std::vector<int64_t>& s) { return absl::StrCat("[", absl::StrJoin(s, ","), "]"); }

const nlohmann::json* Sub(const nlohmann::json& j, const char* key) {
  return j.is_object() && j.contains(key) && j[key].is_object() ? &j[key] : nullptr;
}

absl::StatusOr<nlohmann::json> ReadJson(const fs::path& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path.string()));
  std::stringstream text;
  text << in.rdbuf();
  if (ScanJson(text.str()).depth > kMaxJsonDepth) {
    return absl::InvalidArgumentError(
        absl::StrCat(path.string(), " is nested more than ", kMaxJsonDepth, " levels deep; not a model config"));
  }
  auto j = nlohmann::json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InvalidArgumentError(absl::StrCat(path.string(), " is not valid JSON"));
  return j;
}

// One component's view for key comparison: names as presented and what is expected.
struct ComponentKeys {
  std::string display_prefix;  // names of this component start with it
  bool hf_text = false;        // Hugging Face CLIP layout: "text_model." may be absent
  KeyShapes expected;
};

KeyReport Compare(const std::map<std::string, std::vector<int64_t>>& present,
                  const std::vector<ComponentKeys>& components) {
  KeyReport report;
  std::set<std::string> expected_names;
  for (const auto& c : components) {
    for (const auto& [key, shape] : c.expected) expected_names.insert(key);
  }
  // Old SD1.5 files lack the "text_model." segment of the Hugging Face names.
  std::map<std::string, std::vector<int64_t>> normalized;
  std::map<std::string, std::string> original_name;
  for (const auto& [name, shape] : present) {
    std::string key = name;
    for (const auto& c : components) {
      if (!c.hf_text || !absl::StartsWith(name, c.display_prefix) || expected_names.count(name)) continue;
      const std::string with_segment = c.display_prefix + "text_model." + name.substr(c.display_prefix.size());
      if (expected_names.count(with_segment) || absl::EndsWith(name, "position_ids")) key = with_segment;
    }
    normalized[key] = shape;
    original_name[key] = name;
  }
  for (const auto& c : components) {
    for (const auto& [key, shape] : c.expected) {
      auto it = normalized.find(key);
      const std::string rest = key.substr(c.display_prefix.size());
      if (it == normalized.end()) {
        if (!text::IsOptionalClipKey(rest)) report.missing.push_back(key);
      } else if (it->second != shape && !(shape.empty() && it->second.size() <= 1)) {
        report.wrong_shape.push_back(absl::StrCat(original_name[key], ": ", ShapeString(it->second), " vs expected ",
                                                  ShapeString(shape)));
      }
    }
  }
  for (const auto& [key, shape] : normalized) {
    if (expected_names.count(key)) continue;
    (IsKnownExtra(key) ? report.ignored : report.unexpected).push_back(original_name[key]);
  }
  return report;
}

std::vector<ComponentKeys> ExpectedComponents(const CheckpointLayout& layout,
                                              const std::vector<std::string>& text_display_prefixes) {
  std::vector<ComponentKeys> components;
  {
    UNet unet(layout.unet, torch::TensorOptions().device(torch::kMeta));
    components.push_back({kUnetPrefix, false, ModuleKeys(*unet, kUnetPrefix)});
  }
  {
    Vae vae(layout.vae, torch::TensorOptions().device(torch::kMeta));
    components.push_back({kVaePrefix, false, ModuleKeys(*vae, kVaePrefix)});
  }
  for (size_t i = 0; i < layout.text_encoders.size(); ++i) {
    const auto& loc = layout.text_locations[i];
    components.push_back({text_display_prefixes[i], loc.layout != text::ClipKeyLayout::kOpenClip,
                          text::ClipCheckpointKeys(layout.text_encoders[i], text_display_prefixes[i], loc.layout)});
  }
  return components;
}

class SingleFileCheckpoint : public Checkpoint {
 public:
  explicit SingleFileCheckpoint(std::unique_ptr<io::SafetensorsFile> file) : file_(std::move(file)) {
    names_ = file_->Names();
  }

  absl::StatusOr<CheckpointLayout> DetectLayout() const override {
    CheckpointLayout layout;
    const std::string probe = std::string(kUnetPrefix) + "input_blocks.0.0.weight";
    if (!file_->Has(probe)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "unknown architecture in ", path().string(), ": tensor '", probe,
          "' not found (expected a Stable Diffusion 1.5 / SDXL single-file checkpoint or a diffusers folder)"));
    }
    const bool sdxl = file_->Has(std::string(kUnetPrefix) + "label_emb.0.0.weight");
    if (sdxl) {
      const std::string te2 = std::string(kTe2Sdxl) + "token_embedding.weight";
      if (!file_->Has(te2)) {
        return absl::InvalidArgumentError(absl::StrCat("unsupported architecture in ", path().string(),
                                                       ": U-Net has label_emb (SDXL) but tensor '", te2,
                                                       "' is missing (SDXL refiner or U-Net-only files are not supported)"));
      }
      layout.family = ModelFamily::kSdxl;
      layout.text_locations = {{kTe1Sdxl, text::ClipKeyLayout::kHuggingFace}, {kTe2Sdxl, text::ClipKeyLayout::kOpenClip}};
    } else {
      if (HasPrefix(names_, "cond_stage_model.model.")) {
        return absl::InvalidArgumentError(absl::StrCat(
            "unsupported architecture in ", path().string(),
            ": found 'cond_stage_model.model.*' (OpenCLIP ViT-H: Stable Diffusion 2.x); lorad trains SD 1.5 and SDXL"));
      }
      layout.family = ModelFamily::kSd15;
      layout.text_locations = {{kTe1Sd15, text::ClipKeyLayout::kHuggingFace}};
    }
    const nlohmann::json fc = FixtureConfig(file_->metadata());
    ASSIGN_OR_RETURN(layout.unet, DetectUNetConfig(*file_, kUnetPrefix, sdxl, Sub(fc, "original_unet_config")));
    std::optional<double> scaling;
    if (fc.is_object() && fc.contains("vae_scaling_factor") && fc["vae_scaling_factor"].is_number()) {
      scaling = fc["vae_scaling_factor"].get<double>();
    }
    ASSIGN_OR_RETURN(layout.vae, DetectVaeConfig(*file_, kVaePrefix, sdxl ? 0.13025 : 0.18215,
                                                 Sub(fc, "original_vae_config"), scaling));
    const char* te_config_keys[] = {"text_encoder_1_config", "text_encoder_2_config"};
    for (size_t i = 0; i < layout.text_locations.size(); ++i) {
      const auto& loc = layout.text_locations[i];
      ASSIGN_OR_RETURN(auto cfg, text::DetectClipTextConfig(*file_, loc.prefix, loc.layout, Sub(fc, te_config_keys[i])));
      layout.text_encoders.push_back(cfg);
    }
    return layout;
  }

  const io::TensorSource& unet_source() const override { return *file_; }
  const io::TensorSource& vae_source() const override { return *file_; }
  const io::TensorSource& text_source(size_t) const override { return *file_; }
  int64_t TensorCount() const override { return static_cast<int64_t>(names_.size()); }

  std::map<std::string, int64_t> DTypeCounts() const override {
    std::map<std::string, int64_t> counts;
    for (const auto& t : file_->tensors()) ++counts[std::string(io::DTypeToString(t.dtype))];
    return counts;
  }

  const std::map<std::string, std::string>& Metadata() const override { return file_->metadata(); }

  KeyReport CompareKeys(const CheckpointLayout& layout) const override {
    std::map<std::string, std::vector<int64_t>> present;
    for (const auto& t : file_->tensors()) present[t.name] = t.shape;
    std::vector<std::string> prefixes;
    for (const auto& loc : layout.text_locations) prefixes.push_back(loc.prefix);
    return Compare(present, ExpectedComponents(layout, prefixes));
  }

  uint64_t TotalBytes() const override { return file_->file_size(); }
  const fs::path& path() const override { return file_->path(); }

 private:
  std::unique_ptr<io::SafetensorsFile> file_;
  std::vector<std::string> names_;
};

// Finds a component's weights file inside a diffusers folder.
absl::StatusOr<fs::path> FindWeights(const fs::path& dir, const std::vector<std::string>& candidates) {
  for (const auto& name : candidates) {
    if (fs::exists(dir / name)) return dir / name;
  }
  return absl::NotFoundError(absl::StrCat("diffusers folder: none of ", absl::StrJoin(candidates, ", "), " in ",
                                          dir.string(), " (sharded or .bin weights are not supported)"));
}

// diffusers unet/config.json -> the "original config" fields detection needs.
nlohmann::json UNetOriginalFromDiffusers(const nlohmann::json& d) {
  nlohmann::json o = nlohmann::json::object();
  if (!d.is_object()) return o;
  if (d.contains("norm_num_groups") && d["norm_num_groups"].is_number_integer()) o["norm_num_groups"] = d["norm_num_groups"];
  if (d.contains("addition_time_embed_dim") && d["addition_time_embed_dim"].is_number_integer()) {
    o["addition_time_embed_dim"] = d["addition_time_embed_dim"];
  }
  // diffusers' attention_head_dim is a head COUNT (a historical misnomer): an int
  // for SD1.5 (fixed heads); a per-level list for SDXL (fixed head width).
  const nlohmann::json& heads =
      d.contains("num_attention_heads") && !d["num_attention_heads"].is_null() ? d["num_attention_heads"]
                                                                               : d.value("attention_head_dim", nlohmann::json());
  if (heads.is_number_integer()) {
    o["num_heads"] = heads;
  } else if (heads.is_array() && d.contains("block_out_channels") && d["block_out_channels"].is_array()) {
    size_t level = 0;
    const auto& types = d.value("down_block_types", nlohmann::json::array());
    for (size_t i = 0; i < types.size(); ++i) {
      if (types[i].is_string() && absl::StrContains(types[i].get<std::string>(), "CrossAttn")) {
        level = i;
        break;
      }
    }
    if (level < heads.size() && level < d["block_out_channels"].size() && heads[level].get<int64_t>() > 0) {
      o["num_head_channels"] = d["block_out_channels"][level].get<int64_t>() / heads[level].get<int64_t>();
    }
  }
  return o;
}

class DiffusersCheckpoint : public Checkpoint {
 public:
  static absl::StatusOr<std::unique_ptr<Checkpoint>> Open(const fs::path& dir) {
    std::unique_ptr<DiffusersCheckpoint> c(new DiffusersCheckpoint());
    c->path_ = dir;
    const std::vector<std::string> model_files = {"diffusion_pytorch_model.safetensors",
                                                  "diffusion_pytorch_model.fp16.safetensors"};
    const std::vector<std::string> text_files = {"model.safetensors", "model.fp16.safetensors"};
    ASSIGN_OR_RETURN(auto unet_path, FindWeights(dir / "unet", model_files));
    ASSIGN_OR_RETURN(auto vae_path, FindWeights(dir / "vae", model_files));
    ASSIGN_OR_RETURN(auto unet_file, OpenCheckpointFile(unet_path));
    ASSIGN_OR_RETURN(auto vae_file, OpenCheckpointFile(vae_path));
    c->unet_file_ = std::move(unet_file);
    c->vae_file_ = std::move(vae_file);
    for (const char* sub : {"text_encoder", "text_encoder_2"}) {
      if (!fs::exists(dir / sub)) continue;
      ASSIGN_OR_RETURN(auto te_path, FindWeights(dir / sub, text_files));
      ASSIGN_OR_RETURN(auto te_file, OpenCheckpointFile(te_path));
      c->text_files_.push_back(std::move(te_file));
      c->text_dirs_.push_back(sub);
    }
    if (c->text_files_.empty()) {
      return absl::NotFoundError(absl::StrCat("diffusers folder ", dir.string(), " has no text_encoder/"));
    }
    for (const char* sub : {"unet", "vae"}) {
      auto j = ReadJson(dir / sub / "config.json");
      c->configs_[sub] = j.ok() ? *j : nlohmann::json(nullptr);
    }
    for (const auto& sub : c->text_dirs_) {
      auto j = ReadJson(dir / sub / "config.json");
      c->configs_[sub] = j.ok() ? *j : nlohmann::json(nullptr);
    }
    c->BuildViews();
    return std::unique_ptr<Checkpoint>(std::move(c));
  }

  absl::StatusOr<CheckpointLayout> DetectLayout() const override {
    CheckpointLayout layout;
    layout.diffusers = true;
    const bool sdxl = unet_view_->Has(std::string(kUnetPrefix) + "label_emb.0.0.weight");
    layout.family = sdxl ? ModelFamily::kSdxl : ModelFamily::kSd15;
    if (sdxl != (text_files_.size() == 2)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "diffusers folder ", path_.string(), ": ", sdxl ? "SDXL U-Net (add_embedding) needs text_encoder_2/"
                                                          : "SD1.5 U-Net but a second text encoder is present"));
    }
    const nlohmann::json unet_original = UNetOriginalFromDiffusers(configs_.at("unet"));
    ASSIGN_OR_RETURN(layout.unet, DetectUNetConfig(*unet_view_, kUnetPrefix, sdxl, &unet_original));
    nlohmann::json vae_original = nlohmann::json::object();
    std::optional<double> scaling;
    const auto& vc = configs_.at("vae");
    if (vc.is_object()) {
      if (vc.contains("norm_num_groups")) vae_original["norm_num_groups"] = vc["norm_num_groups"];
      if (vc.contains("scaling_factor") && vc["scaling_factor"].is_number()) scaling = vc["scaling_factor"].get<double>();
    }
    ASSIGN_OR_RETURN(layout.vae, DetectVaeConfig(*vae_view_, kVaePrefix, sdxl ? 0.13025 : 0.18215, &vae_original, scaling));
    for (size_t i = 0; i < text_files_.size(); ++i) {
      const auto layout_kind = i == 0 ? text::ClipKeyLayout::kHuggingFace : text::ClipKeyLayout::kHuggingFaceWithProjection;
      layout.text_locations.push_back({"", layout_kind});
      const auto& cfg_json = configs_.at(text_dirs_[i]);
      ASSIGN_OR_RETURN(auto cfg, text::DetectClipTextConfig(*text_files_[i], "", layout_kind,
                                                            cfg_json.is_object() ? &cfg_json : nullptr));
      layout.text_encoders.push_back(cfg);
    }
    return layout;
  }

  const io::TensorSource& unet_source() const override { return *unet_view_; }
  const io::TensorSource& vae_source() const override { return *vae_view_; }
  const io::TensorSource& text_source(size_t i) const override { return *text_files_.at(i); }

  int64_t TensorCount() const override {
    int64_t n = static_cast<int64_t>(unet_file_->tensors().size() + vae_file_->tensors().size());
    for (const auto& t : text_files_) n += static_cast<int64_t>(t->tensors().size());
    return n;
  }

  std::map<std::string, int64_t> DTypeCounts() const override {
    std::map<std::string, int64_t> counts;
    for (const io::SafetensorsFile* f : AllFiles()) {
      for (const auto& t : f->tensors()) ++counts[std::string(io::DTypeToString(t.dtype))];
    }
    return counts;
  }

  const std::map<std::string, std::string>& Metadata() const override { return unet_file_->metadata(); }

  KeyReport CompareKeys(const CheckpointLayout& layout) const override {
    std::map<std::string, std::vector<int64_t>> present;
    for (const auto& name : unet_view_->Names()) present[name] = *unet_view_->Shape(name);
    for (const auto& name : vae_view_->Names()) present[name] = *vae_view_->Shape(name);
    for (const auto& name : unmapped_) present[name] = {};
    std::vector<std::string> prefixes;
    for (size_t i = 0; i < text_files_.size(); ++i) {
      prefixes.push_back(text_dirs_[i] + "/");
      for (const auto& t : text_files_[i]->tensors()) present[text_dirs_[i] + "/" + t.name] = t.shape;
    }
    return Compare(present, ExpectedComponents(layout, prefixes));
  }

  uint64_t TotalBytes() const override {
    uint64_t n = 0;
    for (const io::SafetensorsFile* f : AllFiles()) n += f->file_size();
    return n;
  }
  const fs::path& path() const override { return path_; }

 private:
  DiffusersCheckpoint() = default;

  std::vector<const io::SafetensorsFile*> AllFiles() const {
    std::vector<const io::SafetensorsFile*> files = {unet_file_.get(), vae_file_.get()};
    for (const auto& t : text_files_) files.push_back(t.get());
    return files;
  }

  void BuildViews() {
    // U-Net: structure hints from the diffusers names themselves.
    const auto unet_names = unet_file_->Names();
    UNetNameShape shape;
    shape.layers_per_block = 0;
    while (unet_file_->Has(absl::StrCat("down_blocks.0.resnets.", shape.layers_per_block, ".norm1.weight"))) {
      ++shape.layers_per_block;
    }
    for (int64_t b = 0; unet_file_->Has(absl::StrCat("up_blocks.", b, ".resnets.0.norm1.weight")); ++b) {
      shape.up_block_has_attention.push_back(HasPrefix(unet_names, absl::StrCat("up_blocks.", b, ".attentions.")));
    }
    std::map<std::string, RenamedTensorSource::Entry> unet_entries;
    for (const auto& name : unet_names) {
      auto ldm = DiffusersToLdmUNetName(name, shape);
      if (!ldm) {
        unmapped_.push_back("unet/" + name);
        continue;
      }
      unet_entries[kUnetPrefix + *ldm] = {name, *unet_file_->Shape(name)};
    }
    unet_view_ = std::make_unique<RenamedTensorSource>(
        std::shared_ptr<const io::TensorSource>(unet_file_.get(), [](const io::TensorSource*) {}), std::move(unet_entries));

    int64_t levels = 0;
    while (vae_file_->Has(absl::StrCat("encoder.down_blocks.", levels, ".resnets.0.norm1.weight"))) ++levels;
    std::map<std::string, RenamedTensorSource::Entry> vae_entries;
    for (const auto& name : vae_file_->Names()) {
      auto ldm = DiffusersToLdmVaeName(name, levels);
      if (!ldm) {
        unmapped_.push_back("vae/" + name);
        continue;
      }
      auto s = *vae_file_->Shape(name);
      if (IsLdmVaeAttentionWeight(*ldm) && s.size() == 2) s = {s[0], s[1], 1, 1};
      vae_entries[kVaePrefix + *ldm] = {name, s};
    }
    vae_view_ = std::make_unique<RenamedTensorSource>(
        std::shared_ptr<const io::TensorSource>(vae_file_.get(), [](const io::TensorSource*) {}), std::move(vae_entries));
  }

  fs::path path_;
  std::unique_ptr<io::SafetensorsFile> unet_file_, vae_file_;
  std::vector<std::unique_ptr<io::SafetensorsFile>> text_files_;
  std::vector<std::string> text_dirs_;
  std::map<std::string, nlohmann::json> configs_;
  std::unique_ptr<RenamedTensorSource> unet_view_, vae_view_;
  std::vector<std::string> unmapped_;
};

}  // namespace

const char* ModelFamilyName(ModelFamily family) { return family == ModelFamily::kSdxl ? "sdxl" : "sd15"; }

CheckpointLayout DefaultLayout(ModelFamily family) {
  CheckpointLayout layout;
  layout.family = family;
  if (family == ModelFamily::kSdxl) {
    layout.unet = UNetConfig::SdxlBase();
    layout.vae = VaeConfig::Sdxl();
    layout.text_encoders = {text::ClipTextConfig::ClipL(), text::ClipTextConfig::OpenClipBigG()};
    layout.text_locations = {{kTe1Sdxl, text::ClipKeyLayout::kHuggingFace}, {kTe2Sdxl, text::ClipKeyLayout::kOpenClip}};
  } else {
    layout.unet = UNetConfig::Sd15();
    layout.vae = VaeConfig::Sd15();
    layout.text_encoders = {text::ClipTextConfig::ClipL()};
    layout.text_locations = {{kTe1Sd15, text::ClipKeyLayout::kHuggingFace}};
  }
  return layout;
}

absl::StatusOr<std::unique_ptr<Checkpoint>> Checkpoint::Open(const fs::path& path) {
  std::error_code ec;
  if (fs::is_directory(path, ec)) return DiffusersCheckpoint::Open(path);
  ASSIGN_OR_RETURN(auto file, OpenCheckpointFile(path));
  return std::unique_ptr<Checkpoint>(new SingleFileCheckpoint(std::move(file)));
}

KeyShapes ExpectedCheckpointKeys(const CheckpointLayout& layout) {
  std::vector<std::string> prefixes;
  for (const auto& loc : layout.text_locations) prefixes.push_back(loc.prefix);
  KeyShapes keys;
  for (auto& c : ExpectedComponents(layout, prefixes)) {
    keys.insert(keys.end(), c.expected.begin(), c.expected.end());
  }
  std::sort(keys.begin(), keys.end());
  return keys;
}

absl::StatusOr<StableDiffusion> LoadStableDiffusion(const fs::path& path, const LoadOptions& options) {
  ASSIGN_OR_RETURN(auto ckpt, Checkpoint::Open(path));
  ASSIGN_OR_RETURN(auto layout, ckpt->DetectLayout());
  StableDiffusion sd;
  sd.family = layout.family;
  sd.layout = layout;
  const auto opts = torch::TensorOptions().dtype(options.dtype).device(options.device);
  try {
    nn::NoInitGuard no_init;  // every parameter is overwritten from the file
    if (options.load_unet) {
      sd.unet = UNet(layout.unet, opts);
      RETURN_IF_ERROR(LoadModuleWeights(*sd.unet, ckpt->unet_source(), kUnetPrefix));
    }
    if (options.load_vae) {
      sd.vae = Vae(layout.vae, opts);
      RETURN_IF_ERROR(LoadModuleWeights(*sd.vae, ckpt->vae_source(), kVaePrefix));
    }
    if (options.load_text_encoders) {
      for (size_t i = 0; i < layout.text_encoders.size(); ++i) {
        text::ClipTextEncoder encoder(layout.text_encoders[i], opts);
        const auto& loc = layout.text_locations[i];
        RETURN_IF_ERROR(text::LoadClipTextWeights(*encoder, ckpt->text_source(i), loc.prefix, loc.layout));
        sd.text_encoders.push_back(encoder);
      }
    }
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("loading ", path.string(), ": ", e.what_without_backtrace()));
  }
  sd.keys = ckpt->CompareKeys(layout);
  return sd;
}

}  // namespace lorad::models
