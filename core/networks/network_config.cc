#include "core/networks/network_config.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include <nlohmann/json.hpp>

namespace lorad::networks {
namespace {

const std::vector<std::string>& CommonArgs() {
  static const std::vector<std::string> keys = {
      "conv_dim",     "conv_alpha",       "dropout",           "rank_dropout",
      "module_dropout", "use_dora",       "dora_wd",           "wd_on_output",
      "wd_on_out",    "loraplus_lr_ratio", "loraplus_unet_lr_ratio", "loraplus_text_encoder_lr_ratio",
      "algo"};
  return keys;
}

const std::vector<std::string>& LycorisArgs() {
  static const std::vector<std::string> keys = {"factor", "decompose_both", "use_tucker", "use_cp",
                                                "unbalanced_factorization"};
  return keys;
}

std::string Unquote(std::string s) {
  s = std::string(absl::StripAsciiWhitespace(s));
  if (s.size() >= 2 && (s.front() == '"' || s.front() == '\'') && s.back() == s.front()) s = s.substr(1, s.size() - 2);
  return s;
}

absl::Status BadValue(const std::string& key, const std::string& value, const std::string& expected) {
  return absl::InvalidArgumentError(
      absl::StrCat("network_args: ", key, "=", value, " is invalid; expected ", expected));
}

absl::StatusOr<bool> ParseBool(const std::string& key, const std::string& value) {
  const std::string v = absl::AsciiStrToLower(value);
  if (v == "true" || v == "1" || v == "yes") return true;
  if (v == "false" || v == "0" || v == "no" || v == "none") return false;
  return BadValue(key, value, "True or False");
}

absl::StatusOr<double> ParseDouble(const std::string& key, const std::string& value) {
  double d = 0;
  if (!absl::SimpleAtod(value, &d) || !std::isfinite(d)) return BadValue(key, value, "a number");
  return d;
}

absl::StatusOr<int64_t> ParseInt(const std::string& key, const std::string& value) {
  int64_t i = 0;
  if (absl::SimpleAtoi(value, &i)) return i;
  double d = 0;  // kohya's int(float(...)) tolerance: "8.0"
  if (absl::SimpleAtod(value, &d) && std::floor(d) == d && std::isfinite(d)) return static_cast<int64_t>(d);
  return BadValue(key, value, "an integer");
}

absl::Status CheckDropout(const std::string& key, double p) {
  if (p < 0 || p >= 1) {
    return absl::InvalidArgumentError(absl::StrCat(key, " must be in [0, 1), got ", p));
  }
  return absl::OkStatus();
}

}  // namespace

std::string NetworkModuleName(NetworkModule module) {
  return module == NetworkModule::kLycoris ? "lycoris.kohya" : "networks.lora";
}

std::string AlgoName(Algo algo) {
  switch (algo) {
    case Algo::kLora: return "lora";
    case Algo::kLoha: return "loha";
    case Algo::kLokr: return "lokr";
  }
  return "lora";
}

std::string NetworkConfig::NetworkArgsJson() const {
  // Python json.dumps layout (", " and ": "), as kohya writes it.
  std::vector<std::string> items;
  for (const auto& [k, v] : args) items.push_back(absl::StrCat(nlohmann::json(k).dump(), ": ", nlohmann::json(v).dump()));
  return absl::StrCat("{", absl::StrJoin(items, ", "), "}");
}

NetworkConfigInput NetworkInputOf(const train::TrainConfig& config) {
  NetworkConfigInput input;
  input.network_module = config.network_module;
  input.network_dim = config.network_dim;
  input.network_alpha = config.network_alpha;
  input.network_dropout = config.network_dropout;
  input.network_args = config.network_args;
  return input;
}

absl::StatusOr<NetworkConfig> ParseNetworkConfig(const NetworkConfigInput& input) {
  NetworkConfig c;
  if (input.network_module == "networks.lora") {
    c.module = NetworkModule::kKohyaLora;
  } else if (input.network_module == "lycoris.kohya") {
    c.module = NetworkModule::kLycoris;
  } else {
    return absl::InvalidArgumentError(absl::StrCat("network_module '", input.network_module,
                                                   "' is not supported; use networks.lora or lycoris.kohya"));
  }
  if (input.network_dim) c.dim = *input.network_dim;
  if (c.dim <= 0) return absl::InvalidArgumentError(absl::StrCat("network_dim must be > 0, got ", c.dim));
  if (input.network_alpha) c.alpha = *input.network_alpha;
  if (c.alpha < 0 || !std::isfinite(c.alpha)) {
    return absl::InvalidArgumentError(absl::StrCat("network_alpha must be >= 0, got ", c.alpha));
  }
  if (input.network_dropout) {
    c.dropout = *input.network_dropout;
    if (auto s = CheckDropout("network_dropout", c.dropout); !s.ok()) return s;
  }

  std::optional<int64_t> conv_dim;
  std::optional<double> conv_alpha;
  for (const auto& raw : input.network_args) {
    const size_t eq = raw.find('=');
    if (eq == std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("network_args entry '", raw, "' is not of the form key=value"));
    }
    const std::string key = Unquote(raw.substr(0, eq));
    const std::string value = Unquote(raw.substr(eq + 1));
    const bool common = std::count(CommonArgs().begin(), CommonArgs().end(), key) > 0;
    const bool lyco = std::count(LycorisArgs().begin(), LycorisArgs().end(), key) > 0;
    if (!common && !(lyco && c.module == NetworkModule::kLycoris)) {
      std::vector<std::string> known = CommonArgs();
      if (c.module == NetworkModule::kLycoris) known.insert(known.end(), LycorisArgs().begin(), LycorisArgs().end());
      return absl::InvalidArgumentError(absl::StrCat("network_args key '", key, "' is not supported by ",
                                                     input.network_module, "; known keys: ",
                                                     absl::StrJoin(known, ", ")));
    }
    c.args[key] = value;
    if (key == "algo") {
      const std::string algo = absl::AsciiStrToLower(value);
      if (algo == "lora" || algo == "locon") {
        c.algo = Algo::kLora;
      } else if ((algo == "loha" || algo == "lokr") && c.module == NetworkModule::kLycoris) {
        c.algo = algo == "loha" ? Algo::kLoha : Algo::kLokr;
      } else if (algo == "loha" || algo == "lokr") {
        return absl::InvalidArgumentError(absl::StrCat("network_args algo=", value,
                                                       " needs network_module = lycoris.kohya"));
      } else {
        return BadValue(key, value, "one of lora, locon, loha, lokr");
      }
    } else if (key == "conv_dim") {
      auto v = ParseInt(key, value);
      if (!v.ok()) return v.status();
      if (*v < 0) return BadValue(key, value, "an integer >= 0");
      conv_dim = *v;
    } else if (key == "conv_alpha") {
      auto v = ParseDouble(key, value);
      if (!v.ok()) return v.status();
      if (*v < 0) return BadValue(key, value, "a number >= 0");
      conv_alpha = *v;
    } else if (key == "dropout" || key == "rank_dropout" || key == "module_dropout") {
      auto v = ParseDouble(key, value);
      if (!v.ok()) return v.status();
      if (auto s = CheckDropout(key, *v); !s.ok()) return s;
      (key == "dropout" ? c.dropout : key == "rank_dropout" ? c.rank_dropout : c.module_dropout) = *v;
    } else if (key == "use_dora" || key == "dora_wd") {
      auto v = ParseBool(key, value);
      if (!v.ok()) return v.status();
      c.dora = c.dora || *v;
    } else if (key == "wd_on_output" || key == "wd_on_out") {
      auto v = ParseBool(key, value);
      if (!v.ok()) return v.status();
      c.wd_on_output = *v;
    } else if (key.rfind("loraplus_", 0) == 0) {
      auto v = ParseDouble(key, value);
      if (!v.ok()) return v.status();
      if (*v <= 0) return BadValue(key, value, "a number > 0");
      (key == "loraplus_lr_ratio"        ? c.loraplus_lr_ratio
       : key == "loraplus_unet_lr_ratio" ? c.loraplus_unet_lr_ratio
                                         : c.loraplus_text_encoder_lr_ratio) = *v;
    } else if (key == "factor") {
      auto v = ParseInt(key, value);
      if (!v.ok()) return v.status();
      if (*v == 0 || *v < -1) return BadValue(key, value, "-1 or a positive integer");
      c.factor = *v;
    } else {  // boolean LyCORIS shape options
      auto v = ParseBool(key, value);
      if (!v.ok()) return v.status();
      if (key == "decompose_both") c.decompose_both = *v;
      if (key == "use_tucker" || key == "use_cp") c.use_tucker = *v;
      if (key == "unbalanced_factorization") c.unbalanced_factorization = *v;
    }
  }
  if (c.module == NetworkModule::kLycoris) {
    // LyCORIS' kohya entry point: conv_dim / conv_alpha default to dim / alpha.
    c.conv_dim = conv_dim.value_or(c.dim);
    c.conv_alpha = conv_alpha.value_or(c.alpha);
  } else {
    c.conv_dim = conv_dim;
    c.conv_alpha = conv_alpha.value_or(1.0);
  }
  if (c.conv_dim && *c.conv_dim == 0) c.conv_dim.reset();
  if (conv_alpha && !conv_dim && c.module == NetworkModule::kKohyaLora) {
    return absl::InvalidArgumentError("network_args conv_alpha is set but conv_dim is not; set conv_dim too");
  }
  return c;
}

}  // namespace lorad::networks
