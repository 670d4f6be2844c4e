// TrainConfig: the training options under kohya sd-scripts' names.
//
// A kohya TOML file is accepted as it is (`--config_file` semantics): its keys,
// either flat or one level deep in sections ([model], [training], ...), then
// `--key value` command-line overrides. An unknown key is a warning naming it; a
// bad value is an INVALID_ARGUMENT error naming the key and the allowed values.
// Defaults are kohya's. Thread-compatible value type.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace lorad::train {

struct TrainConfig {
  // --- model ---
  std::string pretrained_model_name_or_path;  // required
  bool v2 = false;
  bool v_parameterization = false;
  bool sdxl = false;                // informational: the architecture is detected from the checkpoint
  std::string vae;                  // optional separate VAE file
  std::string tokenizer_path;       // ours: bpe_simple_vocab_16e6.txt.gz or a folder with vocab.json + merges.txt
  std::string device = "auto";      // auto | cpu | cuda | cuda:N
  // ours: capture the training step in a CUDA graph per bucket shape and replay
  // it (false: every step eager). Used where the step allows it (trainer.cc says which).
  bool cuda_graphs = true;
  // ours: read the loss (and check it is finite) every N steps, reporting the
  // steps in between then; unset = every step on the CPU, every 10 on CUDA,
  // where a read-back makes the host wait for the GPU.
  std::optional<int64_t> log_every_n_steps;
  bool no_half_vae = false;

  // --- network ---
  std::string network_module = "networks.lora";  // networks.lora | lycoris.kohya
  int64_t network_dim = 4;
  double network_alpha = 1.0;
  std::optional<double> network_dropout;
  std::vector<std::string> network_args;         // "key=value" strings, e.g. conv_dim=8, algo=locon
  std::string network_weights;                   // continue from a LoRA file
  bool network_train_unet_only = false;
  bool network_train_text_encoder_only = false;
  std::optional<double> scale_weight_norms;

  // --- optimizer and schedule ---
  double learning_rate = 2e-6;
  std::optional<double> unet_lr;
  std::optional<double> text_encoder_lr;
  std::string optimizer_type = "AdamW";
  std::vector<std::string> optimizer_args;       // "key=value" strings
  std::string lr_scheduler = "constant";
  double lr_warmup_steps = 0;                    // a count, or a ratio < 1 of the total steps
  int64_t lr_scheduler_num_cycles = 1;
  double lr_scheduler_power = 1.0;
  std::optional<double> lr_scheduler_min_lr_ratio;
  std::vector<std::string> lr_scheduler_args;    // "key=value": the schedule's / class's keyword arguments
  std::string lr_scheduler_type;                 // a scheduler class by module path (kohya); overrides lr_scheduler
  double max_grad_norm = 1.0;                    // 0 disables clipping

  // --- loop ---
  int64_t train_batch_size = 1;
  int64_t max_train_steps = 1600;
  std::optional<int64_t> max_train_epochs;
  int64_t gradient_accumulation_steps = 1;
  std::string mixed_precision = "no";            // no | fp16 | bf16
  bool full_fp16 = false;
  bool full_bf16 = false;
  bool gradient_checkpointing = false;
  std::optional<int64_t> seed;                   // unset: a random seed, recorded in the metadata
  std::optional<int64_t> clip_skip;
  std::optional<int64_t> max_token_length;       // 75 (unset), 150 or 225
  bool cache_latents = false;
  bool cache_latents_to_disk = false;
  bool cache_text_encoder_outputs = false;
  bool cache_text_encoder_outputs_to_disk = false;
  int64_t vae_batch_size = 1;
  double prior_loss_weight = 1.0;

  // --- data-parallel training (accelerate's launch keys; the torchrun
  // environment WORLD_SIZE / RANK / MASTER_ADDR / MASTER_PORT wins when set;
  // see core/train/distributed.h) ---
  int64_t num_processes = 1;                     // ranks in all, across every machine
  int64_t num_machines = 1;
  int64_t machine_rank = 0;                      // this machine's index, 0 hosts the rendezvous
  std::string main_process_ip;                   // rank 0's address; "" = 127.0.0.1
  int64_t main_process_port = 29500;             // rank 0's TCPStore port
  std::optional<double> ddp_timeout;             // minutes a collective may wait (kohya's key); unset = 30

