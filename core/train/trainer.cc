#include "core/train/trainer.h"

#include <chrono>
#include <cmath>
#include <random>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/base/clock.h"
#include "core/base/logging.h"
#include "core/base/status_macros.h"
#include "core/diffusion/loss.h"
#include "core/diffusion/noise.h"
#include "core/diffusion/sampler.h"
#include "core/networks/lora_network.h"
#include "core/networks/metadata.h"
#include "core/models/base_model.h"
#include "core/optim/lr_scheduler.h"
#include "core/optim/optimizer.h"
#include "core/optim/optimizer_warnings.h"
#include "core/train/autocast.h"
#include "core/train/batch_prefetch.h"
#include "core/train/checkpoint_files.h"
#include "core/train/loss_scaler.h"
#include "core/train/model_bundle.h"
#include "core/common/out_of_memory.h"
#include "core/train/cuda_tuning.h"
#include "core/train/distributed.h"
#include "core/train/out_of_memory_report.h"
#include "core/train/previews.h"
#include "core/train/sample_prompts.h"
#include "core/train/step_control.h"
#include "core/train/step_graphs.h"
#include "core/train/train_state.h"

namespace lorad::train {
namespace {

using Clock = std::chrono::steady_clock;

int64_t RandomSeed() {
  std::random_device rd;
  return static_cast<int64_t>(rd() & 0x7fffffff);
}

at::Generator SeededGenerator(uint64_t seed) {
  at::Generator g = at::detail::createCPUGenerator(seed);
  return g;
}

// Everything one run holds; the steps of Train() are its methods.
class Run {
 public:
  Run(const TrainConfig& config, const TrainInputs& inputs, TrainObserver* observer,
      const CancellationToken* cancel, const TrainOptions& options)
      : config_(config), inputs_(inputs), cancel_(cancel), options_(options),
        scaler_(options.loss_scale_init, options.loss_scale_growth_interval), dist_(inputs.distributed) {
    if (observer) observers_.Add(observer);
  }

  absl::StatusOr<TrainResult> Execute();

 private:
  // One optimizer step's micro-batches so far.
  struct StepAccumulator {
    int64_t micro = 0;
    // The micro-batch losses summed in float64 on the device, read back with
    // the other steps of the log interval (ReportPendingSteps).
    torch::Tensor loss_sum;
    int64_t images = 0;
    bool stepped = false;     // the graph step has already run the optimizer
    torch::Tensor grad_norm;  // 0-dim, on the device; undefined when not computed
  };

  // A completed step whose loss and gradient norm are still on the device,
  // with what its report needs from the host at the time it ran.
  struct PendingStep {
    int64_t step = 0;
    int64_t epoch = 0;
    int64_t micro = 1;
    torch::Tensor loss_sum;
    torch::Tensor grad_norm;
    bool skipped = false;
    std::vector<GroupLr> lrs;
    std::optional<MaxNormReport> max_norm;
    int64_t steps_this_process = 0;
    int64_t images_this_process = 0;
    double elapsed_s = 0;
  };

  // What one input shape's graph step reads and writes: filled before every
  // run, at the same addresses for all of them.
  struct StaticStep {
    data::Batch batch;  // size conditioning and loss weights on the device
    torch::Tensor latents;
    diffusion::NoisyBatch noisy;
    text::TextConditioning cond;
    torch::Tensor loss;       // float64 []
    torch::Tensor grad_norm;  // float32 []
    std::string key;          // the shape: latents, context and pooled sizes
  };

  // Data-parallel (dist_ set): only rank 0 writes files and previews.
  bool IsMain() const { return dist_ == nullptr || dist_->is_main(); }
  absl::Status SetupDistributed();
  absl::Status VerifyReplicas(const char* when);
  absl::Status AgreeOnStep(StepAccumulator& step, double* loss_sum);

  absl::Status Setup();
  absl::Status SetupPrecision();
  absl::Status ParseNetworkOptions();
  absl::Status SetupTextEncoderDiskCache();
  std::string TextEncoderIdentity() const;
  absl::Status ChooseTrainedParts();
  absl::Status SetupNetworkAndOptimizer();
  std::vector<optim::ParamGroup> ParameterGroups() const;
  absl::Status RestoreState();
  absl::StatusOr<torch::Tensor> MicroBatchLoss(const data::Batch& batch);
  // The dtype the U-Net's layers compute in: autocast's, else the frozen weights'.
  torch::ScalarType ComputeDtype() const { return autocast_ ? autocast_dtype_ : weight_dtype_; }
  absl::StatusOr<torch::Tensor> ShardLoss(const data::Batch& batch);
  torch::Tensor PerSampleLoss(const data::Batch& batch, const torch::Tensor& latents,
                              const diffusion::NoisyBatch& noisy, const text::TextConditioning& cond);
  absl::StatusOr<text::TextConditioning> Conditioning(const std::vector<std::string>& captions);
  absl::Status OptimizerStep(bool* skipped, torch::Tensor* grad_norm);
  std::string GraphStepObstacle() const;
  absl::Status SetupStepGraphs();
  absl::Status GraphStep(const data::Batch& batch, StepAccumulator& step);
  StaticStep& StaticInputs(const data::Batch& batch, const torch::Tensor& latents, const diffusion::NoisyBatch& noisy,
                           const text::TextConditioning& cond);
  bool MaxNormEnabled() const { return config_.scale_weight_norms && *config_.scale_weight_norms != 0; }
  absl::Status SaveLora(const std::filesystem::path& path, bool is_final);
  absl::Status SaveState(const std::filesystem::path& dir);
  absl::Status SaveStepCheckpoints();
  absl::Status SaveEpochCheckpoints(int64_t epoch);
  absl::Status RenderSamples();
  absl::StatusOr<TrainingState> CaptureState() const;
  absl::StatusOr<io::Metadata> BuildMetadata() const;
  std::map<std::string, std::string> Fingerprint() const;
  void Warn(const std::string& code, const std::string& message);

  // The loop (Execute's parts, in order).
  void ReportStart();
  absl::Status TrainLoop();
  absl::Status TrainEpoch(int64_t epoch, bool& done);
  absl::Status AccumulateMicroBatch(const data::Batch& batch, bool last_of_step, StepAccumulator& step);
  absl::Status CompleteStep(int64_t epoch, const data::BatchIterator& iterator, StepAccumulator& step);
  absl::Status ReportPendingSteps();
  void ReportStep(const PendingStep& pending, double loss, double grad_norm);
  absl::Status AfterStep(bool done);
  absl::Status StopIfRequested(bool done);
  absl::Status EndEpoch(int64_t epoch, bool done);
  absl::Status SaveFinal();
  // Runs `fn`, turning a LibTorch exception into a status (out of memory names the knobs to turn).
  template <typename Fn>
  absl::Status Guarded(Fn&& fn) {
    try {
      return fn();
    } catch (const c10::Error& e) {
      return StepError(e);
    }
  }
  absl::Status StepError(const c10::Error& e) const;
  // Reports the end to the observers and returns `status` (DATA_LOSS names the last good LoRA).
  absl::Status Fail(absl::Status status);
  absl::Status Finish(absl::Status status);

  TrainConfig config_;
  TrainInputs inputs_;
  const CancellationToken* cancel_;
  TrainOptions options_;
  ObserverList observers_;
  std::shared_ptr<spdlog::logger> log_ = Logger("train");

  torch::Device device_ = torch::kCPU;
  torch::ScalarType weight_dtype_ = torch::kFloat32;
  torch::ScalarType network_dtype_ = torch::kFloat32;
  bool autocast_ = false;
  torch::ScalarType autocast_dtype_ = torch::kBFloat16;
  bool use_scaler_ = false;
  // Which parts are trained, and which have adapter modules (a part with lr 0
  // continued from network_weights keeps its loaded modules, frozen).
  bool train_unet_ = true;
  bool train_text_ = false;
  bool adapt_unet_ = true;
  bool adapt_text_ = false;

  std::unique_ptr<ModelBundle> model_;
  networks::NetworkConfig net_config_;
  std::unique_ptr<networks::LoraNetwork> network_;
  std::unique_ptr<optim::Optimizer> optimizer_;
  std::optional<optim::LrScheduler> scheduler_;
  std::vector<std::string> group_names_;
  std::optional<MaxNormReport> max_norm_;  // the last step's max-norm pass (scale_weight_norms)
  DynamicLossScaler scaler_;
  std::unique_ptr<diffusion::NoiseSchedule> schedule_;
  diffusion::NoiseOptions noise_options_;
  diffusion::LossWeighting weighting_;
  diffusion::LossType loss_type_ = diffusion::LossType::kL2;
  diffusion::HuberOptions huber_;
  std::map<std::string, text::TextConditioning> text_cache_;
  TextEncodeFn disk_text_cache_;  // cache_text_encoder_outputs_to_disk
  std::vector<SamplePrompt> prompts_;

  // Generators: noise/timesteps (+ pyramid draws), VAE posterior samples, adapter dropouts.
  at::Generator noise_gen_ = SeededGenerator(0);
  at::Generator vae_gen_ = SeededGenerator(0);
  at::Generator dropout_gen_ = SeededGenerator(0);
  diffusion::UniformSource uniform_;

