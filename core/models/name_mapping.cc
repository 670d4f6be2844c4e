#include "core/models/name_mapping.h"

#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace lorad::models {
namespace {

using Renames = std::vector<std::pair<const char*, const char*>>;  // {diffusers, ldm}

const Renames& UNetResnetRenames() {
  static const Renames r = {{"norm1.", "in_layers.0."},       {"conv1.", "in_layers.2."},
                            {"time_emb_proj.", "emb_layers.1."}, {"norm2.", "out_layers.0."},
                            {"conv2.", "out_layers.3."},      {"conv_shortcut.", "skip_connection."}};
  return r;
}

const Renames& UNetTopRenames() {
  static const Renames r = {{"conv_in.", "input_blocks.0.0."},
                            {"time_embedding.linear_1.", "time_embed.0."},
                            {"time_embedding.linear_2.", "time_embed.2."},
                            {"add_embedding.linear_1.", "label_emb.0.0."},
                            {"add_embedding.linear_2.", "label_emb.0.2."},
                            {"conv_norm_out.", "out.0."},
                            {"conv_out.", "out.2."},
                            {"mid_block.resnets.0.", "middle_block.0."},
                            {"mid_block.attentions.0.", "middle_block.1."},
                            {"mid_block.resnets.1.", "middle_block.2."}};
  return r;
}

const Renames& VaeResnetRenames() {
  static const Renames r = {{"conv_shortcut.", "nin_shortcut."}};
  return r;
}

// Renames the leading part of `rest` by the first matching rule (direction: from
// index `from` of each pair to index `to`); other names pass through unchanged.
std::string RenameHead(const std::string& rest, const Renames& renames, bool to_ldm) {
  for (const auto& [diffusers, ldm] : renames) {
    const std::string from = to_ldm ? diffusers : ldm;
    const std::string to = to_ldm ? ldm : diffusers;
    if (absl::StartsWith(rest, from)) return to + rest.substr(from.size());
  }
  return rest;
}

// Splits "a.12.rest" after `head` ("a.") into 12 and "rest"; false if malformed.
bool TakeIndex(const std::string& name, const std::string& head, int64_t* index, std::string* rest) {
  if (!absl::StartsWith(name, head)) return false;
  const std::string tail = name.substr(head.size());
  const size_t dot = tail.find('.');
  if (dot == std::string::npos) return false;
  if (!absl::SimpleAtoi(tail.substr(0, dot), index)) return false;
  *rest = tail.substr(dot + 1);
  return true;
}

// Whether `rest` renames under a resnet (true) and whether the rename applies.
std::string ResnetToLdm(const std::string& rest) { return RenameHead(rest, UNetResnetRenames(), true); }
std::string ResnetToDiffusers(const std::string& rest) { return RenameHead(rest, UNetResnetRenames(), false); }

}  // namespace

std::optional<std::string> DiffusersToLdmUNetName(const std::string& name, const UNetNameShape& shape) {
  const int64_t n = shape.layers_per_block, per = n + 1;
  for (const auto& [diffusers, ldm] : UNetTopRenames()) {
    if (absl::StartsWith(name, diffusers)) {
      std::string rest = name.substr(std::string(diffusers).size());
      if (absl::StartsWith(diffusers, "mid_block.resnets.")) rest = ResnetToLdm(rest);
      return std::string(ldm) + rest;
    }
  }
  int64_t b = 0, j = 0;
  std::string rest, inner;
  if (TakeIndex(name, "down_blocks.", &b, &rest)) {
    if (TakeIndex(rest, "resnets.", &j, &inner)) return absl::StrCat("input_blocks.", per * b + j + 1, ".0.", ResnetToLdm(inner));
    if (TakeIndex(rest, "attentions.", &j, &inner)) return absl::StrCat("input_blocks.", per * b + j + 1, ".1.", inner);
    if (absl::StartsWith(rest, "downsamplers.0.conv.")) {
      return absl::StrCat("input_blocks.", per * (b + 1), ".0.op.", rest.substr(20));
    }
    return std::nullopt;
  }
  if (TakeIndex(name, "up_blocks.", &b, &rest)) {
    if (TakeIndex(rest, "resnets.", &j, &inner)) return absl::StrCat("output_blocks.", per * b + j, ".0.", ResnetToLdm(inner));
    if (TakeIndex(rest, "attentions.", &j, &inner)) return absl::StrCat("output_blocks.", per * b + j, ".1.", inner);
    if (absl::StartsWith(rest, "upsamplers.0.conv.")) {
      const bool attn = b < static_cast<int64_t>(shape.up_block_has_attention.size()) && shape.up_block_has_attention[b];
      return absl::StrCat("output_blocks.", per * b + n, attn ? ".2.conv." : ".1.conv.", rest.substr(18));
    }
    return std::nullopt;
  }
  return std::nullopt;
}

