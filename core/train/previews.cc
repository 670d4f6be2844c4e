#include "core/train/previews.h"

#include "absl/strings/str_cat.h"
#include "core/base/status_macros.h"
#include "core/diffusion/sampler.h"
#include "core/train/autocast.h"
#include "core/train/png.h"

namespace lorad::train {
namespace {

// Eval mode and the preview's LoRA strength for one preview; train mode and
// the previous multiplier again after.
class PreviewNetworkScope {
 public:
  PreviewNetworkScope(networks::LoraNetwork& network, double strength) : network_(network) {
    if (!network_.modules().empty()) previous_ = network_.modules().front().adapter->multiplier();
    network_.Train(false);
    network_.SetMultiplier(strength);
  }
  ~PreviewNetworkScope() {
    network_.SetMultiplier(previous_);
    network_.Train(true);
  }
  PreviewNetworkScope(const PreviewNetworkScope&) = delete;
  PreviewNetworkScope& operator=(const PreviewNetworkScope&) = delete;

 private:
  networks::LoraNetwork& network_;
  double previous_ = 1.0;
};

std::string SamplerName(const SamplePrompt& prompt, const PreviewSettings& settings) {
  if (!prompt.sampler.empty()) return prompt.sampler;
  return settings.default_sampler.empty() ? "ddim" : settings.default_sampler;  // kohya's default
}

}  // namespace

absl::Status CheckPreviewSamplers(const std::string& default_sampler, const std::vector<SamplePrompt>& prompts) {
  if (!default_sampler.empty()) {
    auto kind = diffusion::ParseSamplerKind(default_sampler);
    if (!kind.ok()) return absl::InvalidArgumentError(absl::StrCat("sample_sampler: ", kind.status().message()));
  }
  for (const SamplePrompt& p : prompts) {
    if (p.sampler.empty()) continue;
    auto kind = diffusion::ParseSamplerKind(p.sampler);
    if (!kind.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("sample prompt line ", p.line, ": option --ss: ", kind.status().message()));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::filesystem::path>> RenderPreviews(
    const std::vector<SamplePrompt>& prompts, const PreviewSettings& settings, ModelBundle& model,
    networks::LoraNetwork& network, const diffusion::NoiseSchedule& schedule, const CheckpointNames& names,
    int64_t step, TrainObserver& observers) {
  std::vector<std::filesystem::path> written;
  if (prompts.empty()) return written;
  torch::NoGradGuard no_grad;
  // kohya samples with a plain scaled_linear scheduler (get_my_scheduler), never the rescaled one.
  diffusion::ScheduleOptions sampling_options = schedule.options();
  sampling_options.zero_terminal_snr = false;
  const diffusion::NoiseSchedule sampling_schedule(sampling_options);
  for (size_t i = 0; i < prompts.size(); ++i) {
    const SamplePrompt& p = prompts[i];
    const int64_t width = p.width.value_or(model.native_resolution());
    const int64_t height = p.height.value_or(model.native_resolution());
    const std::string sampler_name = SamplerName(p, settings);
    ASSIGN_OR_RETURN(diffusion::SamplerKind kind, diffusion::ParseSamplerKind(sampler_name));
    const double strength = p.lora_strength.value_or(settings.default_lora_strength);
    PreviewNetworkScope network_scope(network, strength);
    ASSIGN_OR_RETURN(text::TextConditioning cond, model.EncodeText({p.negative_prompt, p.prompt}));
    auto sizes = torch::tensor({height, width}, torch::kInt64).repeat({2, 1});
    auto zeros = torch::zeros({2, 2}, torch::kInt64);
    at::Generator gen = at::detail::createCPUGenerator(
        static_cast<uint64_t>(p.seed.value_or(settings.seed + static_cast<int64_t>(i))));
    const int64_t channels = model.unet().config().in_channels;
    torch::Tensor noise =
        torch::randn({1, channels, height / 8, width / 8}, gen, torch::kFloat32).to(settings.device);
    // Ancestral samplers continue on the same generator (CPU, so a seed gives
    // the same preview on every device).
    diffusion::NoiseSource step_noise = [&gen](const torch::Tensor& like) {
      return torch::randn(like.sizes(), gen, torch::kFloat32).to(like.device());
    };
    diffusion::Denoiser denoise = [&](const torch::Tensor& x, double t) {
      AutocastScope autocast(settings.autocast, settings.device, settings.autocast_dtype);
      // Fractional timesteps (the k-diffusion samplers) go to the U-Net as they are, as in diffusers.
      auto timesteps =
          torch::full({x.size(0)}, t, torch::TensorOptions().dtype(torch::kFloat32).device(settings.device));
      return model.Predict(x.to(settings.weight_dtype), timesteps, cond, sizes, zeros, sizes).to(torch::kFloat32);
    };
    torch::Tensor latents =
        diffusion::SampleLatents(kind, sampling_schedule, p.steps, settings.prediction, noise,
                                 diffusion::ClassifierFreeGuidance(denoise, p.cfg_scale), step_noise);
    torch::Tensor image = model.DecodeLatents(latents)[0];
    const std::filesystem::path path = names.Sample(step, static_cast<int64_t>(i));
    RETURN_IF_ERROR(WritePng(path, image));
    written.push_back(path);
    observers.OnSample({path.string(), step, static_cast<int64_t>(i), p.prompt, sampler_name, strength});
  }
  return written;
}

bool PreviewDueAfterStep(const TrainConfig& config, int64_t step, bool last_step) {
  return !last_step && config.sample_every_n_steps && step % *config.sample_every_n_steps == 0;
}

bool PreviewDueAfterEpoch(const TrainConfig& config, int64_t epoch, int64_t num_epochs) {
  return config.sample_every_n_epochs && epoch % *config.sample_every_n_epochs == 0 && epoch < num_epochs;
}

bool PreviewDueAtEnd(const TrainConfig& config) {
  return config.sample_every_n_steps || config.sample_every_n_epochs;
}

}  // namespace lorad::train
