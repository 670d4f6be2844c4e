#include "core/networks/targets.h"

#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"

namespace lorad::networks {

std::string KohyaLoraName(const std::string& prefix, const std::string& module_path) {
  return absl::StrReplaceAll(absl::StrCat(prefix, ".", module_path), {{".", "_"}});
}

std::vector<TargetLayer> FindLayersInContainers(
    torch::nn::Module& root, const std::string& prefix,
    const std::function<bool(const torch::nn::Module&)>& is_container, bool include_kxk_convs) {
  std::vector<TargetLayer> targets;
  std::set<const nn::LayerImpl*> seen;
  // The root itself may be a container; named_modules(include_self) would need
  // it to live in a shared_ptr, so it is checked separately.
  std::vector<std::pair<std::string, torch::nn::Module*>> containers;
  if (is_container(root)) containers.emplace_back("", &root);
  for (const auto& item : root.named_modules("", /*include_self=*/false)) {
    if (is_container(*item.value())) containers.emplace_back(item.key(), item.value().get());
  }
  for (const auto& [container_path, container] : containers) {
    for (const auto& child : container->named_modules("", /*include_self=*/false)) {
      auto layer = std::dynamic_pointer_cast<nn::LayerImpl>(child.value());
      if (!layer || seen.count(layer.get())) continue;
      const bool kxk = layer->kind() == nn::LayerKind::kConv2d && layer->options().kernel > 1;
      if (kxk && !include_kxk_convs) continue;
      seen.insert(layer.get());
      TargetLayer t;
      t.module_path = container_path.empty() ? child.key() : absl::StrCat(container_path, ".", child.key());
      t.lora_name = KohyaLoraName(prefix, t.module_path);
      t.layer = layer;
      t.conv_kxk = kxk;
      targets.push_back(std::move(t));
    }
  }
  return targets;
}

}  // namespace lorad::networks
