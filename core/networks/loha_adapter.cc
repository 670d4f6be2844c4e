// LoHa (LyCORIS LohaModule): dW = (w1a @ w1b) * (w2a @ w2b) * scale, or the
// Tucker form on kxk convs; applied by rebuilding the weight delta.
#include "core/networks/adapter_internal.h"

namespace lorad::networks::internal {
namespace {

class LohaAdapter : public RebuiltDeltaAdapter {
 public:
  LohaAdapter(const nn::LayerImpl& layer, const AdapterSpec& spec, at::Generator gen) : RebuiltDeltaAdapter(spec, layer) {
    const auto& o = layer.options();
    const auto opts = torch::TensorOptions().dtype(torch::kFloat32).device(layer.weight().device());
    const bool meta = layer.weight().device().type() == torch::kMeta;
    const int64_t r = spec.dim;
    const bool conv = o.kind == nn::LayerKind::kConv2d;
    tucker_ = conv && spec.use_tucker && o.kernel > 1;
    const int64_t k = conv ? o.kernel : 1;
    if (tucker_) {
      t1_ = torch::empty({r, r, k, k}, opts);
      w1a_ = torch::empty({r, o.out}, opts);
      w1b_ = torch::empty({r, o.in}, opts);
      t2_ = torch::empty({r, r, k, k}, opts);
      w2a_ = torch::empty({r, o.out}, opts);
      w2b_ = torch::empty({r, o.in}, opts);
    } else {
      w1a_ = torch::empty({o.out, r}, opts);
      w1b_ = torch::empty({r, o.in * k * k}, opts);
      w2a_ = torch::empty({o.out, r}, opts);
      w2b_ = torch::empty({r, o.in * k * k}, opts);
    }
    if (!meta) {
      // LyCORIS init: t ~ N(0, 0.1); w1b, w2b ~ N(0, 1); w1a ~ N(0, 0.1); w2a = 0 (starts as identity).
      if (tucker_) {
        Normal(t1_, 0.1, gen);
        Normal(t2_, 0.1, gen);
      }
      Normal(w1b_, 1.0, gen);
      Normal(w1a_, 0.1, gen);
      Normal(w2b_, 1.0, gen);
      torch::NoGradGuard no_grad;
      w2a_.zero_();
    }
    if (tucker_) t1_ = register_parameter("hada_t1", t1_);
    w1a_ = register_parameter("hada_w1_a", w1a_);
    w1b_ = register_parameter("hada_w1_b", w1b_);
    if (tucker_) t2_ = register_parameter("hada_t2", t2_);
    w2a_ = register_parameter("hada_w2_a", w2a_);
    w2b_ = register_parameter("hada_w2_b", w2b_);
  }

  io::NamedTensors StateDict() const override {
    io::NamedTensors out;
    AppendCommonState(&out);
    for (auto& [k, v] : LoadableTensors()) {
      // LyCORIS' custom_state_dict: the max-norm scalar folded into hada_w1_a.
      out.emplace_back(k, k == "hada_w1_a" && scalar_ != 1.0 ? v.detach() * scalar_ : v.detach());
    }
    return out;
  }

  torch::Tensor DeltaWeight() const override {
    torch::Tensor w;
    if (tucker_) {
      w = RebuildTucker(t1_, w1a_, w1b_) * RebuildTucker(t2_, w2a_, w2b_);
    } else {
      w = w1a_.matmul(w1b_) * w2a_.matmul(w2b_);
    }
    return ToWeightShape(w, weight_shape_) * (scale_ * scalar_);
  }

  std::vector<torch::Tensor> UpParameters() const override { return {w1a_, w2a_}; }

 protected:
  std::vector<std::pair<std::string, torch::Tensor>> LoadableTensors() const override {
    std::vector<std::pair<std::string, torch::Tensor>> out = {
        {"hada_w1_a", w1a_}, {"hada_w1_b", w1b_}, {"hada_w2_a", w2a_}, {"hada_w2_b", w2b_}};
    if (tucker_) {
      out.emplace_back("hada_t1", t1_);
      out.emplace_back("hada_t2", t2_);
    }
    return out;
  }

 private:
  bool tucker_ = false;
  torch::Tensor w1a_, w1b_, w2a_, w2b_, t1_, t2_;
};

}  // namespace

absl::StatusOr<std::shared_ptr<Adapter>> MakeLohaAdapter(const nn::LayerImpl& layer, const AdapterSpec& spec,
                                                         at::Generator gen) {
  return std::shared_ptr<Adapter>(std::make_shared<LohaAdapter>(layer, spec, gen));
}

}  // namespace lorad::networks::internal