  StepPlan plan_;
  RunPosition pos_;
  int64_t resumed_from_step_ = 0;
  int64_t steps_this_process_ = 0;
  int64_t images_this_process_ = 0;
  int64_t accumulation_ = 1;  // micro-batches per optimizer step
  int64_t log_every_ = 1;     // steps per loss read-back (log_every_n_steps)
  std::vector<PendingStep> pending_;
  // Set: every step runs the graph-capturable body (static inputs, graph-safe
  // optimizer, clipping on the device) through it.
  std::unique_ptr<StepGraphs> graphs_;
  std::map<std::string, StaticStep> statics_;
  Clock::time_point run_start_;
  SkipStreak skip_streak_;
  int64_t started_at_ = 0;  // unix seconds
  std::pair<int64_t, int64_t> resolution_{512, 512};
  CheckpointRegistry checkpoints_;
  TrainResult result_;
  std::string last_lora_;

  DistributedContext* dist_ = nullptr;
  std::unique_ptr<GradientReducer> reducer_;
  CancellationToken agreed_cancel_;  // the ranks' cancel requests, agreed at every step
};

void Run::Warn(const std::string& code, const std::string& message) {
  log_->warn("{}", message);
  observers_.OnWarning(code, message);
}

absl::Status Run::SetupPrecision() {
  ASSIGN_OR_RETURN(device_, ResolveDevice(config_.device));
  // One GPU per local rank, unless the config names one ("cuda:1").
  if (dist_ != nullptr && device_.is_cuda() && config_.device.find(':') == std::string::npos) {
    device_ = torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(dist_->spec().local_rank %
                                                                        std::max<int64_t>(1, torch::cuda::device_count())));
  }
  const std::string& mp = config_.mixed_precision;
  if (mp == "fp16") {
    use_scaler_ = true;
    if (device_.is_cuda()) {
      weight_dtype_ = torch::kFloat16;
      autocast_ = true;
      autocast_dtype_ = torch::kFloat16;
    } else {
      Warn("fp16_on_cpu",
           "mixed_precision=fp16 has no CPU kernels: computing in float32 (the fp16 loss scaler still runs); "
           "use bf16 on CPU");
    }
    if (config_.full_fp16) network_dtype_ = device_.is_cuda() ? torch::kFloat16 : torch::kFloat32;
  } else if (mp == "bf16") {
    autocast_ = true;
    autocast_dtype_ = torch::kBFloat16;
    // CPU autocast keeps the frozen weights in float32 (its bf16 op list covers
    // matmul/conv); on CUDA they are stored in bf16 as kohya does.
    weight_dtype_ = device_.is_cuda() ? torch::kBFloat16 : torch::kFloat32;
    if (config_.full_bf16) network_dtype_ = torch::kBFloat16;
  }
  return absl::OkStatus();
}

// kohya's prepare_optimizer_params (networks/lora.py) drops a parameter group
// whose lr is 0 ("NO LR skipping!"): that part is never updated. Its fresh
// modules would only add kohya's zero-initialised delta, so they are not
// created, trained or saved. Modules that network_weights brings for such a
// part stay, frozen, and are saved as loaded (kohya keeps and saves them too).
absl::Status Run::ChooseTrainedParts() {
  const double te_lr = config_.TextEncoderLr(), unet_lr = config_.UnetLr();
  const bool wants_text = !config_.network_train_unet_only;
  const bool wants_unet = !config_.network_train_text_encoder_only;
  train_text_ = wants_text && te_lr != 0;
  train_unet_ = wants_unet && unet_lr != 0;
  if (!train_text_ && !train_unet_) {
    return absl::InvalidArgumentError(absl::StrCat(
        "nothing to train: the learning rate of every trained part is 0 (unet_lr/learning_rate = ", unet_lr,
        wants_text ? absl::StrCat(", text_encoder_lr = ", te_lr) : std::string(),
        "); kohya drops parameter groups with lr 0. Set unet_lr or learning_rate above 0"));
  }
  const bool continued = !config_.network_weights.empty();
  adapt_text_ = train_text_ || (wants_text && continued);
  adapt_unet_ = train_unet_ || (wants_unet && continued);
  if (wants_text && !train_text_) {
    Warn("text_encoder_lr_zero",
         absl::StrCat("text_encoder_lr is 0: the text encoder is not trained, as in kohya (its parameter group is "
                      "dropped); ",
                      continued ? "the text-encoder modules of network_weights stay as loaded"
                                : "no text-encoder modules are created or saved",
                      ". Set network_train_unet_only = true to say so"));
  }
  if (wants_unet && !train_unet_) {
    Warn("unet_lr_zero", absl::StrCat("unet_lr is 0: the U-Net is not trained, as in kohya (its parameter group is "
                                      "dropped); ",
                                      continued ? "the U-Net modules of network_weights stay as loaded"
                                                : "no U-Net modules are created or saved"));
  }
  return absl::OkStatus();
}

absl::Status Run::Setup() {
  started_at_ = NowUnixMs() / 1000;
  for (const std::string& w : config_.warnings) Warn("config", w);
  if (inputs_.source == nullptr) return absl::InvalidArgumentError("Train: no batch source given");
  if (!config_.seed) config_.seed = RandomSeed();
  pos_.seed = *config_.seed;
  std::error_code ec;
  std::filesystem::create_directories(config_.output_dir, ec);
  if (ec) {
    return absl::PermissionDeniedError(absl::StrCat("cannot create output_dir ", config_.output_dir, ": ",
                                                    ec.message()));
  }
  RETURN_IF_ERROR(SetupPrecision());
  if (config_.cache_text_encoder_outputs_to_disk) config_.cache_text_encoder_outputs = true;
  RETURN_IF_ERROR(ChooseTrainedParts());

  if (!config_.sample_prompts.empty()) {
    ASSIGN_OR_RETURN(prompts_, LoadSamplePrompts(config_.sample_prompts));
  }
  RETURN_IF_ERROR(CheckPreviewSamplers(config_.sample_sampler, prompts_));

  // The checkpoint's own facts (v-prediction, zero terminal SNR) from its
  // header, before the (slow) model load; an unreadable file is left to the loader.
  if (auto facts = models::ReadBaseModelFacts(config_.pretrained_model_name_or_path); facts.ok()) {
    std::vector<std::string> notes;
    RETURN_IF_ERROR(models::ApplyBaseModelFacts(*facts, config_, &notes));
    for (const std::string& note : notes) Warn("base_model", note);
  }
  // Network options are checked before the (slow) model load.
  RETURN_IF_ERROR(ParseNetworkOptions());

  ModelBundleOptions model_options;
  model_options.device = device_;
  model_options.weight_dtype = weight_dtype_;
  model_options.vae_dtype = (device_.is_cuda() && weight_dtype_ != torch::kFloat32 && !config_.no_half_vae)
                                ? weight_dtype_
                                : torch::kFloat32;
  ASSIGN_OR_RETURN(model_, ModelBundle::Load(config_, model_options));
  if (model_->is_sdxl() && config_.clip_skip && *config_.clip_skip > 1) {
    Warn("clip_skip_sdxl", "clip_skip has no effect on SDXL (it always uses the penultimate layers)");
  }
  ASSIGN_OR_RETURN(resolution_, config_.ResolutionWH(model_->native_resolution()));
  model_->unet().set_gradient_checkpointing(config_.gradient_checkpointing);
  TuneForCuda(model_->unet(), device_);

  noise_gen_ = SeededGenerator(static_cast<uint64_t>(*config_.seed));
  vae_gen_ = SeededGenerator(static_cast<uint64_t>(*config_.seed) + 1);
  dropout_gen_ = SeededGenerator(static_cast<uint64_t>(*config_.seed) + 2);
  uniform_ = diffusion::TorchUniformSource(noise_gen_);

  diffusion::ScheduleOptions schedule_options;
  schedule_options.zero_terminal_snr = config_.zero_terminal_snr;
  schedule_ = std::make_unique<diffusion::NoiseSchedule>(schedule_options, device_);
  noise_options_.noise_offset = config_.noise_offset;
  noise_options_.noise_offset_random_strength = config_.noise_offset_random_strength;
  noise_options_.adaptive_noise_scale = config_.adaptive_noise_scale;
  noise_options_.multires_noise_iterations = config_.multires_noise_iterations.value_or(0);
  noise_options_.multires_noise_discount = config_.multires_noise_discount;
  noise_options_.min_timestep = config_.min_timestep;
  noise_options_.max_timestep = config_.max_timestep;
  noise_options_.ip_noise_gamma = config_.ip_noise_gamma;
  noise_options_.ip_noise_gamma_random_strength = config_.ip_noise_gamma_random_strength;
  RETURN_IF_ERROR(noise_options_.Validate(schedule_->num_train_timesteps()));
  weighting_.prediction =
      config_.v_parameterization ? diffusion::PredictionType::kVPrediction : diffusion::PredictionType::kEpsilon;
  weighting_.min_snr_gamma = config_.min_snr_gamma;
  weighting_.scale_v_pred_loss_like_noise_pred = config_.scale_v_pred_loss_like_noise_pred;
  weighting_.v_pred_like_loss = config_.v_pred_like_loss;
  weighting_.debiased_estimation_loss = config_.debiased_estimation_loss;
  ASSIGN_OR_RETURN(loss_type_, diffusion::ParseLossType(config_.loss_type));
  ASSIGN_OR_RETURN(huber_.schedule, diffusion::ParseHuberSchedule(config_.huber_schedule));
  huber_.huber_c = config_.huber_c;
  huber_.huber_scale = config_.huber_scale;

  RETURN_IF_ERROR(SetupNetworkAndOptimizer());
  RETURN_IF_ERROR(SetupDistributed());
  accumulation_ = std::max<int64_t>(1, config_.gradient_accumulation_steps);
  log_every_ = config_.log_every_n_steps.value_or(device_.is_cuda() ? 10 : 1);
  RETURN_IF_ERROR(SetupStepGraphs());

  ASSIGN_OR_RETURN(plan_, ComputeStepPlan(config_, inputs_.source->num_batches_per_epoch()));
  optim::SchedulerOptions sched;
  sched.name = config_.lr_scheduler;
  sched.warmup_steps = config_.lr_warmup_steps;
  sched.total_steps = plan_.max_train_steps;
  sched.num_cycles = static_cast<double>(config_.lr_scheduler_num_cycles);
  sched.power = config_.lr_scheduler_power;
  sched.min_lr_ratio = config_.lr_scheduler_min_lr_ratio.value_or(0.0);
  sched.lr_init = optimizer_->initial_lr();
  sched.type = config_.lr_scheduler_type;
  sched.args = config_.lr_scheduler_args;
  sched.num_groups = optimizer_->num_groups();
  auto scheduler = optim::LrScheduler::Create(sched);
  if (!scheduler.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        config_.lr_scheduler_type.empty() ? "config key 'lr_scheduler': " : "config key 'lr_scheduler_type': ",
        scheduler.status().message()));
  }
  scheduler_ = *scheduler;
  for (const std::string& warning : scheduler_->warnings()) Warn("lr_scheduler_type", warning);
  if (optimizer_->UsesInternalLr() && scheduler_->name() != "adafactor") {
    Warn("adafactor_schedule", "Adafactor with relative_step computes its own lr; lr_scheduler is ignored");
  }
  {
    // kohya's get_optimizer advice for this optimizer choice (lr near 1 for D-Adaptation, ...).
    optim::OptimizerWarningInputs advice;
    advice.optimizer = std::string(optimizer_->name());
    advice.optimizer_args = config_.optimizer_args;
    advice.learning_rate = config_.learning_rate;
    advice.unet_lr = config_.unet_lr;
    advice.text_encoder_lr = config_.text_encoder_lr;
    for (int g = 0; g < optimizer_->num_groups(); ++g) advice.group_lrs.push_back(optimizer_->base_lr(g));
    advice.lr_scheduler = config_.lr_scheduler;
    advice.lr_warmup_steps = config_.lr_warmup_steps;
    advice.max_grad_norm = config_.max_grad_norm;
    for (const optim::OptimizerWarning& w : optim::OptimizerWarnings(advice)) Warn(w.code, w.message);
  }

  if (config_.cache_latents) {
    if (inputs_.cache_latents) {
      at::Generator cache_gen = SeededGenerator(static_cast<uint64_t>(*config_.seed) + 3);
      LatentEncodeFn encoder = [this, cache_gen](const torch::Tensor& images) -> absl::StatusOr<torch::Tensor> {
        try {
          return model_->EncodeImages(images, cache_gen).cpu();
        } catch (const c10::Error& e) {
          return absl::InternalError(absl::StrCat("VAE encode: ", e.what_without_backtrace()));
        }
      };
      RETURN_IF_ERROR(inputs_.cache_latents(encoder, model_->vae_identity()));
    } else {
      Warn("cache_latents", "this batch source cannot cache latents; encoding every batch instead");
    }
  }
  RETURN_IF_ERROR(SetupTextEncoderDiskCache());
  if (!config_.resume.empty()) RETURN_IF_ERROR(RestoreState());
  // A metadata value the LoRA file cannot hold fails now, not at the first save.
  RETURN_IF_ERROR(BuildMetadata().status());
  return absl::OkStatus();
}

