#include "core/models/vae.h"

#include "absl/strings/str_cat.h"
#include "core/common/torch_compat.h"

namespace lorad::models {
namespace {

namespace F = torch::nn::functional;

nn::Layer Conv(int64_t in, int64_t out, int64_t k, int64_t stride, int64_t pad, torch::TensorOptions o) {
  return nn::Layer(nn::Conv2dOptions(in, out, k, stride, pad, true, o));
}

}  // namespace

VaeConfig VaeConfig::Sd15() { return VaeConfig{}; }

VaeConfig VaeConfig::Sdxl() {
  VaeConfig c;
  c.scaling_factor = 0.13025;
  return c;
}

absl::Status VaeConfig::Validate() const {
  auto bad = [](const std::string& what) { return absl::InvalidArgumentError(absl::StrCat("VaeConfig: ", what)); };
  if (ch <= 0 || ch_mult.empty() || num_res_blocks <= 0 || z_channels <= 0 || embed_dim <= 0) {
    return bad("ch, ch_mult, num_res_blocks, z_channels and embed_dim must be positive");
  }
  if (norm_groups <= 0) return bad("norm_groups must be positive");
  for (int64_t m : ch_mult) {
    if ((ch * m) % norm_groups != 0) return bad(absl::StrCat("width ", ch * m, " not divisible by norm_groups ", norm_groups));
  }
  return absl::OkStatus();
}

nlohmann::json VaeConfig::ToJson() const {
  return {{"in_channels", in_channels}, {"out_channels", out_channels}, {"ch", ch},
          {"ch_mult", ch_mult},         {"num_res_blocks", num_res_blocks}, {"z_channels", z_channels},
          {"embed_dim", embed_dim},     {"norm_groups", norm_groups},   {"scaling_factor", scaling_factor}};
}

torch::Tensor VaePosterior::Sample(std::optional<torch::Generator> generator) const {
  // Drawn on the generator's device (a CPU generator for a CUDA posterior too).
  auto noise = generator
                   ? torch::randn(mean.sizes(), *generator, mean.options().device(generator->device())).to(mean.device())
                   : torch::randn_like(mean);
  return mean + torch::exp(0.5 * logvar) * noise;
}

// norm1, conv1, norm2, conv2, nin_shortcut (1x1, only when in != out).
class VaeResnetBlockImpl : public torch::nn::Module {
 public:
  VaeResnetBlockImpl(int64_t in, int64_t out, const VaeConfig& c, torch::TensorOptions o) {
    norm1_ = register_module("norm1", GroupNorm(c.norm_groups, in, c.norm_eps, o));
    conv1_ = register_module("conv1", Conv(in, out, 3, 1, 1, o));
    norm2_ = register_module("norm2", GroupNorm(c.norm_groups, out, c.norm_eps, o));
    conv2_ = register_module("conv2", Conv(out, out, 3, 1, 1, o));
    if (in != out) shortcut_ = register_module("nin_shortcut", Conv(in, out, 1, 1, 0, o));
  }
  torch::Tensor forward(const torch::Tensor& x) {
    auto h = conv1_->forward(torch::silu(norm1_->forward(x)));
    h = conv2_->forward(torch::silu(norm2_->forward(h)));
    return (shortcut_ ? shortcut_->forward(x) : x) + h;
  }

 private:
  GroupNorm norm1_{nullptr}, norm2_{nullptr};
  nn::Layer conv1_{nullptr}, conv2_{nullptr}, shortcut_{nullptr};
};

// Single-head self-attention over pixels; q, k, v, proj_out stored as 1x1 convs.
class VaeAttentionImpl : public torch::nn::Module {
 public:
  VaeAttentionImpl(int64_t c, const VaeConfig& cfg, torch::TensorOptions o) {
    norm_ = register_module("norm", GroupNorm(cfg.norm_groups, c, cfg.norm_eps, o));
    q_ = register_module("q", Conv(c, c, 1, 1, 0, o));
    k_ = register_module("k", Conv(c, c, 1, 1, 0, o));
    v_ = register_module("v", Conv(c, c, 1, 1, 0, o));
    proj_out_ = register_module("proj_out", Conv(c, c, 1, 1, 0, o));
  }
  torch::Tensor forward(const torch::Tensor& x) {
    const int64_t b = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
    auto n = norm_->forward(x);
    auto tokens = [&](const torch::Tensor& t) { return t.reshape({b, 1, c, h * w}).transpose(-1, -2); };
    auto out = compat::ScaledDotProductAttention(tokens(q_->forward(n)), tokens(k_->forward(n)), tokens(v_->forward(n)));
    out = out.transpose(-1, -2).reshape({b, c, h, w});
    return x + proj_out_->forward(out);
  }

