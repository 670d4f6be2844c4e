#include "core/networks/adapter.h"

#include <cmath>
#include <limits>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/networks/adapter_internal.h"

namespace lorad::networks {

namespace internal {

namespace {
// Runs `draw` on a tensor on the generator's device, then copies into `t`: a
// CUDA tensor cannot draw from the CPU generator, and drawing on the CPU gives
// the same initial weights for the same seed whatever device trains.
template <typename Draw>
void DrawOnGeneratorDevice(torch::Tensor& t, const at::Generator& gen, Draw draw) {
  torch::NoGradGuard no_grad;
  if (t.device() == gen.device()) {
    draw(t);
    return;
  }
  torch::Tensor drawn = torch::empty(t.sizes(), t.options().device(gen.device()));
  draw(drawn);
  t.copy_(drawn);
}
}  // namespace

void KaimingUniform(torch::Tensor& t, at::Generator gen) {
  int64_t fan_in = t.size(1);
  for (int64_t d = 2; d < t.dim(); ++d) fan_in *= t.size(d);
  // torch.nn.init: gain = sqrt(2 / (1 + a^2)), bound = sqrt(3) * gain / sqrt(fan_in).
  const double a = std::sqrt(5.0);
  const double gain = std::sqrt(2.0 / (1 + a * a));
  const double bound = std::sqrt(3.0) * (gain / std::sqrt(static_cast<double>(fan_in)));
  DrawOnGeneratorDevice(t, gen, [&](torch::Tensor& d) { d.uniform_(-bound, bound, gen); });
}

void Normal(torch::Tensor& t, double std, at::Generator gen) {
  DrawOnGeneratorDevice(t, gen, [&](torch::Tensor& d) { d.normal_(0.0, std, gen); });
}

torch::Tensor ToWeightShape(const torch::Tensor& t, const std::vector<int64_t>& shape) {
  return t.reshape(shape);
}

torch::Tensor RebuildTucker(const torch::Tensor& t, const torch::Tensor& a, const torch::Tensor& b) {
  return torch::einsum("ijkl,ip,jr->prkl", {t, a, b});
}

}  // namespace internal

Adapter::Adapter(const AdapterSpec& spec, const nn::LayerImpl& layer)
    : spec_(spec), kind_(layer.kind()), weight_shape_(layer.weight().sizes().vec()) {
  alpha_ = (spec.alpha == 0.0) ? static_cast<double>(spec.dim) : spec.alpha;
  scale_ = alpha_ / static_cast<double>(spec.dim);
  if (spec.dora) {
    torch::NoGradGuard no_grad;
    auto w = layer.weight().detach().to(torch::kFloat32);
    torch::Tensor norm;
    if (spec.wd_on_output) {
      std::vector<int64_t> shape(w.dim(), 1);
      shape[0] = w.size(0);
      norm = w.reshape({w.size(0), -1}).norm(2, {1}).reshape(shape);
    } else {
      std::vector<int64_t> shape(w.dim(), 1);
      shape[1] = w.size(1);
      norm = w.transpose(0, 1).reshape({w.size(1), -1}).norm(2, {1}).reshape(shape);
    }
    dora_scale_ = register_parameter("dora_scale", norm.to(layer.weight().scalar_type()));
  }
}

torch::Tensor Adapter::ApplyWeightDecompose(const torch::Tensor& weight, double multiplier) const {
  // LyCORIS: norm + finfo(dtype).eps, not detached; multiplier blends the per-channel factor.
  const auto w = weight.to(dora_scale_.scalar_type());
  const double eps = w.scalar_type() == torch::kFloat64 ? std::numeric_limits<double>::epsilon()
                     : w.scalar_type() == torch::kFloat16 ? 0.0009765625
                     : w.scalar_type() == torch::kBFloat16 ? 0.0078125
                                                           : std::numeric_limits<float>::epsilon();
  torch::Tensor norm;
  std::vector<int64_t> shape(w.dim(), 1);
  if (spec_.wd_on_output) {
    shape[0] = w.size(0);
    norm = w.reshape({w.size(0), -1}).norm(2, {1}).reshape(shape) + eps;
  } else {
    shape[1] = w.size(1);
    norm = w.transpose(0, 1).reshape({w.size(1), -1}).norm(2, {1}).reshape(shape) + eps;
  }
  auto scale = dora_scale_ / norm;
  if (multiplier != 1.0) scale = multiplier * (scale - 1) + 1;
  return w * scale;
}

torch::Tensor Adapter::MergedWeight(const nn::LayerImpl& layer, double multiplier) const {
  torch::NoGradGuard no_grad;
  auto w = layer.weight().detach().to(torch::kFloat32);
  auto delta = DeltaWeight().detach().to(torch::kFloat32);
  if (!has_dora()) return w + delta * multiplier;
  return ApplyWeightDecompose(w + delta, multiplier).to(torch::kFloat32);
}

torch::Tensor Adapter::Forward(const torch::Tensor& x, const nn::LayerImpl& layer) {
  const bool training = is_training();
  if (ModuleDropped(training)) return layer.BaseForward(x);
  if (!has_dora()) return ForwardDelta(x, layer, training);
  const auto& w = layer.weight();
  auto merged = w.detach().to(dora_scale_.scalar_type()) + TrainingDeltaWeight(training).to(dora_scale_.scalar_type());
  auto weight = ApplyWeightDecompose(merged, multiplier_).to(x.scalar_type());
  auto bias = layer.bias().defined() ? layer.bias().detach().to(x.scalar_type()) : torch::Tensor();
  return layer.ForwardWithWeight(x, weight, bias);
}

std::optional<at::Generator> Adapter::GeneratorFor(const torch::Device& device) const {
  if (rng_ && rng_->generator && rng_->generator->device() == device) return rng_->generator;
  return std::nullopt;
}

bool Adapter::ModuleDropped(bool training) {
  if (!training || spec_.module_dropout <= 0) return false;
  // kohya: torch.rand(1) < module_dropout, drawn on the CPU before the adapter path.
  torch::Tensor r;
  if (rng_ && rng_->generator) {
    r = torch::rand({1}, *rng_->generator, torch::TensorOptions().device(rng_->generator->device()));
  } else {
    r = torch::rand({1});
  }
  return r.item<float>() < spec_.module_dropout;
}

void Adapter::AppendCommonState(io::NamedTensors* out) const {
  out->emplace_back("alpha", torch::tensor(static_cast<float>(alpha_)));
  if (has_dora()) out->emplace_back("dora_scale", dora_scale_.detach());
}

absl::Status Adapter::LoadStateDict(const std::map<std::string, torch::Tensor>& tensors) {
  auto loadable = LoadableTensors();
  if (has_dora()) loadable.emplace_back("dora_scale", dora_scale_);
  std::set<std::string> expected;
  std::vector<std::string> missing, mismatched;
  for (const auto& [key, param] : loadable) {
    expected.insert(key);
    auto it = tensors.find(key);
    if (it == tensors.end()) {
      missing.push_back(key);
    } else if (it->second.sizes() != param.sizes()) {
      mismatched.push_back(absl::StrCat(key, " has shape [", absl::StrJoin(it->second.sizes(), ","),
                                        "], expected [", absl::StrJoin(param.sizes(), ","), "]"));
    }
  }
  std::vector<std::string> unexpected;
  for (const auto& [key, value] : tensors) {
    if (key != "alpha" && !expected.count(key)) unexpected.push_back(key);
  }
  if (!missing.empty() || !mismatched.empty() || !unexpected.empty()) {
    std::vector<std::string> parts;
    if (!missing.empty()) parts.push_back(absl::StrCat("missing ", absl::StrJoin(missing, ", ")));
    if (!unexpected.empty()) parts.push_back(absl::StrCat("unexpected ", absl::StrJoin(unexpected, ", ")));
    if (!mismatched.empty()) parts.push_back(absl::StrJoin(mismatched, "; "));
    return absl::InvalidArgumentError(absl::StrJoin(parts, "; "));
  }
  torch::NoGradGuard no_grad;
  for (auto& [key, param] : loadable) {
    auto src = tensors.at(key);
    param.copy_(src.to(param.device(), param.scalar_type()));
  }
  // Saved files hold the scalar folded in (LyCORIS resets it on load too).
  scalar_ = 1.0;
  if (auto it = tensors.find("alpha"); it != tensors.end()) {
    const double a = it->second.to(torch::kFloat64).item<double>();
    alpha_ = a == 0.0 ? static_cast<double>(spec_.dim) : a;
  } else {
    alpha_ = static_cast<double>(spec_.dim);  // old files without alpha: scale 1
  }
  RecomputeScale();
  return absl::OkStatus();
}

void Adapter::RecomputeScale() { scale_ = alpha_ / static_cast<double>(spec_.dim); }

absl::StatusOr<std::shared_ptr<Adapter>> CreateAdapter(const nn::LayerImpl& layer, const AdapterSpec& spec,
                                                       std::optional<at::Generator> init_generator) {
  if (spec.dim <= 0) return absl::InvalidArgumentError(absl::StrCat("adapter rank must be > 0, got ", spec.dim));
  if (layer.weight().device().type() == torch::kMeta && spec.dora) {
    return absl::InvalidArgumentError("DoRA needs the base weights: build the model on a real device");
  }
  at::Generator gen = init_generator ? *init_generator : at::detail::getDefaultCPUGenerator();
  try {
    switch (spec.algo) {
      case Algo::kLora: return internal::MakeLoraAdapter(layer, spec, gen);
      case Algo::kLoha: return internal::MakeLohaAdapter(layer, spec, gen);
      case Algo::kLokr: return internal::MakeLokrAdapter(layer, spec, gen);
    }
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("creating the adapter failed: ", e.what_without_backtrace()));
  }
  return absl::InvalidArgumentError("unknown adapter algorithm");
}