std::optional<std::string> LdmToDiffusersUNetName(const std::string& name, const UNetNameShape& shape) {
  const int64_t n = shape.layers_per_block, per = n + 1;
  for (const auto& [diffusers, ldm] : UNetTopRenames()) {
    if (absl::StartsWith(name, ldm)) {
      std::string rest = name.substr(std::string(ldm).size());
      if (absl::StartsWith(diffusers, "mid_block.resnets.")) rest = ResnetToDiffusers(rest);
      return std::string(diffusers) + rest;
    }
  }
  int64_t i = 0, m = 0;
  std::string rest, inner;
  if (TakeIndex(name, "input_blocks.", &i, &rest) && i > 0 && TakeIndex(rest, "", &m, &inner)) {
    const int64_t b = (i - 1) / per, j = (i - 1) % per;
    if (j == n) {
      if (m == 0 && absl::StartsWith(inner, "op.")) return absl::StrCat("down_blocks.", b, ".downsamplers.0.conv.", inner.substr(3));
      return std::nullopt;
    }
    if (m == 0) return absl::StrCat("down_blocks.", b, ".resnets.", j, ".", ResnetToDiffusers(inner));
    if (m == 1) return absl::StrCat("down_blocks.", b, ".attentions.", j, ".", inner);
    return std::nullopt;
  }
  if (TakeIndex(name, "output_blocks.", &i, &rest) && TakeIndex(rest, "", &m, &inner)) {
    const int64_t b = i / per, j = i % per;
    if (m == 0) return absl::StrCat("up_blocks.", b, ".resnets.", j, ".", ResnetToDiffusers(inner));
    if ((m == 1 || m == 2) && absl::StartsWith(inner, "conv.")) {
      return absl::StrCat("up_blocks.", b, ".upsamplers.0.conv.", inner.substr(5));
    }
    if (m == 1) return absl::StrCat("up_blocks.", b, ".attentions.", j, ".", inner);
    return std::nullopt;
  }
  return std::nullopt;
}