  // --- noise and loss ---
  std::optional<double> noise_offset;
  bool noise_offset_random_strength = false;
  std::optional<double> adaptive_noise_scale;
  std::optional<int64_t> multires_noise_iterations;
  double multires_noise_discount = 0.3;
  std::optional<double> ip_noise_gamma;
  bool ip_noise_gamma_random_strength = false;
  std::optional<double> min_snr_gamma;
  bool scale_v_pred_loss_like_noise_pred = false;
  std::optional<double> v_pred_like_loss;
  bool debiased_estimation_loss = false;
  std::string loss_type = "l2";                  // l2 | l1 | huber | smooth_l1
  std::string huber_schedule = "snr";            // constant | exponential | snr
  double huber_c = 0.1;
  double huber_scale = 1.0;
  std::optional<int64_t> min_timestep;
  std::optional<int64_t> max_timestep;
  bool zero_terminal_snr = false;

  // --- saving ---
  std::string output_dir = "output";
  std::string output_name = "last";
  std::string save_precision = "float";          // float | fp16 | bf16
  std::string save_model_as = "safetensors";
  std::optional<int64_t> save_every_n_steps;
  std::optional<int64_t> save_every_n_epochs;
  std::optional<int64_t> save_last_n_steps;      // keep checkpoints of the last N steps
  std::optional<int64_t> save_last_n_epochs;     // keep the last N epoch checkpoints
  std::optional<int64_t> save_last_n_steps_state;
  std::optional<int64_t> save_last_n_epochs_state;
  bool save_state = false;
  bool save_state_on_train_end = false;
  std::string resume;                            // a state folder written by save_state
  bool no_metadata = false;
  std::string training_comment;
  std::string metadata_title;
  std::string metadata_author;
  std::string metadata_description;
  std::string metadata_license;
  std::string metadata_tags;

  // --- previews ---
  std::string sample_prompts;
  std::optional<int64_t> sample_every_n_steps;
  std::optional<int64_t> sample_every_n_epochs;
  std::string sample_sampler = "ddim";           // any kohya sampler name (core/diffusion/sampler.h SamplerNames)
  double sample_lora_strength = 1.0;             // lorad: preview network multiplier (prompt option --lora_strength)
  bool sample_at_first = false;

  // --- logging (kohya's accelerate trackers; lorad writes TensorBoard only) ---
  std::string logging_dir;                       // set: TensorBoard logs under it (log_with unset or "tensorboard")
  std::string log_with;                          // "" | tensorboard (wandb and all are refused)
  std::string log_prefix;                        // prepended to the run folder's timestamp
  std::string log_tracker_name;                  // the folder under it; "" = network_train

  // --- dataset (the data module reads these) ---
  std::string dataset_config;
  std::string train_data_dir;
  std::string reg_data_dir;
  std::string resolution;                        // "512" or "768,512" (W,H); empty: the model's native size
  bool enable_bucket = false;
  int64_t min_bucket_reso = 256;
  int64_t max_bucket_reso = 1024;
  int64_t bucket_reso_steps = 64;
  bool bucket_no_upscale = false;
  std::string caption_extension = ".caption";
  std::string caption_separator = ",";
  bool shuffle_caption = false;
  int64_t keep_tokens = 0;
  std::string keep_tokens_separator;
  std::string secondary_separator;
  bool enable_wildcard = false;
  std::string caption_prefix;
  std::string caption_suffix;
  double caption_dropout_rate = 0;
  int64_t caption_dropout_every_n_epochs = 0;
  double caption_tag_dropout_rate = 0;
  int64_t token_warmup_min = 1;
  int64_t token_warmup_step = 0;
  bool color_aug = false;
  bool flip_aug = false;
  bool random_crop = false;
  std::string face_crop_aug_range;
  int64_t dataset_repeats = 1;