namespace internal {

torch::Tensor RebuiltDeltaAdapter::ForwardDelta(const torch::Tensor& x, const nn::LayerImpl& layer, bool training) {
  auto delta = (TrainingDeltaWeight(training) * multiplier_).to(x.scalar_type());
  auto base = layer.BaseForward(x);
  const auto& o = layer.options();
  if (o.kind == nn::LayerKind::kLinear) return base + torch::nn::functional::linear(x, delta);
  return base + torch::conv2d(x, delta, {}, {o.stride, o.stride}, {o.padding, o.padding});
}

torch::Tensor RebuiltDeltaAdapter::TrainingDeltaWeight(bool training) {
  auto delta = DeltaWeight();
  if (!training) return delta;
  if (spec_.dropout > 0) delta = torch::dropout(delta, spec_.dropout, true);
  if (spec_.rank_dropout > 0) {
    // LyCORIS: drop whole output rows of the rebuilt delta.
    torch::Tensor r = (rng_ && rng_->generator)
                          ? torch::rand({delta.size(0)}, *rng_->generator,
                                        torch::TensorOptions().device(rng_->generator->device()))
                          : torch::rand({delta.size(0)});
    std::vector<int64_t> shape(delta.dim(), 1);
    shape[0] = delta.size(0);
    delta = delta * (r > spec_.rank_dropout).to(delta.device(), delta.scalar_type()).reshape(shape);
  }
  return delta;
}

}  // namespace internal

}  // namespace lorad::networks
