#include "core/train/test_support.h"

#include <fstream>

#include "absl/strings/str_format.h"
#include "core/common/fixtures.h"
#include "core/base/status_macros.h"
#include "core/train/png.h"

namespace lorad::train::testing {

CaptionedImages MakeShapesDataset(int64_t count, int64_t size) {
  const std::vector<std::pair<std::string, std::vector<float>>> colours = {
      {"red", {0.9f, 0.1f, 0.1f}}, {"green", {0.1f, 0.8f, 0.2f}}, {"blue", {0.1f, 0.2f, 0.9f}},
      {"yellow", {0.9f, 0.9f, 0.1f}}};
  const std::vector<std::string> shapes = {"square", "circle", "stripes", "cross"};
  CaptionedImages out;
  std::vector<torch::Tensor> images;
  auto ys = torch::arange(size, torch::kFloat32).view({size, 1}).expand({size, size});
  auto xs = torch::arange(size, torch::kFloat32).view({1, size}).expand({size, size});
  const float c = static_cast<float>(size) / 2;
  for (int64_t i = 0; i < count; ++i) {
    const auto& fg = colours[static_cast<size_t>(i % 4)];
    const auto& bg = colours[static_cast<size_t>((i / 4 + 1 + i % 4) % 4)];
    const std::string& shape = shapes[static_cast<size_t>((i / 4) % 4)];
    torch::Tensor mask;
    if (shape == "square") {
      mask = ((xs - c).abs() < size / 4.0) & ((ys - c).abs() < size / 4.0);
    } else if (shape == "circle") {
      mask = ((xs - c).pow(2) + (ys - c).pow(2)) < (size * size / 9.0);
    } else if (shape == "stripes") {
      mask = (xs.floor().remainder(8) < 4);
    } else {
      mask = ((xs - c).abs() < size / 10.0) | ((ys - c).abs() < size / 10.0);
    }
    auto m = mask.to(torch::kFloat32).unsqueeze(0);
    auto fg_t = torch::tensor(fg.second).view({3, 1, 1});
    auto bg_t = torch::tensor(bg.second).view({3, 1, 1});
    images.push_back((m * fg_t + (1 - m) * bg_t) * 2 - 1);
    out.captions.push_back(absl::StrFormat("a %s %s on %s", fg.first, shape, bg.first));
  }
  out.images = torch::stack(images);
  return out;
}

absl::Status WriteDatasetFolder(const CaptionedImages& data, const std::filesystem::path& dir, int repeats) {
  const std::filesystem::path sub = dir / absl::StrFormat("%d_shapes", repeats);
  std::filesystem::create_directories(sub);
  for (int64_t i = 0; i < data.images.size(0); ++i) {
    const std::string stem = absl::StrFormat("img_%02d", i);
    RETURN_IF_ERROR(WritePng(sub / (stem + ".png"), (data.images[i] + 1) / 2));
    std::ofstream(sub / (stem + ".caption")) << data.captions[static_cast<size_t>(i)];
  }
  return absl::OkStatus();
}

namespace {

class MemoryIterator : public data::BatchIterator {
 public:
  MemoryIterator(const MemoryBatchSource& source, data::DataPosition start)
      : source_(source), position_(start), order_(source.EpochOrder(start.epoch)) {}
  absl::StatusOr<std::optional<data::Batch>> Next() override {
    const int64_t b = source_.batch_size();
    const int64_t first = position_.batch_index * b;
    if (first >= static_cast<int64_t>(order_.size())) return std::optional<data::Batch>();
    const int64_t last = std::min<int64_t>(first + b, static_cast<int64_t>(order_.size()));
    // A data-parallel rank's balanced share of the planned batch (as core/data's Dataset).
    const int64_t planned = last - first, world = source_.world_size(), rank = source_.rank();
    const int64_t share_begin = rank * planned / world, share_end = (rank + 1) * planned / world;
    std::vector<int64_t> idx(order_.begin() + first + share_begin, order_.begin() + first + share_end);
    data::Batch batch;
    batch.planned_size = planned;
    for (int64_t s = share_begin; s < share_end; ++s) batch.slots.push_back(s);
    batch.images = source_.data().images.index_select(0, torch::tensor(idx, torch::kInt64));
    for (int64_t i : idx) batch.captions.push_back(source_.data().captions[static_cast<size_t>(i)]);
    const int64_t n = static_cast<int64_t>(idx.size());
    const int64_t h = batch.images.size(2), w = batch.images.size(3);
    batch.original_hw = torch::tensor({h, w}, torch::kInt64).repeat({n, 1});
    batch.target_hw = batch.original_hw.clone();
    batch.crop_top_left = torch::zeros({n, 2}, torch::kInt64);
    batch.loss_weights = torch::ones({n});
    batch.position = position_;
    batch.bucket_width = static_cast<int>(w);
    batch.bucket_height = static_cast<int>(h);
    ++position_.batch_index;
    return std::optional<data::Batch>(std::move(batch));
  }
  data::DataPosition position() const override { return position_; }

