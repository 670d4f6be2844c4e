// LoKr (LyCORIS LokrModule): dW = kron(w1, w2) * scale with each factor full or
// low-rank (w2 optionally Tucker on kxk convs); applied by rebuilding the delta.
#include "absl/strings/str_cat.h"
#include "core/networks/adapter_internal.h"

namespace lorad::networks {

std::pair<int64_t, int64_t> Factorization(int64_t dimension, int64_t factor) {
  if (factor > 0 && dimension % factor == 0) {
    int64_t m = factor, n = dimension / factor;
    if (m > n) std::swap(m, n);
    return {m, n};
  }
  if (factor < 0) factor = dimension;
  int64_t m = 1, n = dimension;
  const int64_t length = m + n;
  while (m < n) {
    int64_t new_m = m + 1;
    while (dimension % new_m != 0) ++new_m;
    const int64_t new_n = dimension / new_m;
    if (new_m + new_n > length || new_m > factor) break;
    m = new_m;
    n = new_n;
  }
  if (m > n) std::swap(m, n);
  return {m, n};
}

namespace internal {
namespace {

class LokrAdapter : public RebuiltDeltaAdapter {
 public:
  LokrAdapter(const nn::LayerImpl& layer, const AdapterSpec& spec, at::Generator gen) : RebuiltDeltaAdapter(spec, layer) {
    const auto& o = layer.options();
    const auto opts = torch::TensorOptions().dtype(torch::kFloat32).device(layer.weight().device());
    const bool meta = layer.weight().device().type() == torch::kMeta;
    const int64_t r = spec.dim;
    conv_ = o.kind == nn::LayerKind::kConv2d;
    kernel_ = conv_ ? o.kernel : 1;
    auto [in_m, in_n] = Factorization(o.in, spec.factor);
    auto [out_l, out_k] = Factorization(o.out, spec.factor);
    if (spec.unbalanced_factorization) std::swap(out_l, out_k);
    tucker_ = conv_ && spec.use_tucker && kernel_ > 1;
    c_ = out_k;
    d_ = in_n;

    if (spec.decompose_both && static_cast<double>(r) < std::max(out_l, in_m) / 2.0) {
      w1a_ = torch::empty({out_l, r}, opts);
      w1b_ = torch::empty({r, in_m}, opts);
    } else {
      use_w1_ = true;
      w1_ = torch::empty({out_l, in_m}, opts);
    }
    if (static_cast<double>(r) >= std::max(out_k, in_n) / 2.0) {
      use_w2_ = true;
      w2_ = conv_ ? torch::empty({out_k, in_n, kernel_, kernel_}, opts) : torch::empty({out_k, in_n}, opts);
    } else if (tucker_) {
      t2_ = torch::empty({r, r, kernel_, kernel_}, opts);
      w2a_ = torch::empty({r, out_k}, opts);
      w2b_ = torch::empty({r, in_n}, opts);
    } else {
      w2a_ = torch::empty({out_k, r}, opts);
      w2b_ = torch::empty({r, in_n * kernel_ * kernel_}, opts);
    }
    RecomputeScale();
    if (!meta) {
      // LyCORIS init: w2 (or w2_b) zero so the adapter starts as the identity.
      torch::NoGradGuard no_grad;
      if (use_w2_) {
        w2_.zero_();
      } else {
        if (tucker_) KaimingUniform(t2_, gen);
        KaimingUniform(w2a_, gen);
        w2b_.zero_();
      }
      if (use_w1_) {
        KaimingUniform(w1_, gen);
      } else {
        KaimingUniform(w1a_, gen);
        KaimingUniform(w1b_, gen);
      }
    }
    for (auto& [name, t] : Named()) register_parameter(name, *t);
  }

  io::NamedTensors StateDict() const override {
    io::NamedTensors out;
    AppendCommonState(&out);
    for (auto& [k, v] : LoadableTensors()) out.emplace_back(k, v.detach());
    return out;
  }

  torch::Tensor DeltaWeight() const override {
    auto w1 = use_w1_ ? w1_ : w1a_.matmul(w1b_);
    torch::Tensor w2;
    if (use_w2_) {
      w2 = w2_;
    } else if (tucker_) {
      w2 = RebuildTucker(t2_, w2a_, w2b_);
    } else {
      w2 = w2a_.matmul(w2b_);
      if (conv_) w2 = w2.reshape({c_, d_, kernel_, kernel_});
    }
    if (conv_) w1 = w1.unsqueeze(-1).unsqueeze(-1);
    // kron views its operands: make the einsum / matmul results contiguous.
    return ToWeightShape(torch::kron(w1.contiguous(), w2.contiguous()), weight_shape_) * scale_;
  }

  // LyCORIS LokrModule.apply_max_norm: ratio spread evenly over the factors.
  void ScaleDelta(double ratio, NetworkModule /*module*/) override {
    torch::NoGradGuard no_grad;
    auto named = Named();
    const double each = std::pow(ratio, 1.0 / static_cast<double>(named.size()));
    for (auto& [name, t] : named) t->mul_(each);
  }

  std::vector<torch::Tensor> UpParameters() const override {
    std::vector<torch::Tensor> up;
    if (use_w1_) up.push_back(w1_); else up.push_back(w1a_);
    if (use_w2_) up.push_back(w2_); else up.push_back(w2a_);
    return up;
  }

 protected:
  void RecomputeScale() override {
    // LyCORIS forces alpha = dim (scale 1) when neither factor is low-rank.
    if (use_w1_ && use_w2_) alpha_ = static_cast<double>(spec_.dim);
    Adapter::RecomputeScale();
  }

  std::vector<std::pair<std::string, torch::Tensor>> LoadableTensors() const override {
    std::vector<std::pair<std::string, torch::Tensor>> out;
    for (auto& [name, t] : const_cast<LokrAdapter*>(this)->Named()) out.emplace_back(name, *t);
    return out;
  }

 private:
  std::vector<std::pair<std::string, torch::Tensor*>> Named() {
    std::vector<std::pair<std::string, torch::Tensor*>> out;
    if (use_w1_) {
      out.emplace_back("lokr_w1", &w1_);
    } else {
      out.emplace_back("lokr_w1_a", &w1a_);
      out.emplace_back("lokr_w1_b", &w1b_);
    }
    if (use_w2_) {
      out.emplace_back("lokr_w2", &w2_);
    } else {
      out.emplace_back("lokr_w2_a", &w2a_);
      out.emplace_back("lokr_w2_b", &w2b_);
      if (tucker_) out.emplace_back("lokr_t2", &t2_);
    }
    return out;
  }

  bool conv_ = false, tucker_ = false, use_w1_ = false, use_w2_ = false;
  int64_t kernel_ = 1, c_ = 1, d_ = 1;
  torch::Tensor w1_, w1a_, w1b_, w2_, w2a_, w2b_, t2_;
};

}  // namespace

absl::StatusOr<std::shared_ptr<Adapter>> MakeLokrAdapter(const nn::LayerImpl& layer, const AdapterSpec& spec,
                                                         at::Generator gen) {
  return std::shared_ptr<Adapter>(std::make_shared<LokrAdapter>(layer, spec, gen));
}

}  // namespace internal
}  // namespace lorad::networks
