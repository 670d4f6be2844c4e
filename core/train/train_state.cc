#include "core/train/train_state.h"

#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "core/base/json_scan.h"
#include "core/base/status_macros.h"
#include "core/train/png.h"

namespace lorad::train {
namespace {

constexpr char kAdapterFile[] = "adapter.safetensors";
constexpr char kOptimizerFile[] = "optimizer.safetensors";
constexpr char kRngFile[] = "rng.safetensors";
constexpr char kStateFile[] = "train_state.json";

absl::StatusOr<std::map<std::string, torch::Tensor>> ReadTensors(const std::filesystem::path& path,
                                                                 io::Metadata* metadata) {
  auto file = io::SafetensorsFile::Open(path);
  if (!file.ok()) {
    return absl::Status(file.status().code(), absl::StrCat("training state: ", file.status().message()));
  }
  std::map<std::string, torch::Tensor> out;
  for (const std::string& name : (*file)->Names()) {
    ASSIGN_OR_RETURN(torch::Tensor t, (*file)->Get(name));
    out[name] = t.clone();  // own the memory: the mapping closes with the file
  }
  if (metadata) *metadata = (*file)->metadata();
  return out;
}

}  // namespace

absl::Status SaveTrainingState(const std::filesystem::path& dir, const TrainingState& state) {
  std::error_code ec;
  const std::filesystem::path tmp = dir.string() + ".tmp";
  std::filesystem::remove_all(tmp, ec);
  std::filesystem::create_directories(tmp, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", tmp.string(), ": ", ec.message()));

  RETURN_IF_ERROR(io::WriteSafetensors(tmp / kAdapterFile, state.adapter, {}));
  RETURN_IF_ERROR(io::WriteSafetensors(tmp / kOptimizerFile, state.optimizer.tensors, state.optimizer.values));
  io::NamedTensors rng;
  for (const auto& [name, bytes] : state.rng) rng.emplace_back(name, bytes.contiguous());
  RETURN_IF_ERROR(io::WriteSafetensors(tmp / kRngFile, rng, {}));

  nlohmann::json json;
  json["format"] = "lorad-train-state-1";
  json["global_step"] = state.position.global_step;
  json["epoch"] = state.position.data.epoch;
  json["batch_index"] = state.position.data.batch_index;
  json["epoch_loss_sum"] = state.position.epoch_loss_sum;
  json["epoch_loss_count"] = state.position.epoch_loss_count;
  json["seed"] = state.position.seed;
  json["skipped_steps"] = state.position.skipped_steps;
  json["values"] = state.values;
  json["fingerprint"] = state.fingerprint;
  RETURN_IF_ERROR(WriteFileAtomic(tmp / kStateFile, json.dump(2) + "\n"));

  // Swap into place: the old folder (if any) goes only after the new one is complete.
  const std::filesystem::path old = dir.string() + ".old";
  std::filesystem::remove_all(old, ec);
  if (std::filesystem::exists(dir)) std::filesystem::rename(dir, old, ec);
  std::filesystem::rename(tmp, dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot move ", tmp.string(), " to ", dir.string(), ": ", ec.message()));
  std::filesystem::remove_all(old, ec);
  return absl::OkStatus();
}

absl::StatusOr<TrainingState> LoadTrainingState(const std::filesystem::path& dir) {
  if (!std::filesystem::is_directory(dir)) {
    return absl::NotFoundError(absl::StrCat("resume: state folder not found: ", dir.string(),
                                            " (give a folder written with save_state, e.g. <output_dir>/<name>-state)"));
  }
  TrainingState state;
  std::ifstream in(dir / kStateFile);
  if (!in) return absl::NotFoundError(absl::StrCat("resume: ", (dir / kStateFile).string(), " is missing"));
  std::stringstream buffer;
  buffer << in.rdbuf();
  if (ScanJson(buffer.str()).depth > kMaxJsonDepth) {
    return absl::DataLossError(absl::StrCat("resume: ", (dir / kStateFile).string(), " is nested more than ",
                                            kMaxJsonDepth, " levels deep; it is not a lorad training state"));
  }
  try {
    const nlohmann::json json = nlohmann::json::parse(buffer.str());
    if (json.value("format", "") != "lorad-train-state-1") {
      return absl::DataLossError(absl::StrCat("resume: ", dir.string(), " is not a lorad training state"));
    }
    state.position.global_step = json.at("global_step").get<int64_t>();
    state.position.data.epoch = json.at("epoch").get<int>();
    state.position.data.batch_index = json.at("batch_index").get<int64_t>();
    state.position.epoch_loss_sum = json.at("epoch_loss_sum").get<double>();
    state.position.epoch_loss_count = json.at("epoch_loss_count").get<int64_t>();
    state.position.seed = json.at("seed").get<int64_t>();
    state.position.skipped_steps = json.value("skipped_steps", int64_t{0});
    state.values = json.at("values").get<std::map<std::string, std::string>>();
    state.fingerprint = json.at("fingerprint").get<std::map<std::string, std::string>>();
  } catch (const nlohmann::json::exception& e) {
    return absl::DataLossError(absl::StrCat("resume: ", (dir / kStateFile).string(), " is corrupt: ", e.what()));
  }
  ASSIGN_OR_RETURN(auto adapter, ReadTensors(dir / kAdapterFile, nullptr));
  for (auto& [name, t] : adapter) state.adapter.emplace_back(name, t);
  io::Metadata optimizer_values;
  ASSIGN_OR_RETURN(auto optimizer, ReadTensors(dir / kOptimizerFile, &optimizer_values));
  for (auto& [name, t] : optimizer) state.optimizer.tensors.emplace_back(name, t);
  state.optimizer.values = std::map<std::string, std::string>(optimizer_values.begin(), optimizer_values.end());
  ASSIGN_OR_RETURN(state.rng, ReadTensors(dir / kRngFile, nullptr));
  return state;
}

}  // namespace lorad::train