 private:
  GroupNorm norm_{nullptr};
  nn::Layer q_{nullptr}, k_{nullptr}, v_{nullptr}, proj_out_{nullptr};
};
TORCH_MODULE(VaeResnetBlock);
TORCH_MODULE(VaeAttention);

namespace {

struct MidBlock {
  VaeResnetBlock block_1{nullptr};
  VaeAttention attn_1{nullptr};
  VaeResnetBlock block_2{nullptr};

  MidBlock(torch::nn::Module& parent, int64_t c, const VaeConfig& cfg, torch::TensorOptions o) {
    auto mid = parent.register_module("mid", std::make_shared<torch::nn::Module>());
    block_1 = mid->register_module("block_1", VaeResnetBlock(c, c, cfg, o));
    attn_1 = mid->register_module("attn_1", VaeAttention(c, cfg, o));
    block_2 = mid->register_module("block_2", VaeResnetBlock(c, c, cfg, o));
  }
  torch::Tensor forward(const torch::Tensor& x) { return block_2->forward(attn_1->forward(block_1->forward(x))); }
};

struct Level {
  std::vector<VaeResnetBlock> blocks;
  nn::Layer resample{nullptr};  // downsample.conv / upsample.conv
};

}  // namespace

class VaeEncoderImpl : public torch::nn::Module {
 public:
  VaeEncoderImpl(const VaeConfig& c, torch::TensorOptions o) {
    conv_in_ = register_module("conv_in", Conv(c.in_channels, c.ch, 3, 1, 1, o));
    auto down = register_module("down", torch::nn::ModuleList());
    int64_t block_in = c.ch;
    const int64_t levels = static_cast<int64_t>(c.ch_mult.size());
    for (int64_t i = 0; i < levels; ++i) {
      const int64_t block_out = c.ch * c.ch_mult[i];
      auto level_module = std::make_shared<torch::nn::Module>();
      auto block_list = level_module->register_module("block", torch::nn::ModuleList());
      Level level;
      for (int64_t j = 0; j < c.num_res_blocks; ++j) {
        level.blocks.push_back(VaeResnetBlock(block_in, block_out, c, o));
        block_list->push_back(level.blocks.back());
        block_in = block_out;
      }
      if (i != levels - 1) {
        auto ds = level_module->register_module("downsample", std::make_shared<torch::nn::Module>());
        level.resample = ds->register_module("conv", Conv(block_in, block_in, 3, 2, 0, o));
      }
      down->push_back(level_module);
      levels_.push_back(std::move(level));
    }
    mid_ = std::make_unique<MidBlock>(*this, block_in, c, o);
    norm_out_ = register_module("norm_out", GroupNorm(c.norm_groups, block_in, c.norm_eps, o));
    conv_out_ = register_module("conv_out", Conv(block_in, 2 * c.z_channels, 3, 1, 1, o));
  }

  torch::Tensor forward(const torch::Tensor& x) {
    auto h = conv_in_->forward(x);
    for (auto& level : levels_) {
      for (auto& block : level.blocks) h = block->forward(h);
      // Asymmetric padding: zero-pad right and bottom by one, then stride-2 conv without padding.
      if (level.resample) h = level.resample->forward(F::pad(h, F::PadFuncOptions({0, 1, 0, 1})));
    }
    h = mid_->forward(h);
    return conv_out_->forward(torch::silu(norm_out_->forward(h)));
  }

