#include "core/models/unet.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace lorad::models {

UNetConfig UNetConfig::Sd15() { return UNetConfig{}; }

UNetConfig UNetConfig::SdxlBase() {
  UNetConfig c;
  c.channel_mult = {1, 2, 4};
  c.attention_levels = {1, 2};
  c.transformer_depth = {0, 2, 10};
  c.transformer_depth_middle = 10;
  c.num_heads = -1;
  c.head_dim = 64;
  c.context_dim = 2048;
  c.use_linear_in_transformer = true;
  c.adm_in_channels = 2816;
  return c;
}

bool UNetConfig::HasAttention(int64_t level) const {
  if (std::find(attention_levels.begin(), attention_levels.end(), level) == attention_levels.end()) return false;
  return level < static_cast<int64_t>(transformer_depth.size()) && transformer_depth[level] > 0;
}

int64_t UNetConfig::HeadsFor(int64_t channels) const {
  return num_heads > 0 ? num_heads : channels / head_dim;
}

absl::Status UNetConfig::Validate() const {
  auto bad = [](const std::string& what) { return absl::InvalidArgumentError(absl::StrCat("UNetConfig: ", what)); };
  if (in_channels <= 0 || out_channels <= 0 || model_channels <= 0) return bad("channel counts must be positive");
  if (channel_mult.empty()) return bad("channel_mult is empty");
  if (num_res_blocks <= 0) return bad("num_res_blocks must be positive");
  if (static_cast<int64_t>(transformer_depth.size()) != num_levels()) {
    return bad(absl::StrCat("transformer_depth has ", transformer_depth.size(), " entries, channel_mult ",
                            channel_mult.size()));
  }
  if ((num_heads > 0) == (head_dim > 0)) return bad("set exactly one of num_heads and head_dim");
  if (norm_groups <= 0) return bad("norm_groups must be positive");
  if (model_channels % norm_groups != 0) {
    return bad(absl::StrCat("model_channels ", model_channels, " not divisible by norm_groups ", norm_groups));
  }
  for (int64_t level = 0; level < num_levels(); ++level) {
    const int64_t ch = model_channels * channel_mult[level];
    if (ch % norm_groups != 0) return bad(absl::StrCat("level ", level, " width ", ch, " not divisible by norm_groups"));
    if (HasAttention(level) || level == num_levels() - 1) {
      const int64_t div = num_heads > 0 ? num_heads : head_dim;
      if (ch % div != 0) {
        return bad(absl::StrCat("level ", level, " width ", ch, " not divisible by ",
                                num_heads > 0 ? "num_heads " : "head_dim ", div));
      }
    }
  }
  if ((HasAttention(0) || transformer_depth_middle > 0 || !attention_levels.empty()) && context_dim <= 0) {
    return bad("context_dim must be positive");
  }
  if (adm_in_channels < 0 || addition_time_embed_dim <= 0) return bad("adm_in_channels / addition_time_embed_dim");
  return absl::OkStatus();
}

nlohmann::json UNetConfig::ToJson() const {
  return {{"in_channels", in_channels},
          {"out_channels", out_channels},
          {"model_channels", model_channels},
          {"channel_mult", channel_mult},
          {"num_res_blocks", num_res_blocks},
          {"attention_levels", attention_levels},
          {"transformer_depth", transformer_depth},
          {"transformer_depth_middle", transformer_depth_middle},
          {"num_heads", num_heads},
          {"head_dim", head_dim},
          {"context_dim", context_dim},
          {"use_linear_in_transformer", use_linear_in_transformer},
          {"adm_in_channels", adm_in_channels},
          {"addition_time_embed_dim", addition_time_embed_dim},
          {"norm_groups", norm_groups},
          {"time_embed_dim", time_embed_dim()}};
}

torch::Tensor TimestepEmbedding(const torch::Tensor& timesteps, int64_t dim, double max_period) {
  const int64_t half = dim / 2;
  auto opts = torch::TensorOptions().dtype(torch::kFloat32).device(timesteps.device());
  auto freqs = torch::exp(-std::log(max_period) * torch::arange(half, opts) / static_cast<double>(half));
  auto args = timesteps.reshape({-1, 1}).to(torch::kFloat32) * freqs.unsqueeze(0);
  auto emb = torch::cat({torch::cos(args), torch::sin(args)}, -1);
  if (dim % 2 == 1) emb = torch::cat({emb, torch::zeros({emb.size(0), 1}, opts)}, -1);
  return emb;
}

