#include "core/models/detect.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "core/base/json_scan.h"
#include "core/base/status_macros.h"

namespace lorad::models {
namespace {

// Shape of prefix+key or NOT_FOUND naming the key the detection needed.
absl::StatusOr<std::vector<int64_t>> NeedShape(const io::TensorSource& s, const std::string& prefix,
                                               const std::string& key, size_t rank) {
  auto shape = s.Shape(prefix + key);
  if (!shape.ok()) {
    return absl::NotFoundError(absl::StrCat("cannot detect the architecture: tensor '", prefix, key,
                                            "' is missing (not a Stable Diffusion checkpoint, or truncated)"));
  }
  if (shape->size() != rank) {
    return absl::InvalidArgumentError(absl::StrCat("unknown architecture: tensor '", prefix, key, "' has rank ",
                                                   shape->size(), ", expected ", rank));
  }
  return *shape;
}

int64_t JsonInt(const nlohmann::json* j, const char* key, int64_t fallback) {
  if (j == nullptr || !j->is_object() || !j->contains(key) || !(*j)[key].is_number_integer()) return fallback;
  return (*j)[key].get<int64_t>();
}

// Sane bounds for each dimension's role, checked before any division by it and
// before any module is built. Far above SD1.5 / SDXL (model_channels 320,
// context 768/2048, VAE ch 128, 4 latent channels, time embed 256): a value
// outside is a corrupt or hostile file, not a model.
constexpr int64_t kMaxChannels = 8192;       // a conv's width (model_channels, VAE ch)
constexpr int64_t kMaxLevelWidth = 65536;    // a level's width (channels x mult)
constexpr int64_t kMaxImageChannels = 64;    // image / latent channels (3, 4, 9 for inpainting, 16)
constexpr int64_t kMaxContextDim = 16384;    // text embedding width (768, 1024, 2048)
constexpr int64_t kMaxAdmChannels = 65536;   // SDXL's pooled + size embedding (2816)
constexpr int64_t kMaxHeads = 1024;          // attention heads or head width
constexpr int64_t kMaxNormGroups = 1024;     // GroupNorm groups (32)
constexpr int64_t kMaxTimeEmbedDim = 4096;   // SDXL addition_time_embed_dim (256)

// `value` (the `role` taken from tensor `key`) within [lo, hi], else an error
// naming the key, the value and the bounds.
absl::Status CheckDim(const std::string& key, const char* role, int64_t value, int64_t lo, int64_t hi) {
  if (value >= lo && value <= hi) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("unknown architecture: '", key, "' gives ", role, " = ", value,
                                                 "; a Stable Diffusion model has ", lo, " to ", hi));
}

// An integer from the file's fixture_config metadata, bounded like CheckDim.
absl::StatusOr<int64_t> BoundedJsonInt(const nlohmann::json* j, const char* key, int64_t fallback, int64_t lo,
                                       int64_t hi) {
  const int64_t v = JsonInt(j, key, fallback);
  if (v >= lo && v <= hi) return v;
  return absl::InvalidArgumentError(absl::StrCat("unknown architecture: fixture_config '", key, "' = ", v,
                                                 "; a Stable Diffusion model has ", lo, " to ", hi));
}

// Highest N such that prefix+N+suffix exists for N = 0..; returns the count.
int64_t CountIndexed(const io::TensorSource& s, const std::string& head, const std::string& tail, int64_t start = 0) {
  int64_t n = start;
  while (s.Has(absl::StrCat(head, n, tail))) ++n;
  return n - start;
}

}  // namespace

nlohmann::json FixtureConfig(const std::map<std::string, std::string>& metadata) {
  auto it = metadata.find("fixture_config");
  if (it == metadata.end()) return nullptr;
  // nlohmann recurses per nesting level: deeper text is ignored unparsed.
  if (ScanJson(it->second).depth > kMaxJsonDepth) return nullptr;
  auto j = nlohmann::json::parse(it->second, nullptr, /*allow_exceptions=*/false);
  return j.is_discarded() ? nlohmann::json(nullptr) : j;
}