  // The keys that were set (from the file or the command line), with their
  // values as text: ss_* metadata and the data module read them from here.
  std::map<std::string, std::string> explicitly_set;
  // Warnings raised while parsing (unknown keys, ignored keys, fallbacks).
  std::vector<std::string> warnings;

  // The effective learning rates of the two parameter groups.
  double UnetLr() const { return unet_lr.value_or(learning_rate); }
  double TextEncoderLr() const { return text_encoder_lr.value_or(learning_rate); }
  // "key=value" network_args as a map (keys lower-cased as kohya does not).
  std::map<std::string, std::string> NetworkArgsMap() const;
  // Width and height from `resolution`; {default_size, default_size} when empty.
  absl::StatusOr<std::pair<int64_t, int64_t>> ResolutionWH(int64_t default_size) const;
};

// Parses `--key value` / `--key=value` / bare `--flag` arguments (argv without the
// program name) into an ordered list of (key, value) pairs; a bare boolean flag
// gets the value "true". `--config_file` is returned like any other key.
absl::StatusOr<std::vector<std::pair<std::string, std::string>>> ParseCommandLine(
    const std::vector<std::string>& args);

// Builds the config: the TOML file at `config_file` (may be empty: no file), then
// `overrides` in order. Checks every value and the cross-key rules (e.g. full_bf16
// needs mixed_precision=bf16).
absl::StatusOr<TrainConfig> LoadTrainConfig(const std::filesystem::path& config_file,
                                            const std::vector<std::pair<std::string, std::string>>& overrides);

// The same from TOML text (tests, the daemon's job spec).
absl::StatusOr<TrainConfig> ParseTrainConfig(const std::string& toml_text,
                                             const std::vector<std::pair<std::string, std::string>>& overrides);

// Reads and checks every key like ParseTrainConfig, but skips the cross-key
// rules (ValidateTrainConfig): for a partial config whose model or dataset is
// given elsewhere, e.g. `loractl advise --config` or a sweep's base config.
absl::StatusOr<TrainConfig> ParseTrainOptions(const std::string& toml_text,
                                              const std::vector<std::pair<std::string, std::string>>& overrides);

// Sets one option from its text form (as on the command line). Unknown keys add
// a warning to `config.warnings` and return OK.
absl::Status SetOption(TrainConfig& config, const std::string& key, const std::string& value);

// Cross-key validation (called by Load/Parse; call again after SetOption).
absl::Status ValidateTrainConfig(const TrainConfig& config);

// The effective value of every option (defaults included) as text, keyed by
// kohya name; unset optional values are omitted. For the JobStarted event.
std::map<std::string, std::string> EffectiveOptions(const TrainConfig& config);

// The effective configuration as flat kohya TOML text (parses back to the same config).
std::string ConfigToToml(const TrainConfig& config);

// Every option name the parser knows (sorted), for help text.
std::vector<std::string> KnownOptionNames();
// kohya option names accepted without a field of their own: aliases, flags
// mapped onto an option, keys accepted with a warning, keys with no effect.
std::vector<std::string> ForeignOptionNames();

// The lr_scheduler names the trainer builds (core/optim's LrScheduler), as
// kohya spells them; "adafactor:<initial lr>" is read as "adafactor".
const std::vector<std::string>& LrSchedulerNames();

// The optimizer step plan, as kohya's train_network.py derives max_train_steps from epochs.
struct StepPlan {
  int64_t batches_per_epoch = 0;   // data loader batches per epoch
  int64_t steps_per_epoch = 0;     // optimizer updates per epoch: ceil(batches / accumulation)
  int64_t max_train_steps = 0;     // total optimizer updates
  int64_t num_epochs = 0;          // ceil(max_train_steps / steps_per_epoch)
  int64_t warmup_steps = 0;        // lr_warmup_steps resolved against max_train_steps
};
absl::StatusOr<StepPlan> ComputeStepPlan(const TrainConfig& config, int64_t batches_per_epoch);

}  // namespace lorad::train