// Everything that changes the frozen encoders' outputs for a caption.
std::string Run::TextEncoderIdentity() const {
  std::error_code ec;
  const std::filesystem::path path(config_.pretrained_model_name_or_path);
  const auto size = std::filesystem::file_size(path, ec);
  return absl::StrCat(std::filesystem::absolute(path).string(), ":", ec ? 0 : size, ":", model_->arch_name(),
                      ":clip_skip=", config_.clip_skip.value_or(0),
                      ":max_token_length=", config_.max_token_length.value_or(75), ":",
                      c10::toString(weight_dtype_));
}

absl::Status Run::SetupTextEncoderDiskCache() {
  // Text-encoder modules (trained, or frozen from network_weights) change the outputs.
  if (!config_.cache_text_encoder_outputs_to_disk || adapt_text_) return absl::OkStatus();
  if (!inputs_.cache_text_encoder_outputs) {
    Warn("cache_text_encoder_outputs_to_disk",
         "cache_text_encoder_outputs_to_disk: this batch source has no disk cache for text-encoder outputs; they "
         "are kept in memory only");
    return absl::OkStatus();
  }
  TextEncodeFn encode = [this](const std::vector<std::string>& captions)
      -> absl::StatusOr<std::map<std::string, torch::Tensor>> {
    torch::NoGradGuard no_grad;
    try {
      ASSIGN_OR_RETURN(text::TextConditioning c, model_->EncodeText(captions));
      std::map<std::string, torch::Tensor> out{{"context", c.context.cpu()}};
      if (c.pooled.defined()) out["pooled"] = c.pooled.cpu();
      return out;
    } catch (const c10::Error& e) {
      return absl::InternalError(absl::StrCat("text encode for the cache: ", e.what_without_backtrace()));
    }
  };
  auto cache = inputs_.cache_text_encoder_outputs(TextEncoderIdentity(), std::move(encode));
  if (!cache.ok()) {
    return absl::Status(cache.status().code(), absl::StrCat("config key 'cache_text_encoder_outputs_to_disk': ",
                                                            cache.status().message()));
  }
  disk_text_cache_ = std::move(*cache);
  return absl::OkStatus();
}

absl::Status Run::ParseNetworkOptions() {
  ASSIGN_OR_RETURN(net_config_, networks::ParseNetworkConfig(networks::NetworkInputOf(config_)));
  // kohya: scale_weight_norms = 0 (or unset) disables max-norm.
  if (MaxNormEnabled()) {
    if (!(*config_.scale_weight_norms > 0) || !std::isfinite(*config_.scale_weight_norms)) {
      return absl::InvalidArgumentError(absl::StrCat("config key 'scale_weight_norms' must be a positive number, got ",
                                                     *config_.scale_weight_norms, " (0 disables it)"));
    }
  }
  return absl::OkStatus();
}

// kohya's prepare_optimizer_params: per part (text encoder first, then U-Net)
// one group, split by LoRA+ into the "up" tensors at lr x ratio ("<part>_plus")
// and the rest. The scheduler multiplies every group's base lr, so the ratio holds.
std::vector<optim::ParamGroup> Run::ParameterGroups() const {
  std::vector<optim::ParamGroup> groups;
  auto add_part = [&](const std::string& name, bool text_encoder, double lr, std::optional<double> ratio) {
    if (!ratio) {
      auto params = text_encoder ? network_->TextEncoderParameters() : network_->UnetParameters();
      if (!params.empty() && lr != 0) groups.push_back({name, params, lr});
      return;
    }
    auto rest = network_->NonUpParameters(text_encoder);
    auto up = network_->UpParameters(text_encoder);
    // kohya drops any group whose lr is 0, a LoRA+ group at lr x ratio included.
    if (!rest.empty() && lr != 0) groups.push_back({name, rest, lr});
    if (!up.empty() && lr * *ratio != 0) groups.push_back({absl::StrCat(name, "_plus"), up, lr * *ratio});
  };
  if (train_text_) {
    add_part("text_encoder", true, config_.TextEncoderLr(),
             net_config_.loraplus_text_encoder_lr_ratio ? net_config_.loraplus_text_encoder_lr_ratio
                                                        : net_config_.loraplus_lr_ratio);
  }
  if (train_unet_) {
    add_part("unet", false, config_.UnetLr(),
             net_config_.loraplus_unet_lr_ratio ? net_config_.loraplus_unet_lr_ratio : net_config_.loraplus_lr_ratio);
  }
  return groups;
}

