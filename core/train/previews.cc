#include "core/train/previews.h"

#include "core/base/status_macros.h"
#include "core/diffusion/sampler.h"
#include "core/train/autocast.h"
#include "core/train/png.h"

namespace lorad::train {
namespace {

// Eval mode for the previews (no adapter dropout), train mode again after.
class EvalModeScope {
 public:
  explicit EvalModeScope(networks::LoraNetwork& network) : network_(network) { network_.Train(false); }
  ~EvalModeScope() { network_.Train(true); }
  EvalModeScope(const EvalModeScope&) = delete;
  EvalModeScope& operator=(const EvalModeScope&) = delete;

 private:
  networks::LoraNetwork& network_;
};

}  // namespace

absl::StatusOr<std::vector<std::filesystem::path>> RenderPreviews(
    const std::vector<SamplePrompt>& prompts, const PreviewSettings& settings, ModelBundle& model,
    networks::LoraNetwork& network, const diffusion::NoiseSchedule& schedule, const CheckpointNames& names,
    int64_t step, TrainObserver& observers) {
  std::vector<std::filesystem::path> written;
  if (prompts.empty()) return written;
  torch::NoGradGuard no_grad;
  EvalModeScope eval(network);
  for (size_t i = 0; i < prompts.size(); ++i) {
    const SamplePrompt& p = prompts[i];
    const int64_t width = p.width.value_or(model.native_resolution());
    const int64_t height = p.height.value_or(model.native_resolution());
    const std::string sampler_name = p.sampler.empty() ? settings.default_sampler : p.sampler;
    auto kind = diffusion::ParseSamplerKind(sampler_name);
    if (!kind.ok()) kind = diffusion::SamplerKind::kEuler;
    ASSIGN_OR_RETURN(text::TextConditioning cond, model.EncodeText({p.negative_prompt, p.prompt}));
    auto sizes = torch::tensor({height, width}, torch::kInt64).repeat({2, 1});
    auto zeros = torch::zeros({2, 2}, torch::kInt64);
    at::Generator gen = at::detail::createCPUGenerator(
        static_cast<uint64_t>(p.seed.value_or(settings.seed + static_cast<int64_t>(i))));
    const int64_t channels = model.unet().config().in_channels;
    torch::Tensor noise =
        torch::randn({1, channels, height / 8, width / 8}, gen, torch::kFloat32).to(settings.device);
    diffusion::Denoiser denoise = [&](const torch::Tensor& x, int64_t t) {
      AutocastScope autocast(settings.autocast, settings.device, settings.autocast_dtype);
      auto timesteps =
          torch::full({x.size(0)}, t, torch::TensorOptions().dtype(torch::kInt64).device(settings.device));
      return model.Predict(x.to(settings.weight_dtype), timesteps, cond, sizes, zeros, sizes).to(torch::kFloat32);
    };
    torch::Tensor latents = diffusion::SampleLatents(*kind, schedule, p.steps, settings.prediction, noise,
                                                     diffusion::ClassifierFreeGuidance(denoise, p.cfg_scale));
    torch::Tensor image = model.DecodeLatents(latents)[0];
    const std::filesystem::path path = names.Sample(step, static_cast<int64_t>(i));
    RETURN_IF_ERROR(WritePng(path, image));
    written.push_back(path);
    observers.OnSample({path.string(), step, static_cast<int64_t>(i), p.prompt});
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