namespace {

const Renames& VaeAttentionRenames() {
  static const Renames r = {{"group_norm.", "norm."}, {"to_q.", "q."},          {"to_k.", "k."},
                            {"to_v.", "v."},          {"to_out.0.", "proj_out."}, {"query.", "q."},
                            {"key.", "k."},           {"value.", "v."},          {"proj_attn.", "proj_out."}};
  return r;
}

// Converts the part of a VAE name after "encoder." / "decoder.".
std::optional<std::string> VaeCoderToLdm(const std::string& rest, bool decoder, int64_t levels) {
  if (absl::StartsWith(rest, "conv_in.") || absl::StartsWith(rest, "conv_out.")) return rest;
  if (absl::StartsWith(rest, "conv_norm_out.")) return "norm_out." + rest.substr(14);
  if (absl::StartsWith(rest, "mid_block.resnets.0.")) return "mid.block_1." + RenameHead(rest.substr(20), VaeResnetRenames(), true);
  if (absl::StartsWith(rest, "mid_block.resnets.1.")) return "mid.block_2." + RenameHead(rest.substr(20), VaeResnetRenames(), true);
  if (absl::StartsWith(rest, "mid_block.attentions.0.")) {
    return "mid.attn_1." + RenameHead(rest.substr(23), VaeAttentionRenames(), true);
  }
  int64_t i = 0, j = 0;
  std::string tail, inner;
  const std::string head = decoder ? "up_blocks." : "down_blocks.";
  if (!TakeIndex(rest, head, &i, &tail)) return std::nullopt;
  const int64_t level = decoder ? levels - 1 - i : i;
  const std::string group = decoder ? "up." : "down.";
  if (TakeIndex(tail, "resnets.", &j, &inner)) {
    return absl::StrCat(group, level, ".block.", j, ".", RenameHead(inner, VaeResnetRenames(), true));
  }
  const std::string sampler = decoder ? "upsamplers.0.conv." : "downsamplers.0.conv.";
  if (absl::StartsWith(tail, sampler)) {
    return absl::StrCat(group, level, decoder ? ".upsample.conv." : ".downsample.conv.", tail.substr(sampler.size()));
  }
  return std::nullopt;
}

std::optional<std::string> VaeCoderToDiffusers(const std::string& rest, bool decoder, int64_t levels) {
  if (absl::StartsWith(rest, "conv_in.") || absl::StartsWith(rest, "conv_out.")) return rest;
  if (absl::StartsWith(rest, "norm_out.")) return "conv_norm_out." + rest.substr(9);
  if (absl::StartsWith(rest, "mid.block_1.")) return "mid_block.resnets.0." + RenameHead(rest.substr(12), VaeResnetRenames(), false);
  if (absl::StartsWith(rest, "mid.block_2.")) return "mid_block.resnets.1." + RenameHead(rest.substr(12), VaeResnetRenames(), false);
  if (absl::StartsWith(rest, "mid.attn_1.")) {
    // The first four rules are the modern diffusers names.
    const std::string inner = rest.substr(11);
    for (size_t k = 0; k < 5; ++k) {
      const auto& [diffusers, ldm] = VaeAttentionRenames()[k];
      if (absl::StartsWith(inner, ldm)) return "mid_block.attentions.0." + std::string(diffusers) + inner.substr(std::string(ldm).size());
    }
    return std::nullopt;
  }
  int64_t level = 0, j = 0;
  std::string tail, inner;
  const std::string group = decoder ? "up." : "down.";
  if (!TakeIndex(rest, group, &level, &tail)) return std::nullopt;
  const int64_t i = decoder ? levels - 1 - level : level;
  const std::string head = decoder ? "up_blocks." : "down_blocks.";
  if (TakeIndex(tail, "block.", &j, &inner)) {
    return absl::StrCat(head, i, ".resnets.", j, ".", RenameHead(inner, VaeResnetRenames(), false));
  }
  const std::string sampler = decoder ? "upsample.conv." : "downsample.conv.";
  if (absl::StartsWith(tail, sampler)) {
    return absl::StrCat(head, i, decoder ? ".upsamplers.0.conv." : ".downsamplers.0.conv.", tail.substr(sampler.size()));
  }
  return std::nullopt;
}

}  // namespace

std::optional<std::string> DiffusersToLdmVaeName(const std::string& name, int64_t num_levels) {
  if (absl::StartsWith(name, "quant_conv.") || absl::StartsWith(name, "post_quant_conv.")) return name;
  for (const bool decoder : {false, true}) {
    const std::string head = decoder ? "decoder." : "encoder.";
    if (!absl::StartsWith(name, head)) continue;
    auto rest = VaeCoderToLdm(name.substr(head.size()), decoder, num_levels);
    if (!rest) return std::nullopt;
    return head + *rest;
  }
  return std::nullopt;
}

std::optional<std::string> LdmToDiffusersVaeName(const std::string& name, int64_t num_levels) {
  if (absl::StartsWith(name, "quant_conv.") || absl::StartsWith(name, "post_quant_conv.")) return name;
  for (const bool decoder : {false, true}) {
    const std::string head = decoder ? "decoder." : "encoder.";
    if (!absl::StartsWith(name, head)) continue;
    auto rest = VaeCoderToDiffusers(name.substr(head.size()), decoder, num_levels);
    if (!rest) return std::nullopt;
    return head + *rest;
  }
  return std::nullopt;
}

bool IsLdmVaeAttentionWeight(const std::string& name) {
  if (!absl::StrContains(name, "mid.attn_1.") || !absl::EndsWith(name, ".weight")) return false;
  return absl::EndsWith(name, ".q.weight") || absl::EndsWith(name, ".k.weight") || absl::EndsWith(name, ".v.weight") ||
         absl::EndsWith(name, ".proj_out.weight");
}

}  // namespace lorad::models