torch::Tensor SdxlAddedConditioning(const torch::Tensor& pooled, const torch::Tensor& original_hw,
                                    const torch::Tensor& crop_top_left, const torch::Tensor& target_hw,
                                    int64_t embed_dim) {
  const int64_t b = pooled.size(0);
  auto embed = [&](const torch::Tensor& pair) {
    return TimestepEmbedding(pair.reshape({-1}), embed_dim).reshape({b, -1});
  };
  return torch::cat({pooled.to(torch::kFloat32), embed(original_hw), embed(crop_top_left), embed(target_hw)}, -1)
      .to(pooled.scalar_type());
}

UNetImpl::UNetImpl(const UNetConfig& config, torch::TensorOptions options) : config_(config) {
  const auto& c = config_;
  const int64_t mc = c.model_channels, ted = c.time_embed_dim();
  auto holder = [this](const std::string& name) { return register_module(name, std::make_shared<torch::nn::Module>()); };

  auto time_embed = holder("time_embed");
  time_embed_0_ = time_embed->register_module("0", nn::Layer(nn::LinearOptions(mc, ted, true, options)));
  time_embed_2_ = time_embed->register_module("2", nn::Layer(nn::LinearOptions(ted, ted, true, options)));
  if (c.adm_in_channels > 0) {
    auto label_emb = holder("label_emb");
    auto seq = label_emb->register_module("0", std::make_shared<torch::nn::Module>());
    label_emb_0_ = seq->register_module("0", nn::Layer(nn::LinearOptions(c.adm_in_channels, ted, true, options)));
    label_emb_2_ = seq->register_module("2", nn::Layer(nn::LinearOptions(ted, ted, true, options)));
  }

  auto transformer = [&](int64_t ch, int64_t depth) {
    SpatialTransformerOptions o;
    o.channels = ch;
    o.context_dim = c.context_dim;
    o.heads = c.HeadsFor(ch);
    o.depth = depth;
    o.use_linear = c.use_linear_in_transformer;
    o.groups = c.norm_groups;
    o.norm_eps = c.transformer_norm_eps;
    o.layer_norm_eps = c.layer_norm_eps;
    return SpatialTransformer(o, options).ptr();
  };
  auto resblock = [&](int64_t in, int64_t out) {
    return ResBlock(in, out, ted, c.norm_groups, c.resnet_eps, options).ptr();
  };

  input_blocks_ = register_module("input_blocks", torch::nn::ModuleList());
  {
    auto block = std::make_shared<UNetBlockImpl>();
    block->Append(nn::Layer(nn::Conv2dOptions(c.in_channels, mc, 3, 1, 1, true, options)).ptr());
    input_blocks_->push_back(block);
  }
  std::vector<int64_t> skip_channels = {mc};
  int64_t ch = mc;
  for (int64_t level = 0; level < c.num_levels(); ++level) {
    const int64_t out = mc * c.channel_mult[level];
    for (int64_t r = 0; r < c.num_res_blocks; ++r) {
      auto block = std::make_shared<UNetBlockImpl>();
      block->Append(resblock(ch, out));
      ch = out;
      if (c.HasAttention(level)) block->Append(transformer(ch, c.transformer_depth[level]));
      input_blocks_->push_back(block);
      skip_channels.push_back(ch);
    }
    if (level != c.num_levels() - 1) {
      auto block = std::make_shared<UNetBlockImpl>();
      block->Append(Downsample(ch, options).ptr());
      input_blocks_->push_back(block);
      skip_channels.push_back(ch);
    }
  }

  middle_block_ = register_module("middle_block", std::make_shared<UNetBlockImpl>());
  middle_block_->Append(resblock(ch, ch));
  if (c.transformer_depth_middle > 0) middle_block_->Append(transformer(ch, c.transformer_depth_middle));
  middle_block_->Append(resblock(ch, ch));

  output_blocks_ = register_module("output_blocks", torch::nn::ModuleList());
  for (int64_t level = c.num_levels() - 1; level >= 0; --level) {
    const int64_t out = mc * c.channel_mult[level];
    for (int64_t r = 0; r <= c.num_res_blocks; ++r) {
      const int64_t skip = skip_channels.back();
      skip_channels.pop_back();
      auto block = std::make_shared<UNetBlockImpl>();
      block->Append(resblock(ch + skip, out));
      ch = out;
      if (c.HasAttention(level)) block->Append(transformer(ch, c.transformer_depth[level]));
      if (level > 0 && r == c.num_res_blocks) block->Append(Upsample(ch, options).ptr());
      output_blocks_->push_back(block);
    }
  }

  auto out = holder("out");
  out_0_ = out->register_module("0", GroupNorm(c.norm_groups, ch, c.resnet_eps, options));
  out_2_ = out->register_module("2", nn::Layer(nn::Conv2dOptions(mc, c.out_channels, 3, 1, 1, true, options)));
}