absl::Status Run::SetupNetworkAndOptimizer() {
  ASSIGN_OR_RETURN(auto targets, model_->NetworkTargets(adapt_unet_, adapt_text_, net_config_.TargetsConvBlocks()));
  if (targets.empty()) return absl::FailedPreconditionError("the network found no layers to adapt in this model");
  at::Generator init_gen = SeededGenerator(static_cast<uint64_t>(*config_.seed));
  ASSIGN_OR_RETURN(network_, networks::LoraNetwork::Create(net_config_, targets, init_gen));
  if (!config_.network_weights.empty()) {
    auto loaded = network_->LoadWeights(config_.network_weights);
    if (!loaded.ok()) {
      return absl::Status(loaded.code(), absl::StrCat("config key 'network_weights' (", config_.network_weights,
                                                      "): ", loaded.message()));
    }
  }
  network_->To(device_, network_dtype_);
  network_->SetDropoutGenerator(dropout_gen_);
  network_->Apply();
  network_->Train(true);

  // Only the optimizer's parameters take gradients (frozen continued modules do not).
  for (auto& p : network_->UnetParameters()) p.set_requires_grad(false);
  for (auto& p : network_->TextEncoderParameters()) p.set_requires_grad(false);
  std::vector<optim::ParamGroup> groups = ParameterGroups();
  for (const auto& g : groups) {
    group_names_.push_back(g.name);
    for (const auto& p : g.params) p.set_requires_grad(true);
  }
  auto optimizer = optim::CreateOptimizer(config_.optimizer_type, config_.optimizer_args, std::move(groups));
  if (!optimizer.ok()) {
    return absl::Status(optimizer.status().code(),
                        absl::StrCat("config key 'optimizer_type'/'optimizer_args': ", optimizer.status().message()));
  }
  optimizer_ = std::move(*optimizer);
  return absl::OkStatus();
}

std::map<std::string, std::string> Run::Fingerprint() const {
  return {{"network_module", config_.network_module},
          {"network_dim", std::to_string(config_.network_dim)},
          {"network_args", absl::StrJoin(config_.network_args, " ")},
          {"optimizer_type", config_.optimizer_type},
          {"model_arch", model_->arch_name()},
          {"network_train_unet_only", config_.network_train_unet_only ? "true" : "false"},
          {"adapted_parts", absl::StrCat(adapt_unet_ ? "unet" : "", adapt_text_ ? "+text_encoder" : "")}};
}

absl::StatusOr<TrainingState> Run::CaptureState() const {
  TrainingState state;
  state.position = pos_;
  // The adapters' own dtype (float32, or bf16 with full_bf16) keeps them exactly.
  state.adapter = network_->StateDict(network_dtype_);
  ASSIGN_OR_RETURN(state.optimizer, optimizer_->SaveState());
  state.rng["noise"] = noise_gen_.get_state();
  state.rng["vae"] = vae_gen_.get_state();
  state.rng["dropout"] = dropout_gen_.get_state();
  state.values = scaler_.SaveState();
  // Data-parallel facts: a resume compares them (RestoreState).
  state.values["world_size"] = std::to_string(dist_ ? dist_->world_size() : 1);
  state.values["global_batch_size"] =
      std::to_string(config_.train_batch_size * (dist_ ? dist_->world_size() : 1));
  state.fingerprint = Fingerprint();
  return state;
}

absl::Status Run::RestoreState() {
  ASSIGN_OR_RETURN(TrainingState state, LoadTrainingState(config_.resume));
  const auto expected = Fingerprint();
  for (const auto& [key, value] : expected) {
    auto it = state.fingerprint.find(key);
    if (it != state.fingerprint.end() && it->second != value) {
      return absl::FailedPreconditionError(absl::StrCat("resume: the state was saved with ", key, " = \"",
                                                        it->second, "\" but this run has \"", value,
                                                        "\"; resume with the same settings"));
    }
  }
  std::map<std::string, torch::Tensor> adapter(state.adapter.begin(), state.adapter.end());
  RETURN_IF_ERROR(network_->LoadStateDict(adapter));
  RETURN_IF_ERROR(optimizer_->LoadState(state.optimizer));
  RETURN_IF_ERROR(scaler_.LoadState(state.values));
  try {
    noise_gen_.set_state(state.rng.at("noise"));
    vae_gen_.set_state(state.rng.at("vae"));
    dropout_gen_.set_state(state.rng.at("dropout"));
  } catch (const std::exception& e) {
    return absl::DataLossError(absl::StrCat("resume: RNG states are missing or corrupt: ", e.what()));
  }
  pos_ = state.position;
  config_.seed = pos_.seed;
  resumed_from_step_ = pos_.global_step;
  // Another world size. The position counts global batches of the saved
  // run's size: with the same global batch (train_batch_size x world size)
  // the data order continues exactly; with another one, the saved epoch's
  // remaining batches mean other images, so the run goes on from the start of
  // the next epoch (the step count, schedule and RNG states carry on).
  const int64_t world = dist_ ? dist_->world_size() : 1;
  const int64_t global_batch = config_.train_batch_size * world;
  auto saved_world = state.values.find("world_size");
  auto saved_batch = state.values.find("global_batch_size");
  int64_t old_world = 1, old_batch = global_batch;
  if (saved_world != state.values.end()) (void)absl::SimpleAtoi(saved_world->second, &old_world);
  if (saved_batch != state.values.end()) (void)absl::SimpleAtoi(saved_batch->second, &old_batch);
  if (old_world != world || old_batch != global_batch) {
    std::string message = absl::StrCat("resume: the state was saved by ", old_world, old_world == 1 ? " process" : " processes",
                                       " with a global batch of ", old_batch, "; this run has ", world,
                                       world == 1 ? " process" : " processes", " and a global batch of ",
                                       global_batch, ". ");
    if (old_batch == global_batch) {
      absl::StrAppend(&message, "The global batch is the same, so the data order continues exactly");
    } else if (pos_.data.batch_index > 0) {
      absl::StrAppend(&message, "The epoch's batches differ, so training goes on from the start of epoch ",
                      pos_.data.epoch + 1, " (the rest of epoch ", pos_.data.epoch,
                      " is skipped); keep train_batch_size x processes equal to continue exactly");
      pos_.data = {pos_.data.epoch + 1, 0};
      pos_.epoch_loss_sum = 0;
      pos_.epoch_loss_count = 0;
    } else {
      absl::StrAppend(&message, "The state is at an epoch boundary, so epoch ", pos_.data.epoch,
                      " is planned with the new global batch");
    }
    Warn("resume_world_size", message);
  }
  result_.skipped_steps = pos_.skipped_steps;
  log_->info("resumed from {} at step {} (epoch {}, batch {})", config_.resume, pos_.global_step,
             pos_.data.epoch, pos_.data.batch_index);
  return absl::OkStatus();
}

absl::StatusOr<text::TextConditioning> Run::Conditioning(const std::vector<std::string>& captions) {
  if (train_text_) return model_->EncodeText(captions);
  // Frozen encoders: no graph, and each caption's output is computed once when caching.
  torch::NoGradGuard no_grad;
  if (!config_.cache_text_encoder_outputs) return model_->EncodeText(captions);
  if (disk_text_cache_) {
    ASSIGN_OR_RETURN(auto outputs, disk_text_cache_(captions));
    auto context = outputs.find("context");
    if (context == outputs.end()) {
      return absl::DataLossError("the text-encoder disk cache returned no \"context\"; delete the cache folder");
    }
    text::TextConditioning out;
    out.context = context->second.to(device_);
    if (auto pooled = outputs.find("pooled"); pooled != outputs.end()) out.pooled = pooled->second.to(device_);
    return out;
  }
  std::vector<std::string> missing;
  for (const auto& c : captions) {
    if (!text_cache_.count(c)) missing.push_back(c);
  }
  if (!missing.empty()) {
    ASSIGN_OR_RETURN(text::TextConditioning fresh, model_->EncodeText(missing));
    for (size_t i = 0; i < missing.size(); ++i) {
      text::TextConditioning one;
      one.context = fresh.context[static_cast<int64_t>(i)].unsqueeze(0).clone();
      if (fresh.pooled.defined()) one.pooled = fresh.pooled[static_cast<int64_t>(i)].unsqueeze(0).clone();
      text_cache_[missing[i]] = std::move(one);
    }
  }
  std::vector<torch::Tensor> contexts, pooled;
  for (const auto& c : captions) {
    contexts.push_back(text_cache_[c].context);
    if (text_cache_[c].pooled.defined()) pooled.push_back(text_cache_[c].pooled);
  }
  text::TextConditioning out;
  out.context = torch::cat(contexts);
  if (!pooled.empty()) out.pooled = torch::cat(pooled);
  return out;
}

absl::StatusOr<torch::Tensor> Run::MicroBatchLoss(const data::Batch& batch) {
  // Data-parallel: each weight's gradient goes to its all-reduce bucket as
  // soon as the backward makes it, which copies would hold back to the end.
  if (dist_ != nullptr) return ShardLoss(batch);
  // The forward's weight casts in one multi-tensor copy; the scope ends before
  // the backward (see LoraNetwork::MakeComputeCopies).
  networks::ComputeCopies::Scope copies = network_->MakeComputeCopies(ComputeDtype());
  torch::Tensor latents;
  if (batch.latents.defined()) {
    latents = batch.latents.to(device_, torch::kFloat32);
  } else {
    latents = model_->EncodeImages(batch.images, vae_gen_);
  }
  ASSIGN_OR_RETURN(text::TextConditioning cond, Conditioning(batch.captions));
  diffusion::NoisyBatch noisy =
      diffusion::SampleNoisyLatents(latents, *schedule_, noise_options_, noise_gen_, uniform_);
  return PerSampleLoss(batch, latents, noisy, cond).mean();
}

