// LoRA / LoCon: kohya networks/lora.py LoRAModule (bypass forward, its dropouts
// and init) and LyCORIS LoConModule's Tucker form for kxk convs.
#include "absl/strings/str_cat.h"
#include "core/networks/adapter_internal.h"

namespace lorad::networks::internal {
namespace {

class LoraAdapter : public Adapter {
 public:
  LoraAdapter(const nn::LayerImpl& layer, const AdapterSpec& spec, at::Generator gen) : Adapter(spec, layer) {
    const auto& o = layer.options();
    const auto opts = torch::TensorOptions().dtype(torch::kFloat32).device(layer.weight().device());
    const bool meta = layer.weight().device().type() == torch::kMeta;
    const int64_t r = spec.dim;
    conv_ = o.kind == nn::LayerKind::kConv2d;
    stride_ = o.stride;
    padding_ = o.padding;
    tucker_ = conv_ && spec.use_tucker && o.kernel > 1;
    std::vector<int64_t> down_shape = {r, o.in};
    std::vector<int64_t> up_shape = {o.out, r};
    if (conv_) {
      const int64_t k = tucker_ ? 1 : o.kernel;
      down_shape = {r, o.in, k, k};
      up_shape = {o.out, r, 1, 1};
    }
    auto down = torch::empty(down_shape, opts);
    auto up = torch::empty(up_shape, opts);
    torch::Tensor mid;
    if (tucker_) mid = torch::empty({r, r, o.kernel, o.kernel}, opts);
    if (!meta) {
      // kohya: Linear/Conv2d constructors draw down then up, then down is re-drawn and up zeroed.
      KaimingUniform(down, gen);
      KaimingUniform(up, gen);
      KaimingUniform(down, gen);
      if (tucker_) KaimingUniform(mid, gen);
      torch::NoGradGuard no_grad;
      up.zero_();
    }
    down_ = register_parameter("lora_down", down);
    if (tucker_) mid_ = register_parameter("lora_mid", mid);
    up_ = register_parameter("lora_up", up);
  }

  io::NamedTensors StateDict() const override {
    io::NamedTensors out;
    AppendCommonState(&out);
    out.emplace_back("lora_down.weight", down_.detach());
    // LyCORIS' custom_state_dict: the max-norm scalar folded into lora_up.
    out.emplace_back("lora_up.weight", scalar_ == 1.0 ? up_.detach() : up_.detach() * scalar_);
    if (tucker_) out.emplace_back("lora_mid.weight", mid_.detach());
    return out;
  }

  torch::Tensor DeltaWeight() const override {
    torch::Tensor w;
    if (tucker_) {
      w = RebuildTucker(mid_, up_.flatten(1).t(), down_.flatten(1));
    } else {
      w = up_.flatten(1).matmul(down_.flatten(1));
    }
    return ToWeightShape(w, weight_shape_) * (scale_ * scalar_);
  }

  std::vector<torch::Tensor> UpParameters() const override { return {up_}; }

  std::vector<torch::Tensor> SingleUseWeights() const override {
    if (has_dora()) return {};  // DoRA's forward reads them through DeltaWeight
    std::vector<torch::Tensor> out = {down_, up_};
    if (tucker_) out.push_back(mid_);
    return out;
  }

  void ScaleDelta(double ratio, NetworkModule module) override {
    if (module == NetworkModule::kLycoris) return Adapter::ScaleDelta(ratio, module);
    torch::NoGradGuard no_grad;
    const double root = std::sqrt(ratio);
    up_.mul_(root);
    down_.mul_(root);
  }

 protected:
  torch::Tensor Down(const torch::Tensor& x) const {
    if (!conv_) return torch::nn::functional::linear(x, ComputeWeight(down_, x));
    if (tucker_) {
      auto h = torch::conv2d(x, ComputeWeight(down_, x));
      return torch::conv2d(h, ComputeWeight(mid_, h), {}, {stride_, stride_}, {padding_, padding_});
    }
    return torch::conv2d(x, ComputeWeight(down_, x), {}, {stride_, stride_}, {padding_, padding_});
  }

