#include "core/networks/lora_network.h"

#include <algorithm>
#include <cmath>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/base/status_macros.h"
#include "core/networks/metadata.h"

namespace lorad::networks {
namespace {

std::string FirstFew(const std::vector<std::string>& names, size_t n = 5) {
  std::vector<std::string> head(names.begin(), names.begin() + std::min(n, names.size()));
  std::string out = absl::StrJoin(head, ", ");
  if (names.size() > n) absl::StrAppend(&out, ", ... (", names.size(), " in all)");
  return out;
}

}  // namespace

absl::StatusOr<torch::ScalarType> ParseSavePrecision(const std::string& name) {
  if (name.empty() || name == "float" || name == "fp32" || name == "float32") return torch::kFloat32;
  if (name == "fp16" || name == "float16") return torch::kFloat16;
  if (name == "bf16" || name == "bfloat16") return torch::kBFloat16;
  return absl::InvalidArgumentError(
      absl::StrCat("save_precision '", name, "' is not supported; use one of float, fp16, bf16"));
}

absl::StatusOr<std::unique_ptr<LoraNetwork>> LoraNetwork::Create(const NetworkConfig& config,
                                                                 const std::vector<TargetLayer>& targets,
                                                                 std::optional<at::Generator> init_generator) {
  std::unique_ptr<LoraNetwork> net(new LoraNetwork());
  net->config_ = config;
  net->rng_ = std::make_shared<DropoutRng>();
  net->copies_ = std::make_shared<ComputeCopies>();
  for (const auto& t : targets) {
    if (!t.layer) return absl::InvalidArgumentError(absl::StrCat("target ", t.lora_name, " has no layer"));
    if (net->index_.count(t.lora_name)) {
      return absl::InvalidArgumentError(absl::StrCat("two target layers map to the LoRA name ", t.lora_name));
    }
    if (t.conv_kxk && !config.conv_dim) {
      return absl::InvalidArgumentError(
          absl::StrCat("target ", t.module_path, " is a kxk conv but conv_dim is not set"));
    }
    AdapterSpec spec;
    spec.algo = config.algo;
    spec.dim = t.conv_kxk ? *config.conv_dim : config.dim;
    spec.alpha = t.conv_kxk ? config.conv_alpha : config.alpha;
    spec.dora = config.dora;
    spec.wd_on_output = config.wd_on_output;
    spec.use_tucker = config.use_tucker;
    spec.factor = config.factor;
    spec.decompose_both = config.decompose_both;
    spec.unbalanced_factorization = config.unbalanced_factorization;
    spec.dropout = config.dropout;
    spec.rank_dropout = config.rank_dropout;
    spec.module_dropout = config.module_dropout;
    auto adapter = CreateAdapter(*t.layer, spec, init_generator);
    if (!adapter.ok()) {
      return absl::Status(adapter.status().code(), absl::StrCat(t.lora_name, ": ", adapter.status().message()));
    }
    (*adapter)->set_dropout_rng(net->rng_);
    (*adapter)->set_compute_copies(net->copies_);
    net->index_[t.lora_name] = net->modules_.size();
    net->modules_.push_back(
        {t.lora_name, t.module_path, t.layer, *adapter, t.lora_name.rfind("lora_te", 0) == 0});
  }
  return net;
}

LoraNetwork::~LoraNetwork() { Remove(); }

void LoraNetwork::Apply() {
  for (auto& m : modules_) m.layer->SetAdapter(m.adapter);
  applied_ = true;
}

void LoraNetwork::Remove() {
  for (auto& m : modules_) {
    if (m.layer->adapter() == m.adapter) m.layer->SetAdapter(nullptr);
  }
  applied_ = false;
}

const AdaptedModule* LoraNetwork::Find(const std::string& lora_name) const {
  auto it = index_.find(lora_name);
  return it == index_.end() ? nullptr : &modules_[it->second];
}

std::vector<torch::Tensor> LoraNetwork::UnetParameters() const {
  std::vector<torch::Tensor> out;
  for (const auto& m : modules_) {
    if (!m.is_text_encoder) for (auto& p : m.adapter->parameters()) out.push_back(p);
  }
  return out;
}

std::vector<torch::Tensor> LoraNetwork::TextEncoderParameters() const {
  std::vector<torch::Tensor> out;
  for (const auto& m : modules_) {
    if (m.is_text_encoder) for (auto& p : m.adapter->parameters()) out.push_back(p);
  }
  return out;
}

std::vector<torch::Tensor> LoraNetwork::UpParameters(bool text_encoder) const {
  std::vector<torch::Tensor> out;
  for (const auto& m : modules_) {
    if (m.is_text_encoder == text_encoder) for (auto& p : m.adapter->UpParameters()) out.push_back(p);
  }
  return out;
}

std::vector<torch::Tensor> LoraNetwork::NonUpParameters(bool text_encoder) const {
  std::vector<torch::Tensor> out;
  for (const auto& m : modules_) {
    if (m.is_text_encoder != text_encoder) continue;
    std::set<const void*> up;
    for (auto& p : m.adapter->UpParameters()) up.insert(p.unsafeGetTensorImpl());
    for (auto& p : m.adapter->parameters()) {
      if (!up.count(p.unsafeGetTensorImpl())) out.push_back(p);
    }
  }
  return out;
}

absl::StatusOr<MaxNormStats> LoraNetwork::ApplyMaxNorm(double max_norm) {
  if (!(max_norm > 0) || !std::isfinite(max_norm)) {
    return absl::InvalidArgumentError(
        absl::StrCat("scale_weight_norms must be a positive number, got ", max_norm));
  }
  MaxNormStats stats;
  if (modules_.empty()) return stats;
  torch::NoGradGuard no_grad;
  double norm_sum = 0;
  for (auto& m : modules_) {
    // The delta as the loaders apply it (scale once, LyCORIS' scalar), in float32.
    const double norm = m.adapter->DeltaWeight().to(torch::kFloat32).norm().item<double>();
    double ratio = 1.0;
    if (norm > max_norm) {
      ratio = max_norm / norm;
      m.adapter->ScaleDelta(ratio, config_.module);
      ++stats.keys_scaled;
    }
    const double scaled = norm * ratio;
    norm_sum += scaled;
    stats.max_key_norm = std::max(stats.max_key_norm, scaled);
  }
  // LyCORIS reports zeros when nothing was scaled; kohya the norms of every module.
  if (config_.module == NetworkModule::kLycoris && stats.keys_scaled == 0) {
    stats.max_key_norm = 0;
    return stats;
  }
  stats.average_key_norm = norm_sum / static_cast<double>(modules_.size());
  return stats;
}

int64_t LoraNetwork::NumParameters() const {
  int64_t n = 0;
  for (const auto& m : modules_) for (auto& p : m.adapter->parameters()) n += p.numel();
  return n;
}

void LoraNetwork::SetMultiplier(double multiplier) {
  for (auto& m : modules_) m.adapter->set_multiplier(multiplier);
}

void LoraNetwork::SetDropoutGenerator(std::optional<at::Generator> generator) { rng_->generator = generator; }

ComputeCopies::Scope LoraNetwork::MakeComputeCopies(torch::ScalarType compute_dtype) {
  std::vector<torch::Tensor> weights;
  for (const auto& m : modules_) {
    for (torch::Tensor& w : m.adapter->SingleUseWeights()) weights.push_back(std::move(w));
  }
  return copies_->Make(weights, compute_dtype);
}

void LoraNetwork::Train(bool on) {
  for (auto& m : modules_) m.adapter->train(on);
}

void LoraNetwork::To(const torch::Device& device, torch::ScalarType dtype) {
  for (auto& m : modules_) m.adapter->to(device, dtype);
}

io::NamedTensors LoraNetwork::StateDict(torch::ScalarType dtype) const {
  io::NamedTensors out;
  for (const auto& m : modules_) {
    for (auto& [key, value] : m.adapter->StateDict()) {
      out.emplace_back(absl::StrCat(m.lora_name, ".", key), value.detach().to(torch::kCPU).to(dtype).contiguous());
    }
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  return out;
}

std::map<std::string, std::vector<int64_t>> LoraNetwork::KeyShapes() const {
  std::map<std::string, std::vector<int64_t>> out;
  for (const auto& m : modules_) {
    for (auto& [key, value] : m.adapter->StateDict()) out[absl::StrCat(m.lora_name, ".", key)] = value.sizes().vec();
  }
  return out;
}

absl::Status LoraNetwork::Save(const std::filesystem::path& path, torch::ScalarType dtype,
                               io::Metadata metadata) const {
  io::NamedTensors tensors;
  try {
    tensors = StateDict(dtype);
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("collecting the LoRA tensors failed: ", e.what_without_backtrace()));
  }
  RETURN_IF_ERROR(AddSafetensorsHashes(tensors, metadata));
  return io::WriteSafetensors(path, tensors, metadata);
}

absl::Status LoraNetwork::LoadStateDict(const std::map<std::string, torch::Tensor>& tensors) {
  std::map<std::string, std::map<std::string, torch::Tensor>> by_module;
  std::vector<std::string> unexpected, missing, errors;
  for (const auto& [key, value] : tensors) {
    const size_t dot = key.find('.');
    const std::string name = key.substr(0, dot);
    if (dot == std::string::npos || !index_.count(name)) {
      unexpected.push_back(key);
      continue;
    }
    by_module[name][key.substr(dot + 1)] = value;
  }
  for (const auto& m : modules_) {
    if (!by_module.count(m.lora_name)) missing.push_back(m.lora_name);
  }
  if (!unexpected.empty() || !missing.empty()) {
    std::vector<std::string> parts;
    if (!missing.empty()) {
      parts.push_back(absl::StrCat(missing.size(), " module(s) of this network have no tensors in the file: ",
                                   FirstFew(missing)));
    }
    if (!unexpected.empty()) {
      parts.push_back(absl::StrCat(unexpected.size(), " key(s) in the file match no module of this network: ",
                                   FirstFew(unexpected)));
    }
    return absl::InvalidArgumentError(absl::StrCat(
        "LoRA weights do not fit this network (check network_module, network_args such as conv_dim/algo/"
        "use_dora, and the base model): ",
        absl::StrJoin(parts, "; ")));
  }
  for (auto& m : modules_) {
    absl::Status s;
    try {
      s = m.adapter->LoadStateDict(by_module[m.lora_name]);
    } catch (const c10::Error& e) {
      s = absl::InternalError(e.what_without_backtrace());
    }
    if (!s.ok()) errors.push_back(absl::StrCat(m.lora_name, ": ", s.message()));
  }
  if (!errors.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("LoRA weights do not fit this network: ", FirstFew(errors, 3)));
  }
  return absl::OkStatus();
}

absl::Status LoraNetwork::LoadWeights(const std::filesystem::path& path) {
  ASSIGN_OR_RETURN(auto file, io::SafetensorsFile::Open(path));
  std::map<std::string, torch::Tensor> tensors;
  for (const auto& name : file->Names()) {
    ASSIGN_OR_RETURN(tensors[name], file->Get(name));
  }
  auto s = LoadStateDict(tensors);
  if (!s.ok()) return absl::Status(s.code(), absl::StrCat(path.string(), ": ", s.message()));
  return absl::OkStatus();
}

torch::Tensor LoraNetwork::MergedWeight(const std::string& lora_name, double multiplier) const {
  const auto* m = Find(lora_name);
  TORCH_CHECK(m != nullptr, "no LoRA module named ", lora_name);
  return m->adapter->MergedWeight(*m->layer, multiplier);
}

}  // namespace lorad::networks
