#include "core/models/blocks.h"

#include "core/common/torch_compat.h"
#include "core/models/grad_checkpoint.h"

namespace lorad::models {
namespace {

namespace F = torch::nn::functional;

// A parameterless container that only gives its children their checkpoint path
// segment (e.g. "in_layers" holding "0" and "2").
std::shared_ptr<torch::nn::Module> Container(torch::nn::Module& parent, const std::string& name) {
  return parent.register_module(name, std::make_shared<torch::nn::Module>());
}

}  // namespace

ResBlockImpl::ResBlockImpl(int64_t in_channels, int64_t out_channels, int64_t emb_channels, int64_t groups,
                           double eps, torch::TensorOptions options)
    : in_channels_(in_channels), out_channels_(out_channels) {
  auto in_layers = Container(*this, "in_layers");
  in_norm_ = in_layers->register_module("0", GroupNorm(groups, in_channels, eps, options));
  in_conv_ = in_layers->register_module("2", nn::Layer(nn::Conv2dOptions(in_channels, out_channels, 3, 1, 1, true, options)));
  auto emb_layers = Container(*this, "emb_layers");
  emb_linear_ = emb_layers->register_module("1", nn::Layer(nn::LinearOptions(emb_channels, out_channels, true, options)));
  auto out_layers = Container(*this, "out_layers");
  out_norm_ = out_layers->register_module("0", GroupNorm(groups, out_channels, eps, options));
  out_conv_ = out_layers->register_module("3", nn::Layer(nn::Conv2dOptions(out_channels, out_channels, 3, 1, 1, true, options)));
  if (in_channels != out_channels) {
    skip_ = register_module("skip_connection", nn::Layer(nn::Conv2dOptions(in_channels, out_channels, 1, 1, 0, true, options)));
  }
}

torch::Tensor ResBlockImpl::forward(const torch::Tensor& x, const torch::Tensor& emb) {
  auto h = in_conv_->forward(torch::silu(in_norm_->forward(x)));
  auto e = emb_linear_->forward(torch::silu(emb)).to(h.scalar_type());
  h = h + e.unsqueeze(-1).unsqueeze(-1);
  h = out_conv_->forward(torch::silu(out_norm_->forward(h)));
  return (skip_ ? skip_->forward(x) : x) + h;
}

CrossAttentionImpl::CrossAttentionImpl(int64_t query_dim, int64_t context_dim, int64_t heads, int64_t head_dim,
                                       torch::TensorOptions options)
    : heads_(heads) {
  const int64_t inner = heads * head_dim;
  to_q_ = register_module("to_q", nn::Layer(nn::LinearOptions(query_dim, inner, false, options)));
  to_k_ = register_module("to_k", nn::Layer(nn::LinearOptions(context_dim, inner, false, options)));
  to_v_ = register_module("to_v", nn::Layer(nn::LinearOptions(context_dim, inner, false, options)));
  auto to_out = Container(*this, "to_out");
  to_out_0_ = to_out->register_module("0", nn::Layer(nn::LinearOptions(inner, query_dim, true, options)));
}

torch::Tensor CrossAttentionImpl::forward(const torch::Tensor& x, const torch::Tensor& context) {
  const auto& ctx = context.defined() ? context : x;
  auto split = [this](const torch::Tensor& t) {
    return t.view({t.size(0), t.size(1), heads_, t.size(2) / heads_}).transpose(1, 2);
  };
  auto q = split(to_q_->forward(x));
  auto k = split(to_k_->forward(ctx));
  auto v = split(to_v_->forward(ctx));
  auto out = compat::ScaledDotProductAttention(q, k, v);
  out = out.transpose(1, 2).reshape({x.size(0), x.size(1), -1});
  return to_out_0_->forward(out);
}

FeedForwardImpl::FeedForwardImpl(int64_t dim, int64_t mult, torch::TensorOptions options) {
  const int64_t inner = dim * mult;
  auto net = Container(*this, "net");
  auto geglu = Container(*net, "0");
  proj_ = geglu->register_module("proj", nn::Layer(nn::LinearOptions(dim, inner * 2, true, options)));
  out_ = net->register_module("2", nn::Layer(nn::LinearOptions(inner, dim, true, options)));
}

torch::Tensor FeedForwardImpl::forward(const torch::Tensor& x) {
  auto parts = proj_->forward(x).chunk(2, -1);
  return out_->forward(parts[0] * torch::gelu(parts[1]));
}

BasicTransformerBlockImpl::BasicTransformerBlockImpl(int64_t dim, int64_t context_dim, int64_t heads,
                                                     int64_t head_dim, double ln_eps, torch::TensorOptions options) {
  attn1_ = register_module("attn1", CrossAttention(dim, dim, heads, head_dim, options));
  ff_ = register_module("ff", FeedForward(dim, 4, options));
  attn2_ = register_module("attn2", CrossAttention(dim, context_dim, heads, head_dim, options));
  norm1_ = register_module("norm1", LayerNorm(dim, ln_eps, options));
  norm2_ = register_module("norm2", LayerNorm(dim, ln_eps, options));
  norm3_ = register_module("norm3", LayerNorm(dim, ln_eps, options));
}

torch::Tensor BasicTransformerBlockImpl::forward(const torch::Tensor& x, const torch::Tensor& context) {
  auto h = attn1_->forward(norm1_->forward(x)) + x;
  h = attn2_->forward(norm2_->forward(h), context) + h;
  return ff_->forward(norm3_->forward(h)) + h;
}

SpatialTransformerImpl::SpatialTransformerImpl(const SpatialTransformerOptions& o, torch::TensorOptions options)
    : o_(o) {
  const int64_t c = o.channels;
  norm_ = register_module("norm", GroupNorm(o.groups, c, o.norm_eps, options));
  auto proj = [&](int64_t in, int64_t out) {
    return o.use_linear ? nn::Layer(nn::LinearOptions(in, out, true, options))
                        : nn::Layer(nn::Conv2dOptions(in, out, 1, 1, 0, true, options));
  };
  proj_in_ = register_module("proj_in", proj(c, c));
  auto blocks = register_module("transformer_blocks", torch::nn::ModuleList());
  for (int64_t i = 0; i < o.depth; ++i) {
    blocks_.push_back(BasicTransformerBlock(c, o.context_dim, o.heads, c / o.heads, o.layer_norm_eps, options));
    blocks->push_back(blocks_.back());
  }
  proj_out_ = register_module("proj_out", proj(c, c));
}

torch::Tensor SpatialTransformerImpl::forward(const torch::Tensor& x, const torch::Tensor& context, bool checkpoint) {
  const int64_t b = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  auto t = norm_->forward(x);
  if (!o_.use_linear) t = proj_in_->forward(t);
  t = t.permute({0, 2, 3, 1}).reshape({b, h * w, c});
  if (o_.use_linear) t = proj_in_->forward(t);
  for (auto& block : blocks_) {
    if (checkpoint) {
      t = CheckpointedCall(
          [impl = block.ptr()](const std::vector<torch::Tensor>& in) { return impl->forward(in[0], in[1]); },
          {t, context});
    } else {
      t = block->forward(t, context);
    }
  }
  if (o_.use_linear) t = proj_out_->forward(t);
  t = t.reshape({b, h, w, c}).permute({0, 3, 1, 2}).contiguous();
  if (!o_.use_linear) t = proj_out_->forward(t);
  return t + x;
}

DownsampleImpl::DownsampleImpl(int64_t channels, torch::TensorOptions options) {
  op_ = register_module("op", nn::Layer(nn::Conv2dOptions(channels, channels, 3, 2, 1, true, options)));
}

torch::Tensor DownsampleImpl::forward(const torch::Tensor& x) { return op_->forward(x); }

UpsampleImpl::UpsampleImpl(int64_t channels, torch::TensorOptions options) {
  conv_ = register_module("conv", nn::Layer(nn::Conv2dOptions(channels, channels, 3, 1, 1, true, options)));
}

torch::Tensor UpsampleImpl::forward(const torch::Tensor& x) {
  auto up = F::interpolate(x, F::InterpolateFuncOptions()
                                  .scale_factor(std::vector<double>{2.0, 2.0})
                                  .mode(torch::kNearest));
  return conv_->forward(up);
}

void UNetBlockImpl::Append(std::shared_ptr<torch::nn::Module> child) {
  register_module(std::to_string(children_.size()), child);
  children_.push_back(std::move(child));
}

torch::Tensor UNetBlockImpl::forward(torch::Tensor x, const torch::Tensor& emb, const torch::Tensor& context,
                                     bool checkpoint) {
  for (const auto& child : children_) {
    if (auto res = std::dynamic_pointer_cast<ResBlockImpl>(child)) {
      if (checkpoint) {
        x = CheckpointedCall([res](const std::vector<torch::Tensor>& in) { return res->forward(in[0], in[1]); },
                             {x, emb});
      } else {
        x = res->forward(x, emb);
      }
    } else if (auto st = std::dynamic_pointer_cast<SpatialTransformerImpl>(child)) {
      x = st->forward(x, context, checkpoint);
    } else if (auto down = std::dynamic_pointer_cast<DownsampleImpl>(child)) {
      x = down->forward(x);
    } else if (auto up = std::dynamic_pointer_cast<UpsampleImpl>(child)) {
      x = up->forward(x);
    } else if (auto layer = std::dynamic_pointer_cast<nn::LayerImpl>(child)) {
      x = layer->forward(x);
    } else {
      TORCH_CHECK(false, "UNetBlock: unsupported child module type");
    }
  }
  return x;
}

}  // namespace lorad::models