// The model's prediction on `noisy` against its target: kohya's per-sample
// loss (loss type, Huber threshold, dataset loss weights, min-SNR / debiased /
// v-pred-like post-processing) before the batch's reduction.
torch::Tensor Run::PerSampleLoss(const data::Batch& batch, const torch::Tensor& latents,
                                 const diffusion::NoisyBatch& noisy, const text::TextConditioning& cond) {
  torch::Tensor pred;
  {
    AutocastScope autocast(autocast_, device_, autocast_dtype_);
    pred = model_->Predict(ChannelsLastOnCuda(noisy.noisy_latents.to(weight_dtype_)), noisy.timesteps, cond,
                           batch.original_hw, batch.crop_top_left, batch.target_hw);
  }
  torch::Tensor target = diffusion::TrainingTarget(*schedule_, weighting_.prediction, latents, noisy.noise,
                                                   noisy.timesteps);
  torch::Tensor huber_c;
  if (loss_type_ == diffusion::LossType::kHuber || loss_type_ == diffusion::LossType::kSmoothL1) {
    huber_c = diffusion::HuberThreshold(*schedule_, huber_, noisy.timesteps);
  }
  torch::Tensor loss = diffusion::ConditionalLoss(pred.to(torch::kFloat32), target.to(torch::kFloat32), loss_type_,
                                                  diffusion::Reduction::kNone, huber_c);
  loss = loss.mean({1, 2, 3});
  if (batch.loss_weights.defined()) loss = loss * batch.loss_weights.to(loss.device(), torch::kFloat32);
  return diffusion::PostProcessLoss(loss, noisy.timesteps, *schedule_, weighting_);
}

// A data-parallel rank's share of the global batch: the VAE posterior noise,
// the diffusion noise and the timesteps are drawn for the whole planned batch
// (the same draws as one process with the global batch, on every rank) and
// this rank takes its rows. The loss is this share's mean weighted by its part
// of the global batch, so the all-reduced sum is the global mean's gradient.
// An empty share draws too (the generators stay in step) and returns an
// undefined tensor: nothing to back-propagate.
absl::StatusOr<torch::Tensor> Run::ShardLoss(const data::Batch& batch) {
  const int64_t planned = batch.planned_size;
  if (planned <= 0 || static_cast<int64_t>(batch.slots.size()) != batch.size()) {
    return absl::FailedPreconditionError(
        "data-parallel training needs a batch source that serves shares of the global batch (Batch::planned_size)");
  }
  const int64_t channels = 4;  // the SD / SDXL VAE latent
  const std::vector<int64_t> global_shape{planned, channels, batch.bucket_height / 8, batch.bucket_width / 8};
  const bool empty = batch.size() == 0;
  torch::Tensor rows =
      torch::tensor(batch.slots.empty() ? std::vector<int64_t>{0} : batch.slots, torch::kLong).to(device_);
  torch::Tensor latents;
  if (batch.latents.defined()) {
    latents = batch.latents.to(device_, torch::kFloat32);
  } else {
    torch::Tensor draw = torch::randn(global_shape, vae_gen_, torch::TensorOptions().dtype(torch::kFloat32));
    if (!empty) latents = model_->EncodeImagesWithNoise(batch.images, draw.index_select(0, rows.cpu()));
  }
  torch::Tensor global = torch::zeros(global_shape, torch::TensorOptions().dtype(torch::kFloat32).device(device_));
  if (!empty) global.index_copy_(0, rows, latents);
  diffusion::NoisyBatch noisy =
      diffusion::SampleNoisyLatents(global, *schedule_, noise_options_, noise_gen_, uniform_);
  if (empty) return torch::Tensor();
  noisy.noisy_latents = noisy.noisy_latents.index_select(0, rows);
  noisy.noise = noisy.noise.index_select(0, rows);
  noisy.timesteps = noisy.timesteps.index_select(0, rows);
  ASSIGN_OR_RETURN(text::TextConditioning cond, Conditioning(batch.captions));
  // sum / planned = this share's mean x (its size / the global batch's).
  return PerSampleLoss(batch, latents, noisy, cond).sum() / static_cast<double>(planned);
}

// Joins the process group's per-step bookkeeping: the gradients (all-reduced
// by the reducer's buckets), then one small sum of [loss, images, cancel,
// save-state] so every rank reports the global loss and stops on the same step.
absl::Status Run::AgreeOnStep(StepAccumulator& step, double* loss_sum) {
  RETURN_IF_ERROR(reducer_->Finish());
  const bool cancelled = cancel_ != nullptr && cancel_->cancelled();
  torch::Tensor facts = torch::tensor(
      {step.loss_sum.defined() ? step.loss_sum.item<double>() : 0.0, static_cast<double>(step.images),
       cancelled ? 1.0 : 0.0, cancelled && cancel_->save_state_requested() ? 1.0 : 0.0},
      torch::kFloat64);
  RETURN_IF_ERROR(dist_->AllReduceSum(facts));
  *loss_sum = facts[0].item<double>();
  step.images = static_cast<int64_t>(facts[1].item<double>());
  if (facts[2].item<double>() > 0 && !agreed_cancel_.cancelled()) agreed_cancel_.Cancel(facts[3].item<double>() > 0);
  return absl::OkStatus();
}

absl::Status Run::SetupDistributed() {
  if (dist_ == nullptr) return absl::OkStatus();
  reducer_ = std::make_unique<GradientReducer>(*dist_, optimizer_->AllParams());
  log_->info("data-parallel: {} ranks over {}, global batch {} = train_batch_size {} x {} ranks x "
             "gradient_accumulation_steps {}; {} gradient bucket(s)",
             dist_->world_size(), dist_->backend_name(),
             config_.train_batch_size * dist_->world_size() * std::max<int64_t>(1, config_.gradient_accumulation_steps),
             config_.train_batch_size, dist_->world_size(), std::max<int64_t>(1, config_.gradient_accumulation_steps),
             reducer_->num_buckets());
  return absl::OkStatus();
}

// Every rank must hold the same adapter weights (same init, same reduced
// gradients, same step): compared by a hash of their bytes. A mismatch is a bug.
absl::Status Run::VerifyReplicas(const char* when) {
  if (dist_ == nullptr) return absl::OkStatus();
  ASSIGN_OR_RETURN(bool same, dist_->SameOnAllRanks(ReplicaFingerprint(optimizer_->AllParams())));
  if (!same) {
    return absl::InternalError(absl::StrCat("data-parallel ranks hold different LoRA weights ", when, " (step ",
                                            pos_.global_step, "); this is a bug, please report it"));
  }
  return absl::OkStatus();
}

absl::Status Run::OptimizerStep(bool* skipped, torch::Tensor* grad_norm) {
  *skipped = false;
  const auto params = optimizer_->AllParams();
  if (use_scaler_) {
    const bool finite = scaler_.UnscaleAndCheck(params);
    scaler_.Update(!finite);
    if (!finite) {
      *skipped = true;
      optimizer_->ZeroGrad();
      if (max_norm_) max_norm_->keys_scaled = 0;  // weights unchanged: same norms, nothing scaled
      return absl::OkStatus();
    }
  }
  // The norm stays on the device; ReportPendingSteps checks it is finite.
  ASSIGN_OR_RETURN(*grad_norm, optim::ClipGradNormOnDevice(params, config_.max_grad_norm));
  RETURN_IF_ERROR(scheduler_->Apply(pos_.global_step, *optimizer_));
  RETURN_IF_ERROR(optimizer_->Step());
  optimizer_->ZeroGrad();
  if (MaxNormEnabled()) {
    ASSIGN_OR_RETURN(networks::MaxNormStats stats, network_->ApplyMaxNorm(*config_.scale_weight_norms));
    max_norm_ = MaxNormReport{stats.keys_scaled, stats.average_key_norm, stats.max_key_norm};
  }
  return absl::OkStatus();
}

// Why this run's steps cannot go through a CUDA graph; empty when they can.
// A captured step replays without host code, so everything that must look at
// a value on the host every step, or draw random numbers inside the step,
// keeps the step eager.
std::string Run::GraphStepObstacle() const {
  if (!config_.cuda_graphs) return "cuda_graphs = false";
  if (!StepGraphs::CaptureSupported(device_) && !options_.graph_step_without_capture) {
    return device_.is_cuda() ? "this LibTorch build cannot capture CUDA graphs (it needs LibTorch 2.x with CUDA)"
                             : "graphs are captured on CUDA devices only";
  }
  if (dist_ != nullptr) return "data-parallel training (the ranks agree on each step on the host)";
  if (accumulation_ > 1) return "gradient_accumulation_steps > 1";
  if (use_scaler_) {
    return "mixed_precision = fp16 (its loss scaler checks the gradients on the host every step; bf16 has no scaler)";
  }
  if (MaxNormEnabled()) return "scale_weight_norms (it reports the norms it scaled every step)";
  if (train_text_) {
    return "the text encoder is trained (network_train_unet_only or text_encoder_lr = 0 keep it out of the step)";
  }
  if (net_config_.dropout > 0 || net_config_.rank_dropout > 0 || net_config_.module_dropout > 0) {
    return "network dropouts (network_dropout, rank_dropout, module_dropout draw their masks every step)";
  }
  return "";
}

