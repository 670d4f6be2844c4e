// The network configuration as kohya sd-scripts spells it: network_module
// (`networks.lora` or `lycoris.kohya`), network_dim, network_alpha,
// network_dropout and network_args ("key=value" strings: algo, conv_dim,
// conv_alpha, use_dora / dora_wd, wd_on_output, dropout, rank_dropout,
// module_dropout, factor, decompose_both, use_tucker, loraplus_*), as read by
// sd-scripts networks/lora.py:create_network and LyCORIS lycoris/kohya.py:create_network.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/config/config.h"

namespace lorad::networks {

enum class NetworkModule { kKohyaLora, kLycoris };
// kLora covers LoRA on Linear / 1x1 convs and LoCon on kxk convs.
enum class Algo { kLora, kLoha, kLokr };

std::string NetworkModuleName(NetworkModule module);  // "networks.lora" | "lycoris.kohya"
std::string AlgoName(Algo algo);                      // "lora" | "loha" | "lokr"

// The raw kohya keys, as they come from a TOML config or the command line.
struct NetworkConfigInput {
  std::string network_module = "networks.lora";
  std::optional<int64_t> network_dim;    // default 4
  std::optional<double> network_alpha;  // default 1
  std::optional<double> network_dropout;
  std::vector<std::string> network_args;  // "key=value"
};

struct NetworkConfig {
  NetworkModule module = NetworkModule::kKohyaLora;
  Algo algo = Algo::kLora;
  int64_t dim = 4;
  double alpha = 1.0;
  // Rank/alpha of kxk convs. networks.lora: unset = 3x3 convs not targeted.
  // lycoris.kohya: defaults to dim / alpha (LyCORIS' own defaults).
  std::optional<int64_t> conv_dim;
  double conv_alpha = 1.0;
  // DoRA (weight decomposition). wd_on_output=false writes dora_scale [1, in(,1,1)],
  // the layout A1111 (extensions-builtin/Lora/network.py), ComfyUI (comfy/weight_adapter)
  // and Forge (backend/patcher/lora.py) all load.
  bool dora = false;
  bool wd_on_output = false;
  double dropout = 0.0;         // network_dropout / dropout: on the down projection's output
  double rank_dropout = 0.0;
  double module_dropout = 0.0;
  // LoKr / LoHa / LoCon shape options (LyCORIS).
  int64_t factor = -1;
  bool decompose_both = false;
  bool unbalanced_factorization = false;
  bool use_tucker = false;
  // LoRA+ ratios for the trainer's parameter groups (lr of "up" tensors x ratio).
  std::optional<double> loraplus_lr_ratio;
  std::optional<double> loraplus_unet_lr_ratio;
  std::optional<double> loraplus_text_encoder_lr_ratio;
  // network_args as given (after validation), for ss_network_args.
  std::map<std::string, std::string> args;

  // Whether ResBlocks / Downsample / Upsample are targeted (kxk convs get LoCon).
  bool TargetsConvBlocks() const { return conv_dim.has_value() && *conv_dim > 0; }
  // ss_network_args: the args as a JSON object of strings.
  std::string NetworkArgsJson() const;
};

// Validates every key and value. INVALID_ARGUMENT names the offending key, the
// value and what is accepted (unknown module, unknown network_args key, a
// non-numeric dim, dropout outside [0, 1), DoRA with LoKr tucker, ...).
absl::StatusOr<NetworkConfig> ParseNetworkConfig(const NetworkConfigInput& input);

// The network keys of a parsed training config (network_module, network_dim,
// network_alpha, network_dropout, network_args), for ParseNetworkConfig.
NetworkConfigInput NetworkInputOf(const train::TrainConfig& config);

}  // namespace lorad::networks