absl::StatusOr<UNetConfig> DetectUNetConfig(const io::TensorSource& s, const std::string& p, bool sdxl_defaults,
                                            const nlohmann::json* original) {
  UNetConfig c;
  ASSIGN_OR_RETURN(auto conv_in, NeedShape(s, p, "input_blocks.0.0.weight", 4));
  c.model_channels = conv_in[0];
  c.in_channels = conv_in[1];
  RETURN_IF_ERROR(CheckDim(p + "input_blocks.0.0.weight", "model_channels", c.model_channels, 1, kMaxChannels));
  RETURN_IF_ERROR(CheckDim(p + "input_blocks.0.0.weight", "in_channels", c.in_channels, 1, kMaxImageChannels));
  ASSIGN_OR_RETURN(auto conv_out, NeedShape(s, p, "out.2.weight", 4));
  c.out_channels = conv_out[0];
  RETURN_IF_ERROR(CheckDim(p + "out.2.weight", "out_channels", c.out_channels, 1, kMaxImageChannels));
  ASSIGN_OR_RETURN(auto time0, NeedShape(s, p, "time_embed.0.weight", 2));
  if (time0[1] != c.model_channels || time0[0] != 4 * c.model_channels) {
    return absl::InvalidArgumentError(absl::StrCat("unknown architecture: '", p, "time_embed.0.weight' is [", time0[0],
                                                   ",", time0[1], "], expected [4*", c.model_channels, ",",
                                                   c.model_channels, "]"));
  }
  // Count input blocks by walking indices until neither a ResBlock nor a Downsample exists.
  int64_t n = 1;
  int64_t downsamples = 0, first_down = -1;
  while (true) {
    const bool res = s.Has(absl::StrCat(p, "input_blocks.", n, ".0.in_layers.0.weight"));
    const bool down = s.Has(absl::StrCat(p, "input_blocks.", n, ".0.op.weight"));
    if (!res && !down) break;
    if (down) {
      ++downsamples;
      if (first_down < 0) first_down = n;
    }
    ++n;
  }
  const int64_t blocks = n - 1;  // excluding conv_in
  c.num_res_blocks = first_down > 0 ? first_down - 1 : blocks;
  const int64_t levels = downsamples + 1;
  if (c.num_res_blocks <= 0 || blocks != levels * c.num_res_blocks + downsamples) {
    return absl::InvalidArgumentError(absl::StrCat("unknown architecture: ", blocks, " input blocks under '", p,
                                                   "input_blocks.' do not form levels of equal depth"));
  }
  c.channel_mult.clear();
  c.attention_levels.clear();
  c.transformer_depth.clear();
  bool linear_known = false;
  int64_t context_dim = 0;
  auto inspect_transformer = [&](const std::string& t) -> absl::StatusOr<int64_t> {
    const int64_t depth = CountIndexed(s, t + "transformer_blocks.", ".norm1.weight");
    if (depth == 0) {
      return absl::InvalidArgumentError(absl::StrCat("unknown architecture: '", t, "norm.weight' without '", t,
                                                     "transformer_blocks.0.norm1.weight'"));
    }
    ASSIGN_OR_RETURN(auto proj_in, s.Shape(t + "proj_in.weight"));
    const bool linear = proj_in.size() == 2;
    if (linear_known && linear != c.use_linear_in_transformer) {
      return absl::InvalidArgumentError(absl::StrCat("unknown architecture: '", t, "proj_in.weight' mixes Linear and Conv projections"));
    }
    c.use_linear_in_transformer = linear;
    linear_known = true;
    ASSIGN_OR_RETURN(auto to_k, NeedShape(s, t, "transformer_blocks.0.attn2.to_k.weight", 2));
    context_dim = to_k[1];
    RETURN_IF_ERROR(CheckDim(t + "transformer_blocks.0.attn2.to_k.weight", "context_dim", context_dim, 1,
                             kMaxContextDim));
    return depth;
  };
  for (int64_t level = 0; level < levels; ++level) {
    const int64_t b = level * (c.num_res_blocks + 1) + 1;
    ASSIGN_OR_RETURN(auto out_conv, NeedShape(s, p, absl::StrCat("input_blocks.", b, ".0.out_layers.3.weight"), 4));
    RETURN_IF_ERROR(CheckDim(absl::StrCat(p, "input_blocks.", b, ".0.out_layers.3.weight"), "the level's width",
                             out_conv[0], 1, kMaxLevelWidth));
    if (out_conv[0] % c.model_channels != 0) {
      return absl::InvalidArgumentError(absl::StrCat("unknown architecture: level ", level, " width ", out_conv[0],
                                                     " is not a multiple of model_channels ", c.model_channels));
    }
    c.channel_mult.push_back(out_conv[0] / c.model_channels);
    const std::string t = absl::StrCat(p, "input_blocks.", b, ".1.");
    if (s.Has(t + "norm.weight")) {
      ASSIGN_OR_RETURN(int64_t depth, inspect_transformer(t));
      c.attention_levels.push_back(level);
      c.transformer_depth.push_back(depth);
    } else {
      c.transformer_depth.push_back(0);
    }
  }
  const std::string mid = p + "middle_block.1.";
  if (s.Has(mid + "norm.weight")) {
    ASSIGN_OR_RETURN(c.transformer_depth_middle, inspect_transformer(mid));
  } else {
    c.transformer_depth_middle = 0;
  }
  c.context_dim = context_dim;
  if (s.Has(p + "label_emb.0.0.weight")) {
    ASSIGN_OR_RETURN(auto label, NeedShape(s, p, "label_emb.0.0.weight", 2));
    c.adm_in_channels = label[1];
    RETURN_IF_ERROR(CheckDim(p + "label_emb.0.0.weight", "adm_in_channels", c.adm_in_channels, 1, kMaxAdmChannels));
  } else {
    c.adm_in_channels = 0;
  }
  // What shapes cannot tell.
  // -1 (or absent) means "not given"; given values are bounded.
  ASSIGN_OR_RETURN(const int64_t heads, BoundedJsonInt(original, "num_heads", -1, -1, kMaxHeads));
  ASSIGN_OR_RETURN(const int64_t head_channels, BoundedJsonInt(original, "num_head_channels", -1, -1, kMaxHeads));
  if (heads > 0) {
    c.num_heads = heads;
    c.head_dim = -1;
  } else if (head_channels > 0) {
    c.num_heads = -1;
    c.head_dim = head_channels;
  } else if (sdxl_defaults) {
    c.num_heads = -1;
    c.head_dim = 64;
  } else {
    c.num_heads = 8;
    c.head_dim = -1;
  }
  ASSIGN_OR_RETURN(c.norm_groups, BoundedJsonInt(original, "norm_num_groups", 32, 1, kMaxNormGroups));
  ASSIGN_OR_RETURN(c.addition_time_embed_dim,
                   BoundedJsonInt(original, "addition_time_embed_dim", 256, 1, kMaxTimeEmbedDim));
  RETURN_IF_ERROR(c.Validate());
  return c;
}