// Chooses between the graph step and the eager step; the graph step needs the
// optimizer's lr and step counters on the device (set before any state loads).
absl::Status Run::SetupStepGraphs() {
  std::string obstacle = GraphStepObstacle();
  if (obstacle.empty()) {
    absl::Status graph_safe = optimizer_->EnableGraphSafeStep(device_);
    if (graph_safe.ok()) {
      graphs_ = std::make_unique<StepGraphs>(device_);
      if (StepGraphs::CaptureSupported(device_)) {
        log_->info("CUDA graphs: the training step is captured once per bucket shape and replayed");
      }
      return absl::OkStatus();
    }
    obstacle = std::string(graph_safe.message());
  }
  if (!device_.is_cuda() || !config_.cuda_graphs) return absl::OkStatus();
  log_->info("CUDA graphs: off, every step runs eagerly: {}", obstacle);
  return absl::OkStatus();
}

// The shape's static buffers, refilled with this step's inputs (device-to-device copies).
Run::StaticStep& Run::StaticInputs(const data::Batch& batch, const torch::Tensor& latents,
                                   const diffusion::NoisyBatch& noisy, const text::TextConditioning& cond) {
  std::string key = absl::StrCat(absl::StrJoin(latents.sizes(), "x"), "/", absl::StrJoin(cond.context.sizes(), "x"));
  if (cond.pooled.defined()) absl::StrAppend(&key, "/", absl::StrJoin(cond.pooled.sizes(), "x"));
  const auto on_device = [this](const torch::Tensor& t) { return t.to(device_); };
  torch::Tensor weights = batch.loss_weights.defined()
                              ? batch.loss_weights.to(device_, torch::kFloat32)
                              : torch::ones({latents.size(0)}, latents.options().dtype(torch::kFloat32));
  auto emplaced = statics_.try_emplace(key);
  const bool fresh = emplaced.second;
  StaticStep& s = emplaced.first->second;
  const auto fill = [fresh](torch::Tensor& dst, const torch::Tensor& src) {
    if (!src.defined()) return;
    if (fresh) {
      dst = src.detach().clone();
    } else {
      dst.copy_(src);
    }
  };
  fill(s.batch.original_hw, on_device(batch.original_hw));
  fill(s.batch.crop_top_left, on_device(batch.crop_top_left));
  fill(s.batch.target_hw, on_device(batch.target_hw));
  fill(s.batch.loss_weights, weights);
  fill(s.latents, latents);
  fill(s.noisy.noise, noisy.noise);
  fill(s.noisy.noisy_latents, noisy.noisy_latents);
  fill(s.noisy.timesteps, noisy.timesteps);
  fill(s.cond.context, cond.context);
  fill(s.cond.pooled, cond.pooled);
  if (fresh) {
    s.loss = torch::zeros({}, latents.options().dtype(torch::kFloat64));
    s.grad_norm = torch::zeros({}, latents.options().dtype(torch::kFloat32));
  }
  s.key = key;
  return s;
}

// One optimizer step through StepGraphs: the inputs (latents, text
// conditioning, noise and timesteps from the run's generators, as the eager
// step draws them) go into the shape's static buffers, then the body runs
// forward, backward, clipping and the graph-safe optimizer step on them.
absl::Status Run::GraphStep(const data::Batch& batch, StepAccumulator& step) {
  torch::Tensor latents = batch.latents.defined() ? batch.latents.to(device_, torch::kFloat32)
                                                  : model_->EncodeImages(batch.images, vae_gen_);
  ASSIGN_OR_RETURN(text::TextConditioning cond, Conditioning(batch.captions));
  diffusion::NoisyBatch noisy =
      diffusion::SampleNoisyLatents(latents, *schedule_, noise_options_, noise_gen_, uniform_);
  StaticStep& s = StaticInputs(batch, latents, noisy, cond);
  RETURN_IF_ERROR(scheduler_->Apply(pos_.global_step, *optimizer_));
  const std::vector<torch::Tensor> params = optimizer_->AllParams();
  absl::Status body_status;
  const auto body = [&] {
    torch::Tensor loss;
    {
      networks::ComputeCopies::Scope copies = network_->MakeComputeCopies(ComputeDtype());
      loss = PerSampleLoss(s.batch, s.latents, s.noisy, s.cond).mean();
    }
    loss.backward();
    absl::StatusOr<torch::Tensor> norm = optim::ClipGradNormOnDevice(params, config_.max_grad_norm);
    if (!norm.ok()) {
      body_status = norm.status();
      return;
    }
    body_status = optimizer_->Step();
    s.loss.copy_(loss.detach().to(torch::kFloat64));
    if (norm->defined()) s.grad_norm.copy_(*norm);
  };
  const int64_t steps_before = optimizer_->step_count();
  absl::StatusOr<StepGraphs::Ran> ran = graphs_->Run(s.key, body);
  if (!ran.ok()) {
    // A capture runs nothing: unless it got as far as the optimizer's host
    // bookkeeping, the step can run eagerly instead, and so can the rest.
    optimizer_->ZeroGrad();
    if (optimizer_->step_count() != steps_before) {
      return absl::InternalError(absl::StrCat(ran.status().message(), "; set cuda_graphs = false"));
    }
    Warn("cuda_graphs", absl::StrCat(ran.status().message(), "; the run goes on with eager steps"));
    graphs_.reset();
    statics_.clear();
    return AccumulateMicroBatch(batch, /*last_of_step=*/true, step);
  }
  RETURN_IF_ERROR(body_status);
  if (*ran == StepGraphs::Ran::kReplayed) optimizer_->RecordReplayedStep();
  optimizer_->ZeroGrad();
  ++result_.graph_steps;
  result_.cuda_graphs_captured = graphs_->num_graphs();
  step.loss_sum = s.loss.clone();
  step.grad_norm = s.grad_norm.clone();
  step.stepped = true;
  step.images += batch.size();
  ++step.micro;
  return absl::OkStatus();
}

absl::StatusOr<io::Metadata> Run::BuildMetadata() const {
  networks::TrainingFacts facts;
  facts.base = model_->is_sdxl() ? networks::BaseModel::kSdxl : networks::BaseModel::kSd15;
  facts.network = network_->config();
  facts.optimizer = optimizer_->Describe();
  facts.seed = pos_.seed;
  facts.started_at = started_at_;
  facts.finished_at = NowUnixMs() / 1000;
  facts.date = networks::NowIso8601();
  facts.resolution = resolution_;
  facts.num_train_images = inputs_.source->num_train_images();
  facts.num_batches_per_epoch = plan_.batches_per_epoch;
  facts.num_epochs = plan_.num_epochs;
  facts.epoch = pos_.data.epoch - (pos_.data.batch_index == 0 ? 1 : 0);
  facts.steps = pos_.global_step;
  facts.max_train_steps = plan_.max_train_steps;
  facts.lr_warmup_steps = plan_.warmup_steps;
  facts.implementation_version = absl::StrCat("lorad/", LORAD_VERSION);
  facts.dataset = inputs_.dataset_facts;
  return networks::BuildLoraMetadata(config_, facts);
}

absl::Status Run::SaveLora(const std::filesystem::path& path, bool is_final) {
  RETURN_IF_ERROR(ReportPendingSteps());  // a diverged step is found before its weights are saved
  if (!IsMain()) return absl::OkStatus();
  ASSIGN_OR_RETURN(torch::ScalarType dtype, networks::ParseSavePrecision(config_.save_precision));
  ASSIGN_OR_RETURN(io::Metadata metadata, BuildMetadata());
  RETURN_IF_ERROR(network_->Save(path, dtype, metadata));
  last_lora_ = path.string();
  result_.checkpoints.push_back(path);
  observers_.OnCheckpoint({path.string(), pos_.global_step, pos_.data.epoch, CheckpointKind::kLora, is_final});
  return absl::OkStatus();
}

absl::Status Run::SaveState(const std::filesystem::path& dir) {
  RETURN_IF_ERROR(ReportPendingSteps());  // and the epoch's loss sums it saves are complete
  if (!IsMain()) return absl::OkStatus();
  ASSIGN_OR_RETURN(TrainingState state, CaptureState());
  RETURN_IF_ERROR(SaveTrainingState(dir, state));
  result_.checkpoints.push_back(dir);
  observers_.OnCheckpoint({dir.string(), pos_.global_step, pos_.data.epoch, CheckpointKind::kState, false});
  return absl::OkStatus();
}