 private:
  nn::Layer conv_in_{nullptr}, conv_out_{nullptr};
  std::vector<Level> levels_;
  std::unique_ptr<MidBlock> mid_;
  GroupNorm norm_out_{nullptr};
};

class VaeDecoderImpl : public torch::nn::Module {
 public:
  VaeDecoderImpl(const VaeConfig& c, torch::TensorOptions o) {
    const int64_t levels = static_cast<int64_t>(c.ch_mult.size());
    int64_t block_in = c.ch * c.ch_mult.back();
    conv_in_ = register_module("conv_in", Conv(c.z_channels, block_in, 3, 1, 1, o));
    mid_ = std::make_unique<MidBlock>(*this, block_in, c, o);
    // up.{i} is registered in index order, but built (and run) from the top level down.
    std::vector<std::shared_ptr<torch::nn::Module>> modules(levels);
    levels_.resize(levels);
    for (int64_t i = levels - 1; i >= 0; --i) {
      const int64_t block_out = c.ch * c.ch_mult[i];
      modules[i] = std::make_shared<torch::nn::Module>();
      auto block_list = modules[i]->register_module("block", torch::nn::ModuleList());
      for (int64_t j = 0; j <= c.num_res_blocks; ++j) {
        levels_[i].blocks.push_back(VaeResnetBlock(block_in, block_out, c, o));
        block_list->push_back(levels_[i].blocks.back());
        block_in = block_out;
      }
      if (i != 0) {
        auto us = modules[i]->register_module("upsample", std::make_shared<torch::nn::Module>());
        levels_[i].resample = us->register_module("conv", Conv(block_in, block_in, 3, 1, 1, o));
      }
    }
    auto up = register_module("up", torch::nn::ModuleList());
    for (auto& m : modules) up->push_back(m);
    norm_out_ = register_module("norm_out", GroupNorm(c.norm_groups, block_in, c.norm_eps, o));
    conv_out_ = register_module("conv_out", Conv(block_in, c.out_channels, 3, 1, 1, o));
  }

  torch::Tensor forward(const torch::Tensor& z) {
    auto h = mid_->forward(conv_in_->forward(z));
    for (auto it = levels_.rbegin(); it != levels_.rend(); ++it) {
      for (auto& block : it->blocks) h = block->forward(h);
      if (it->resample) {
        h = it->resample->forward(F::interpolate(
            h, F::InterpolateFuncOptions().scale_factor(std::vector<double>{2.0, 2.0}).mode(torch::kNearest)));
      }
    }
    return conv_out_->forward(torch::silu(norm_out_->forward(h)));
  }

 private:
  nn::Layer conv_in_{nullptr}, conv_out_{nullptr};
  std::vector<Level> levels_;
  std::unique_ptr<MidBlock> mid_;
  GroupNorm norm_out_{nullptr};
};

VaeImpl::VaeImpl(const VaeConfig& config, torch::TensorOptions options) : config_(config) {
  encoder_ = register_module("encoder", std::make_shared<VaeEncoderImpl>(config_, options));
  decoder_ = register_module("decoder", std::make_shared<VaeDecoderImpl>(config_, options));
  quant_conv_ = register_module("quant_conv", Conv(2 * config_.z_channels, 2 * config_.embed_dim, 1, 1, 0, options));
  post_quant_conv_ = register_module("post_quant_conv", Conv(config_.embed_dim, config_.z_channels, 1, 1, 0, options));
}

torch::Tensor VaeImpl::EncoderOut(const torch::Tensor& x) { return encoder_->forward(x); }

VaePosterior VaeImpl::Encode(const torch::Tensor& x) {
  auto moments = quant_conv_->forward(encoder_->forward(x));
  auto parts = moments.chunk(2, 1);
  return VaePosterior{parts[0], parts[1].clamp(-30.0, 20.0)};
}

torch::Tensor VaeImpl::Decode(const torch::Tensor& z) {
  return decoder_->forward(post_quant_conv_->forward(z));
}

}  // namespace lorad::models