void UNetImpl::set_gradient_checkpointing(bool enabled) { gradient_checkpointing_ = enabled; }

torch::Tensor UNetImpl::forward(const torch::Tensor& x, const torch::Tensor& timesteps,
                                const torch::Tensor& context, const torch::Tensor& y) {
  return Run(x, timesteps, context, y, nullptr);
}

torch::Tensor UNetImpl::ForwardWithDebug(const torch::Tensor& x, const torch::Tensor& timesteps,
                                         const torch::Tensor& context, const torch::Tensor& y,
                                         std::map<std::string, torch::Tensor>* debug) {
  return Run(x, timesteps, context, y, debug);
}

torch::Tensor UNetImpl::Run(const torch::Tensor& x, const torch::Tensor& timesteps, const torch::Tensor& context,
                            const torch::Tensor& y, std::map<std::string, torch::Tensor>* debug) {
  const auto& c = config_;
  TORCH_CHECK(x.dim() == 4 && x.size(1) == c.in_channels, "UNet: x must be [B, ", c.in_channels, ", H, W], got ",
              x.sizes());
  TORCH_CHECK((c.adm_in_channels > 0) == y.defined(),
              c.adm_in_channels > 0 ? "UNet: this model needs the added conditioning y"
                                    : "UNet: this model takes no y");
  auto record = [debug](const std::string& name, const torch::Tensor& t) {
    if (debug) (*debug)[name] = t;
  };
  auto t = timesteps.dim() == 0 ? timesteps.expand({x.size(0)}) : timesteps;
  const auto param_dtype = time_embed_0_->weight().scalar_type();
  auto t_emb = TimestepEmbedding(t, c.model_channels).to(param_dtype);
  record("t_sinusoid", t_emb);
  auto emb = time_embed_2_->forward(torch::silu(time_embed_0_->forward(t_emb)));
  record("t_emb", emb);
  if (c.adm_in_channels > 0) {
    TORCH_CHECK(y.dim() == 2 && y.size(1) == c.adm_in_channels, "UNet: y must be [B, ", c.adm_in_channels, "], got ",
                y.sizes());
    auto label = label_emb_2_->forward(torch::silu(label_emb_0_->forward(y.to(param_dtype))));
    record("label_emb", label);
    emb = emb + label;
  }

  const bool ckpt = gradient_checkpointing_ && torch::GradMode::is_enabled();
  const int64_t per_level = c.num_res_blocks + 1;
  std::vector<torch::Tensor> skips;
  // Inputs follow the weights' dtype (a half-precision frozen model takes float32 latents).
  torch::Tensor h = x.to(param_dtype);
  const torch::Tensor ctx = context.defined() ? context.to(param_dtype) : context;
  for (size_t i = 0; i < input_blocks_->size(); ++i) {
    h = input_blocks_->ptr<UNetBlockImpl>(i)->forward(h, emb, ctx, ckpt);
    skips.push_back(h);
    if (i == 0) {
      record("conv_in", h);
    } else if (static_cast<int64_t>(i) % per_level == 0 || i + 1 == input_blocks_->size()) {
      record(absl::StrCat("down_blocks.", (static_cast<int64_t>(i) - 1) / per_level), h);
    }
  }
  h = middle_block_->forward(h, emb, ctx, ckpt);
  record("mid_block", h);
  for (size_t i = 0; i < output_blocks_->size(); ++i) {
    h = torch::cat({h, skips.back()}, 1);
    skips.pop_back();
    h = output_blocks_->ptr<UNetBlockImpl>(i)->forward(h, emb, ctx, ckpt);
    if (static_cast<int64_t>(i) % per_level == c.num_res_blocks) {
      record(absl::StrCat("up_blocks.", static_cast<int64_t>(i) / per_level), h);
    }
  }
  return out_2_->forward(torch::silu(out_0_->forward(h)));
}

}  // namespace lorad::models