absl::Status Run::SaveStepCheckpoints() {
  const int64_t step = pos_.global_step;
  if (!config_.save_every_n_steps || step % *config_.save_every_n_steps != 0 || step >= plan_.max_train_steps) {
    return absl::OkStatus();
  }
  const CheckpointNames names(config_.output_dir, config_.output_name);
  RETURN_IF_ERROR(SaveLora(names.StepLora(step), false));
  if (config_.save_state) RETURN_IF_ERROR(SaveState(names.StepState(step)));
  if (!IsMain()) return absl::OkStatus();
  checkpoints_.RemoveOldSteps(names, step, config_.save_last_n_steps,
                              config_.save_last_n_steps_state ? config_.save_last_n_steps_state
                                                              : config_.save_last_n_steps);
  return absl::OkStatus();
}

absl::Status Run::SaveEpochCheckpoints(int64_t epoch) {
  if (!config_.save_every_n_epochs || epoch % *config_.save_every_n_epochs != 0 || epoch >= plan_.num_epochs) {
    return absl::OkStatus();
  }
  const CheckpointNames names(config_.output_dir, config_.output_name);
  RETURN_IF_ERROR(SaveLora(names.EpochLora(epoch), false));
  if (config_.save_state) RETURN_IF_ERROR(SaveState(names.EpochState(epoch)));
  if (!IsMain()) return absl::OkStatus();
  checkpoints_.RemoveOldEpochs(names, epoch, *config_.save_every_n_epochs, config_.save_last_n_epochs,
                               config_.save_last_n_epochs_state ? config_.save_last_n_epochs_state
                                                                : config_.save_last_n_epochs);
  return absl::OkStatus();
}

absl::Status Run::RenderSamples() {
  RETURN_IF_ERROR(ReportPendingSteps());  // the step reports come before the previews of their step
  if (!IsMain()) return absl::OkStatus();
  PreviewSettings settings;
  settings.device = device_;
  settings.weight_dtype = weight_dtype_;
  settings.autocast = autocast_;
  settings.autocast_dtype = autocast_dtype_;
  settings.prediction = weighting_.prediction;
  settings.default_sampler = config_.sample_sampler;
  settings.default_lora_strength = config_.sample_lora_strength;
  settings.seed = pos_.seed;
  ASSIGN_OR_RETURN(std::vector<std::filesystem::path> written,
                   RenderPreviews(prompts_, settings, *model_, *network_, *schedule_,
                                  CheckpointNames(config_.output_dir, config_.output_name), pos_.global_step,
                                  observers_));
  result_.samples.insert(result_.samples.end(), written.begin(), written.end());
  return absl::OkStatus();
}

absl::Status Run::Finish(absl::Status status) {
  RunFinished finished;
  finished.final_step = pos_.global_step;
  finished.final_lora_path = last_lora_;
  if (status.ok()) {
    finished.outcome = RunOutcome::kSucceeded;
  } else {
    finished.outcome = status.code() == absl::StatusCode::kCancelled ? RunOutcome::kCancelled : RunOutcome::kFailed;
    finished.reason = std::string(status.message());
  }
  observers_.OnFinish(finished);
  return status;
}

absl::Status Run::Fail(absl::Status status) {
  // Steps not yet read back are reported; a divergence among them came first.
  if (absl::Status pending = Guarded([&] { return ReportPendingSteps(); }); !pending.ok()) status = pending;
  // A diverged run (DATA_LOSS) or a failed write (UNAVAILABLE: a full disk)
  // still has every LoRA saved before it.
  if ((status.code() == absl::StatusCode::kDataLoss || status.code() == absl::StatusCode::kUnavailable) &&
      !last_lora_.empty()) {
    status = absl::Status(status.code(), absl::StrCat(status.message(), "; the last good LoRA is ", last_lora_));
  }
  return Finish(status);
}

absl::Status Run::StepError(const c10::Error& e) const {
  if (IsOutOfMemoryError(e)) {
    OutOfMemoryFacts facts;
    facts.device = device_.str();
    facts.step = pos_.global_step + 1;
    facts.train_batch_size = config_.train_batch_size;
    facts.resolution = resolution_;
    facts.gradient_checkpointing = config_.gradient_checkpointing;
    facts.cache_latents = config_.cache_latents || config_.cache_latents_to_disk;
    facts.mixed_precision = config_.mixed_precision;
    facts.memory = DeviceMemoryStats(device_);
    facts.detail = e.what_without_backtrace();
    return OutOfMemoryError(facts);
  }
  return absl::InternalError(absl::StrCat("training step ", pos_.global_step + 1, ": ", e.what_without_backtrace()));
}

absl::StatusOr<TrainResult> Run::Execute() {
  if (absl::Status setup = Setup(); !setup.ok()) return Finish(setup);
  ReportStart();
  absl::Status status = TrainLoop();
  if (status.ok()) status = Guarded([&] { return SaveFinal(); });
  if (!status.ok()) return Fail(status);
  RETURN_IF_ERROR(Finish(absl::OkStatus()));
  return result_;
}

void Run::ReportStart() {
  RunStarted started;
  started.total_steps = plan_.max_train_steps;
  started.total_epochs = plan_.num_epochs;
  started.steps_per_epoch = plan_.steps_per_epoch;
  started.resumed_from_step = resumed_from_step_;
  started.num_train_images = inputs_.source->num_train_images();
  started.device = device_.str();
  started.model_arch = model_->arch_name();
  started.config_toml = ConfigToToml(config_);
  started.hyperparameters = EffectiveOptions(config_);
  observers_.OnStart(started);
  log_->info("{} steps ({} per epoch, {} epochs), {} adapter parameters", plan_.max_train_steps,
             plan_.steps_per_epoch, plan_.num_epochs, network_->NumParameters());
}

// Epochs from the current position until max_train_steps; an error (or CANCELLED
// on a stop request) ends the run.
absl::Status Run::TrainLoop() {
  run_start_ = Clock::now();
  if (config_.sample_at_first && pos_.global_step == 0) {
    RETURN_IF_ERROR(Guarded([&] { return RenderSamples(); }));
  }
  RETURN_IF_ERROR(VerifyReplicas("at the start"));
  bool done = pos_.global_step >= plan_.max_train_steps;
  while (!done && pos_.data.epoch <= plan_.num_epochs) {
    const int64_t epoch = pos_.data.epoch;
    RETURN_IF_ERROR(TrainEpoch(epoch, done));
    RETURN_IF_ERROR(EndEpoch(epoch, done));
  }
  return absl::OkStatus();
}

// The batches of `epoch` from the current position; sets `done` after the last step.
absl::Status Run::TrainEpoch(int64_t epoch, bool& done) {
  ASSIGN_OR_RETURN(std::unique_ptr<data::BatchIterator> batches,
                   inputs_.source->Iterate(pos_.data, pos_.global_step));
  // One batch ahead: the next one is read and copied while this one trains.
  PrefetchingIterator iterator(std::move(batches), device_);
  StepAccumulator step;
  while (!done) {
    ASSIGN_OR_RETURN(std::optional<data::Batch> next, iterator.Next());
    if (!next.has_value()) break;
    const data::Batch& batch = *next;
    const bool epoch_end = batch.position.batch_index + 1 >= plan_.batches_per_epoch;
    const bool last_of_step = step.micro + 1 >= accumulation_ || epoch_end;
    RETURN_IF_ERROR(Guarded([&] { return AccumulateMicroBatch(batch, last_of_step, step); }));
    if (step.micro < accumulation_ && !epoch_end) continue;

    RETURN_IF_ERROR(CompleteStep(epoch, iterator, step));
    done = pos_.global_step >= plan_.max_train_steps;
    if (done || static_cast<int64_t>(pending_.size()) >= log_every_) {
      RETURN_IF_ERROR(Guarded([&] { return ReportPendingSteps(); }));
    }
    RETURN_IF_ERROR(Guarded([&] { return AfterStep(done); }));
    RETURN_IF_ERROR(StopIfRequested(done));
  }
  return absl::OkStatus();
}

absl::Status Run::AccumulateMicroBatch(const data::Batch& batch, bool last_of_step, StepAccumulator& step) {
  // Data-parallel: the step's last backward fills the gradient buckets (the
  // earlier micro-batches accumulate locally, as torch DDP's no_sync).
  if (reducer_ && last_of_step) reducer_->Arm();
  if (graphs_ != nullptr) return GraphStep(batch, step);
  ASSIGN_OR_RETURN(torch::Tensor loss, MicroBatchLoss(batch));
  if (!loss.defined()) {  // a data-parallel rank with an empty share: nothing to add
    ++step.micro;
    return absl::OkStatus();
  }
  torch::Tensor value = loss.detach().to(torch::kFloat64);
  step.loss_sum = step.loss_sum.defined() ? step.loss_sum + value : value;
  torch::Tensor scaled = loss / static_cast<double>(accumulation_);
  if (use_scaler_) scaled = scaler_.Scale(scaled);
  scaled.backward();
  step.images += batch.size();
  ++step.micro;
  return absl::OkStatus();
}