 private:
  const MemoryBatchSource& source_;
  data::DataPosition position_;
  std::vector<int64_t> order_;
};

}  // namespace

MemoryBatchSource::MemoryBatchSource(CaptionedImages data, int64_t batch_size, uint64_t seed)
    : data_(std::move(data)), batch_size_(batch_size), seed_(seed) {}

int64_t MemoryBatchSource::num_batches_per_epoch() const {
  return (data_.images.size(0) + batch_size_ - 1) / batch_size_;
}

std::vector<int64_t> MemoryBatchSource::EpochOrder(int epoch) const {
  at::Generator gen = at::detail::createCPUGenerator(seed_ + static_cast<uint64_t>(epoch));
  torch::Tensor perm = torch::randperm(data_.images.size(0), gen, torch::kInt64);
  return std::vector<int64_t>(perm.data_ptr<int64_t>(), perm.data_ptr<int64_t>() + perm.numel());
}

absl::StatusOr<std::unique_ptr<data::BatchIterator>> MemoryBatchSource::Iterate(data::DataPosition start,
                                                                               int64_t /*global_step*/) {
  return std::unique_ptr<data::BatchIterator>(std::make_unique<MemoryIterator>(*this, start));
}

double FixedLoss(ModelBundle& model, const CaptionedImages& data, uint64_t seed) {
  torch::NoGradGuard no_grad;
  at::Generator gen = at::detail::createCPUGenerator(seed);
  const int64_t n = data.images.size(0);
  torch::Tensor latents = model.EncodeImages(data.images, gen);
  auto cond = model.EncodeText(data.captions);
  if (!cond.ok()) return std::nan("");
  // Timesteps spread over the schedule, the same for every evaluation.
  // Drawn on the CPU generator, then moved to the model's device (a no-op on the CPU).
  const torch::Device device = latents.device();
  torch::Tensor t = torch::linspace(50, 950, n).round().to(torch::kInt64).to(device);
  torch::Tensor noise = torch::randn(latents.sizes(), gen).to(device);
  torch::Tensor acp = torch::pow(torch::linspace(std::sqrt(0.00085), std::sqrt(0.012), 1000, torch::kFloat64), 2);
  acp = torch::cumprod(1 - acp, 0).to(device, torch::kFloat32).index_select(0, t).view({n, 1, 1, 1});
  torch::Tensor noisy = acp.sqrt() * latents + (1 - acp).sqrt() * noise;
  const int64_t h = data.images.size(2), w = data.images.size(3);
  auto sizes = torch::tensor({h, w}, torch::kInt64).repeat({n, 1});
  torch::Tensor pred = model.Predict(noisy, t, *cond, sizes, torch::zeros({n, 2}, torch::kInt64), sizes);
  return torch::mse_loss(pred.to(torch::kFloat32), noise).item<double>();
}

TrainConfig TinySdxlConfig(const std::filesystem::path& output_dir) {
  TrainConfig c;
  c.pretrained_model_name_or_path = FixturePath("tiny_sdxl.safetensors").string();
  c.tokenizer_path = FixturePath("clip/bpe_simple_vocab_16e6.txt.gz").string();
  c.train_data_dir = "(memory)";
  c.device = "cpu";
  c.output_dir = output_dir.string();
  c.output_name = "tiny";
  c.resolution = "64";
  c.network_dim = 8;
  c.network_alpha = 8;
  c.learning_rate = 3e-3;
  c.optimizer_type = "AdamW";
  c.train_batch_size = 4;
  c.max_train_steps = 60;
  c.seed = 1234;
  c.network_train_unet_only = true;
  c.max_grad_norm = 1.0;
  return c;
}

}  // namespace lorad::train::testing