absl::StatusOr<VaeConfig> DetectVaeConfig(const io::TensorSource& s, const std::string& p,
                                          double default_scaling_factor, const nlohmann::json* original,
                                          std::optional<double> scaling_factor_override) {
  VaeConfig c;
  ASSIGN_OR_RETURN(auto conv_in, NeedShape(s, p, "encoder.conv_in.weight", 4));
  c.ch = conv_in[0];
  c.in_channels = conv_in[1];
  // Checked before the widths below are divided by ch (0 was a SIGFPE).
  RETURN_IF_ERROR(CheckDim(p + "encoder.conv_in.weight", "ch", c.ch, 1, kMaxChannels));
  RETURN_IF_ERROR(CheckDim(p + "encoder.conv_in.weight", "in_channels", c.in_channels, 1, kMaxImageChannels));
  const int64_t levels = CountIndexed(s, p + "encoder.down.", ".block.0.conv1.weight");
  if (levels == 0) return NeedShape(s, p, "encoder.down.0.block.0.conv1.weight", 4).status();
  c.num_res_blocks = CountIndexed(s, p + "encoder.down.0.block.", ".conv1.weight");
  c.ch_mult.clear();
  for (int64_t i = 0; i < levels; ++i) {
    ASSIGN_OR_RETURN(auto conv2, NeedShape(s, p, absl::StrCat("encoder.down.", i, ".block.0.conv2.weight"), 4));
    RETURN_IF_ERROR(CheckDim(absl::StrCat(p, "encoder.down.", i, ".block.0.conv2.weight"), "the level's width",
                             conv2[0], 1, kMaxLevelWidth));
    if (conv2[0] % c.ch != 0) {
      return absl::InvalidArgumentError(absl::StrCat("unknown VAE architecture: '", p, "encoder.down.", i,
                                                     ".block.0.conv2.weight' width ", conv2[0],
                                                     " is not a multiple of ", c.ch));
    }
    c.ch_mult.push_back(conv2[0] / c.ch);
  }
  ASSIGN_OR_RETURN(auto dec_in, NeedShape(s, p, "decoder.conv_in.weight", 4));
  c.z_channels = dec_in[1];
  RETURN_IF_ERROR(CheckDim(p + "decoder.conv_in.weight", "z_channels", c.z_channels, 1, kMaxImageChannels));
  ASSIGN_OR_RETURN(auto enc_out, NeedShape(s, p, "encoder.conv_out.weight", 4));
  if (enc_out[0] != 2 * c.z_channels) {
    return absl::InvalidArgumentError(absl::StrCat("unknown VAE architecture: '", p, "encoder.conv_out.weight' has ",
                                                   enc_out[0], " outputs, expected 2 x z_channels = ",
                                                   2 * c.z_channels));
  }
  ASSIGN_OR_RETURN(auto pq, NeedShape(s, p, "post_quant_conv.weight", 4));
  c.embed_dim = pq[1];
  RETURN_IF_ERROR(CheckDim(p + "post_quant_conv.weight", "embed_dim", c.embed_dim, 1, kMaxImageChannels));
  ASSIGN_OR_RETURN(auto dec_out, NeedShape(s, p, "decoder.conv_out.weight", 4));
  c.out_channels = dec_out[0];
  RETURN_IF_ERROR(CheckDim(p + "decoder.conv_out.weight", "out_channels", c.out_channels, 1, kMaxImageChannels));
  ASSIGN_OR_RETURN(c.norm_groups, BoundedJsonInt(original, "norm_num_groups", 32, 1, kMaxNormGroups));
  c.scaling_factor = scaling_factor_override.value_or(default_scaling_factor);
  RETURN_IF_ERROR(c.Validate());
  return c;
}

}  // namespace lorad::models