// The optimizer step over the accumulated gradients (unless the graph step
// ran it), then the position; the loss and gradient norm wait on the device
// for the log interval's read-back.
absl::Status Run::CompleteStep(int64_t epoch, const data::BatchIterator& iterator, StepAccumulator& step) {
  if (dist_ != nullptr) {  // the ranks agree on the step's loss, on the host, every step
    double loss_sum = 0;
    RETURN_IF_ERROR(Guarded([&] { return AgreeOnStep(step, &loss_sum); }));
    step.loss_sum = torch::tensor(loss_sum, torch::kFloat64);
  }
  bool skipped = false;
  if (!step.stepped) RETURN_IF_ERROR(Guarded([&] { return OptimizerStep(&skipped, &step.grad_norm); }));
  images_this_process_ += step.images;
  ++pos_.global_step;
  ++steps_this_process_;
  pos_.data = iterator.position();
  if (pos_.data.batch_index >= plan_.batches_per_epoch) pos_.data = {static_cast<int>(epoch) + 1, 0};
  if (skipped) {
    ++result_.skipped_steps;
    ++pos_.skipped_steps;
  }
  RETURN_IF_ERROR(skip_streak_.Record(skipped, scaler_.scale(), pos_.global_step));

  PendingStep done;
  done.step = pos_.global_step;
  done.epoch = epoch;
  done.micro = std::max<int64_t>(1, step.micro);
  done.loss_sum = step.loss_sum;
  done.grad_norm = step.grad_norm;
  done.skipped = skipped;
  for (int g = 0; g < optimizer_->num_groups(); ++g) {
    // Adafactor's relative step reports its internal lr as kohya's AdafactorSchedule does.
    const double scheduled = optimizer_->UsesInternalLr() ? optimizer_->EffectiveLr(g) : optimizer_->lr(g);
    done.lrs.push_back({group_names_[static_cast<size_t>(g)], optimizer_->EffectiveLr(g), scheduled});
  }
  done.max_norm = max_norm_;
  done.steps_this_process = steps_this_process_;
  done.images_this_process = images_this_process_;
  done.elapsed_s = std::chrono::duration<double>(Clock::now() - run_start_).count();
  pending_.push_back(std::move(done));
  step = StepAccumulator();
  return absl::OkStatus();
}

// The steps since the last read-back: their losses and gradient norms come
// to the host in one copy (the host waits for the GPU once per interval), are
// checked in step order (the first non-finite one fails the run, before any
// later checkpoint is written), and reported.
absl::Status Run::ReportPendingSteps() {
  if (pending_.empty()) return absl::OkStatus();
  const std::vector<PendingStep> steps = std::move(pending_);
  pending_.clear();
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64).device(device_);
  std::vector<torch::Tensor> values;
  values.reserve(2 * steps.size());
  for (const PendingStep& p : steps) {
    values.push_back(p.loss_sum.defined() ? p.loss_sum.to(f64).reshape({}) : torch::zeros({}, f64));
    values.push_back(p.grad_norm.defined() ? p.grad_norm.to(f64).reshape({}) : torch::zeros({}, f64));
  }
  const torch::Tensor host = torch::stack(values).cpu();
  const double* v = host.data_ptr<double>();
  for (size_t i = 0; i < steps.size(); ++i) {
    const PendingStep& p = steps[i];
    const double loss = v[2 * i] / static_cast<double>(p.micro);
    const double grad_norm = v[2 * i + 1];
    // The fp16 scaler skips non-finite steps itself (SkipStreak watches it).
    if (!use_scaler_) RETURN_IF_ERROR(CheckLossFinite(loss, p.step, p.epoch));
    if (!p.skipped && !std::isfinite(grad_norm)) {
      return absl::DataLossError(absl::StrFormat(
          "gradients became %s at step %d: training diverged; lower learning_rate, set max_grad_norm, or use "
          "mixed_precision=bf16",
          std::isnan(grad_norm) ? "NaN" : "inf", p.step));
    }
    if (std::isfinite(loss)) {
      pos_.epoch_loss_sum += loss;
      ++pos_.epoch_loss_count;
    }
    ReportStep(p, loss, grad_norm);
  }
  return absl::OkStatus();
}

void Run::ReportStep(const PendingStep& p, double loss, double grad_norm) {
  const Throughput speed = ComputeThroughput(p.steps_this_process, p.images_this_process, p.elapsed_s,
                                             plan_.max_train_steps - p.step);
  StepReport report;
  report.step = p.step;
  report.total_steps = plan_.max_train_steps;
  report.epoch = p.epoch;
  report.total_epochs = plan_.num_epochs;
  report.loss = loss;
  report.loss_avg = pos_.epoch_loss_count ? pos_.epoch_loss_sum / pos_.epoch_loss_count : loss;
  report.lrs = p.lrs;
  report.it_per_s = speed.it_per_s;
  report.images_per_s = speed.images_per_s;
  report.eta_s = speed.eta_s;
  report.grad_norm = grad_norm;
  // The dashboard and /metrics show it per running job (a mutex-guarded read of the allocator's counters).
  if (auto memory = DeviceMemoryStats(device_)) report.gpu_memory_allocated_bytes = memory->allocated_bytes;
  report.skipped = p.skipped;
  report.max_norm = p.max_norm;
  observers_.OnStep(report);
  if (options_.on_step) options_.on_step(p.step);
}

// Step checkpoints and previews after a step (`done`: it was the last).
absl::Status Run::AfterStep(bool done) {
  RETURN_IF_ERROR(SaveStepCheckpoints());
  if (PreviewDueAfterStep(config_, pos_.global_step, done)) RETURN_IF_ERROR(RenderSamples());
  return absl::OkStatus();
}

// CANCELLED when a cancel or a simulated interrupt asks to stop, after saving a
// resumable state when that was asked for; OK to go on.
absl::Status Run::StopIfRequested(bool done) {
  // Data-parallel ranks stop on the step they agreed on (AgreeOnStep).
  switch (StopAfterStep(done, dist_ != nullptr ? &agreed_cancel_ : cancel_, options_.stop_after_steps,
                        steps_this_process_)) {
    case StopAction::kContinue:
      return absl::OkStatus();
    case StopAction::kStop:
      RETURN_IF_ERROR(Guarded([&] { return ReportPendingSteps(); }));
      return absl::CancelledError("stopped on request");
    case StopAction::kStopSaveState:
      break;
  }
  const CheckpointNames names(config_.output_dir, config_.output_name);
  RETURN_IF_ERROR(Guarded([&] { return SaveState(names.LastState()); }));
  return absl::CancelledError(absl::StrCat("stopped on request; state saved to ", names.LastState().string(),
                                           " (resume with --resume)"));
}

// Closes `epoch`: the position moves to the next one, observers get the
// epoch's loss average, then epoch checkpoints and previews.
absl::Status Run::EndEpoch(int64_t epoch, bool done) {
  RETURN_IF_ERROR(Guarded([&] { return ReportPendingSteps(); }));
  if (pos_.data.epoch == epoch && !done) pos_.data = {static_cast<int>(epoch) + 1, 0};
  const double epoch_avg = pos_.epoch_loss_count ? pos_.epoch_loss_sum / pos_.epoch_loss_count : 0;
  result_.final_loss_avg = epoch_avg;
  observers_.OnEpochEnd(epoch, epoch_avg);
  if (pos_.data.epoch > epoch) {
    pos_.epoch_loss_sum = 0;
    pos_.epoch_loss_count = 0;
    RETURN_IF_ERROR(Guarded([&]() -> absl::Status {
      RETURN_IF_ERROR(SaveEpochCheckpoints(epoch));
      if (PreviewDueAfterEpoch(config_, epoch, plan_.num_epochs)) RETURN_IF_ERROR(RenderSamples());
      return absl::OkStatus();
    }));
  }
  result_.epochs = epoch;
  return absl::OkStatus();
}

// The final LoRA, the final state when asked for, the last previews.
absl::Status Run::SaveFinal() {
  // The last collective of a data-parallel run: rank 0 then saves alone.
  RETURN_IF_ERROR(VerifyReplicas("at the end"));
  const CheckpointNames names(config_.output_dir, config_.output_name);
  RETURN_IF_ERROR(SaveLora(names.FinalLora(), true));
  if (config_.save_state || config_.save_state_on_train_end) RETURN_IF_ERROR(SaveState(names.LastState()));
  if (PreviewDueAtEnd(config_)) RETURN_IF_ERROR(RenderSamples());
  result_.steps = pos_.global_step;
  result_.final_lora = names.FinalLora();
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<TrainResult> Train(const TrainConfig& config, const TrainInputs& inputs, TrainObserver* observer,
                                  const CancellationToken* cancel, const TrainOptions& options) {
  Run run(config, inputs, observer, cancel, options);
  absl::StatusOr<TrainResult> result;
  try {
    result = run.Execute();
  } catch (const c10::Error& e) {
    result = absl::InternalError(absl::StrCat("training: ", e.what_without_backtrace()));
  }
  // A rank's own failure is recorded for rank 0's report (a peer's is already ABORTED).
  if (!result.ok() && inputs.distributed != nullptr && result.status().code() != absl::StatusCode::kAborted &&
      result.status().code() != absl::StatusCode::kCancelled) {
    inputs.distributed->RecordOwnFailure(result.status());
  }
  return result;
}

}  // namespace lorad::train
