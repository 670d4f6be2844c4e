#include "core/networks/unet_names.h"

#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace lorad::networks {
namespace {

absl::Status NotInLayout(const std::string& path) {
  return absl::NotFoundError(absl::StrCat("U-Net module path '", path, "' is not part of the U-Net layout"));
}

// ResBlock children: LDM -> diffusers (sd-scripts library/model_util.py:renew_resnet_paths).
std::vector<std::string> ResBlockChild(const std::vector<std::string>& rest) {
  if (rest.empty()) return {};
  static const std::vector<std::pair<std::string, std::string>> kMap = {
      {"in_layers.0", "norm1"},   {"in_layers.2", "conv1"},         {"out_layers.0", "norm2"},
      {"out_layers.3", "conv2"},  {"emb_layers.1", "time_emb_proj"}, {"skip_connection", "conv_shortcut"}};
  const std::string joined = absl::StrJoin(rest, ".");
  for (const auto& [ldm, diffusers] : kMap) {
    if (joined == ldm || joined.rfind(ldm + ".", 0) == 0) return {diffusers + joined.substr(ldm.size())};
  }
  return {joined};
}

std::string Join(const std::string& head, const std::vector<std::string>& rest) {
  return rest.empty() ? head : absl::StrCat(head, ".", absl::StrJoin(rest, "."));
}

}  // namespace

absl::StatusOr<std::string> LdmToDiffusersUnetPath(const std::string& ldm_path, const UnetLayout& layout) {
  std::vector<std::string> parts = absl::StrSplit(ldm_path, '.');
  const int64_t per_level = layout.num_res_blocks + 1;
  auto index = [&](size_t k, int64_t* out) { return parts.size() > k && absl::SimpleAtoi(parts[k], out); };
  const std::string& head = parts[0];

  if (head == "time_embed" || head == "out") {
    int64_t i = 0;
    if (!index(1, &i)) return NotInLayout(ldm_path);
    std::vector<std::string> rest(parts.begin() + 2, parts.end());
    if (head == "time_embed" && i == 0) return Join("time_embedding.linear_1", rest);
    if (head == "time_embed" && i == 2) return Join("time_embedding.linear_2", rest);
    if (head == "out" && i == 0) return Join("conv_norm_out", rest);
    if (head == "out" && i == 2) return Join("conv_out", rest);
    return NotInLayout(ldm_path);
  }
  if (head == "label_emb") {
    int64_t i = 0;
    if (!index(2, &i) || parts[1] != "0") return NotInLayout(ldm_path);
    std::vector<std::string> rest(parts.begin() + 3, parts.end());
    if (i == 0) return Join("add_embedding.linear_1", rest);
    if (i == 2) return Join("add_embedding.linear_2", rest);
    return NotInLayout(ldm_path);
  }
  if (head == "middle_block") {
    int64_t j = 0;
    if (!index(1, &j)) return NotInLayout(ldm_path);
    std::vector<std::string> rest(parts.begin() + 2, parts.end());
    if (j == 0) return Join("mid_block.resnets.0", ResBlockChild(rest));
    if (j == 1) return Join("mid_block.attentions.0", rest);
    if (j == 2) return Join("mid_block.resnets.1", ResBlockChild(rest));
    return NotInLayout(ldm_path);
  }
  int64_t i = 0, j = 0;
  if ((head != "input_blocks" && head != "output_blocks") || !index(1, &i) || !index(2, &j)) {
    return NotInLayout(ldm_path);
  }
  std::vector<std::string> rest(parts.begin() + 3, parts.end());
  const bool rest_is_conv = !rest.empty() && rest[0] == "conv";
  if (head == "input_blocks") {
    if (i == 0) {
      if (j != 0) return NotInLayout(ldm_path);
      return Join("conv_in", rest);
    }
    const int64_t level = (i - 1) / per_level;
    const int64_t pos = (i - 1) % per_level;
    if (level >= layout.num_levels) return NotInLayout(ldm_path);
    const std::string block = absl::StrCat("down_blocks.", level);
    if (pos == layout.num_res_blocks) {
      if (j != 0 || rest.empty() || rest[0] != "op" || level == layout.num_levels - 1) return NotInLayout(ldm_path);
      rest.erase(rest.begin());
      return Join(block + ".downsamplers.0.conv", rest);
    }
    if (j == 0) return Join(absl::StrCat(block, ".resnets.", pos), ResBlockChild(rest));
    if (j == 1) return Join(absl::StrCat(block, ".attentions.", pos), rest);
    return NotInLayout(ldm_path);
  }
  const int64_t level = i / per_level;
  const int64_t pos = i % per_level;
  if (level >= layout.num_levels) return NotInLayout(ldm_path);
  const std::string block = absl::StrCat("up_blocks.", level);
  if (j == 0) return Join(absl::StrCat(block, ".resnets.", pos), ResBlockChild(rest));
  if ((j == 1 || j == 2) && rest_is_conv) {
    if (pos != layout.num_res_blocks || level == layout.num_levels - 1) return NotInLayout(ldm_path);
    return Join(block + ".upsamplers.0", rest);
  }
  if (j == 1) return Join(absl::StrCat(block, ".attentions.", pos), rest);
  return NotInLayout(ldm_path);
}

}  // namespace lorad::networks