  torch::Tensor ForwardDelta(const torch::Tensor& x, const nn::LayerImpl& layer, bool training) override {
    auto base = layer.BaseForward(x);
    auto lx = Down(x);
    if (training && spec_.dropout > 0) {
      if (auto gen = GeneratorFor(lx.device())) {
        // F.dropout on the CPU: bernoulli_(1 - p) mask, divided by (1 - p).
        auto mask = torch::empty_like(lx).bernoulli_(1 - spec_.dropout, *gen);
        lx = lx * mask.div_(1 - spec_.dropout);
      } else {
        lx = torch::dropout(lx, spec_.dropout, true);
      }
    }
    double scale = scale_ * scalar_;
    if (training && spec_.rank_dropout > 0) {
      torch::Tensor r;
      if (rng_ && rng_->generator) {
        r = torch::rand({lx.size(0), spec_.dim}, *rng_->generator,
                        torch::TensorOptions().device(rng_->generator->device()))
                .to(lx.device());
      } else {
        r = torch::rand({lx.size(0), spec_.dim}, torch::TensorOptions().device(lx.device()));
      }
      auto mask = r > spec_.rank_dropout;
      if (lx.dim() == 3) mask = mask.unsqueeze(1);
      if (lx.dim() == 4) mask = mask.unsqueeze(-1).unsqueeze(-1);
      lx = lx * mask;
      scale = scale_ * scalar_ * (1.0 / (1.0 - spec_.rank_dropout));
    }
    // kohya: base + up(lx) * multiplier * scale.
    const double out_scale = multiplier_ * scale;
    const torch::Tensor up = ComputeWeight(up_, lx);
    if (conv_) return base + torch::conv2d(lx, up) * out_scale;
    // One GEMM whose epilogue scales and adds the base output: no scale and add
    // kernels over the layer's whole output, forward or backward (the output
    // is rounded once, not after the product, the scale and the sum).
    return torch::addmm(base.reshape({-1, base.size(-1)}), lx.reshape({-1, lx.size(-1)}), up.t(), 1.0, out_scale)
        .view(base.sizes());
  }

  torch::Tensor TrainingDeltaWeight(bool training) override {
    auto delta = DeltaWeight();
    if (training && spec_.rank_dropout > 0) delta = delta * RowMask(delta);
    return delta;
  }

  torch::Tensor RowMask(const torch::Tensor& w) {
    torch::Tensor r = (rng_ && rng_->generator)
                          ? torch::rand({w.size(0)}, *rng_->generator,
                                        torch::TensorOptions().device(rng_->generator->device()))
                          : torch::rand({w.size(0)});
    std::vector<int64_t> shape(w.dim(), 1);
    shape[0] = w.size(0);
    return (r > spec_.rank_dropout).to(w.device(), w.scalar_type()).reshape(shape);
  }

  std::vector<std::pair<std::string, torch::Tensor>> LoadableTensors() const override {
    std::vector<std::pair<std::string, torch::Tensor>> out = {{"lora_down.weight", down_}, {"lora_up.weight", up_}};
    if (tucker_) out.emplace_back("lora_mid.weight", mid_);
    return out;
  }

 private:
  bool conv_ = false, tucker_ = false;
  int64_t stride_ = 1, padding_ = 0;
  torch::Tensor down_, up_, mid_;
};

}  // namespace

absl::StatusOr<std::shared_ptr<Adapter>> MakeLoraAdapter(const nn::LayerImpl& layer, const AdapterSpec& spec,
                                                         at::Generator gen) {
  return std::shared_ptr<Adapter>(std::make_shared<LoraAdapter>(layer, spec, gen));
}

}  // namespace lorad::networks::internal
