#include "core/train/dataset_glue.h"

#include <cmath>
#include <map>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/base/status_macros.h"
#include "core/data/cache.h"
#include "core/models/checkpoint.h"

namespace lorad::train {

absl::StatusOr<int64_t> NativeResolutionOf(const std::string& checkpoint_path) {
  auto checkpoint = models::Checkpoint::Open(checkpoint_path);
  if (!checkpoint.ok()) {
    return absl::Status(checkpoint.status().code(),
                        absl::StrCat("base checkpoint (pretrained_model_name_or_path) ", checkpoint_path, ": ",
                                     checkpoint.status().message()));
  }
  ASSIGN_OR_RETURN(models::CheckpointLayout layout, (*checkpoint)->DetectLayout());
  return layout.family == models::ModelFamily::kSdxl ? 1024 : 512;
}

std::function<absl::StatusOr<TextEncodeFn>(const std::string&, TextEncodeFn)> DiskTextEncoderCacheHook(
    std::filesystem::path dir) {
  return [dir](const std::string& identity, TextEncodeFn encode) -> absl::StatusOr<TextEncodeFn> {
    ASSIGN_OR_RETURN(std::shared_ptr<data::TextEncoderCache> cache, data::TextEncoderCache::Create(identity, dir));
    return TextEncodeFn([cache, encode](const std::vector<std::string>& captions) {
      return cache->Get(captions, [&encode](const std::vector<std::string>& missing) { return encode(missing); });
    });
  };
}

networks::DatasetFacts DatasetFactsOf(const data::Dataset& dataset) {
  const auto& images = dataset.images();
  const auto& groups = dataset.groups();
  networks::DatasetFacts facts;
  facts.num_reg_images = dataset.num_reg_images();
  facts.tag_frequency = dataset.TagFrequency();
  std::map<std::pair<int, int>, int64_t> subset_images;  // (group, subset) -> images found
  double ar_sum = 0;
  for (const auto& e : images) {
    ++subset_images[{e.dataset_index, e.subset_index}];
    ar_sum += std::abs(e.ar_error);
  }
  for (size_t gi = 0; gi < groups.size(); ++gi) {
    const data::DatasetGroupConfig& g = groups[gi];
    networks::DatasetGroupFacts group;
    group.batch_size = g.batch_size;
    group.resolution_width = g.resolution_width;
    group.resolution_height = g.resolution_height;
    group.enable_bucket = g.enable_bucket;
    group.min_bucket_reso = g.min_bucket_reso;
    group.max_bucket_reso = g.max_bucket_reso;
    for (size_t si = 0; si < g.subsets.size(); ++si) {
      const data::SubsetConfig& s = g.subsets[si];
      const auto count = subset_images.find({static_cast<int>(gi), static_cast<int>(si)});
      networks::SubsetFacts subset;
      subset.image_dir = s.image_dir.filename().string();
      subset.is_reg = s.is_reg;
      subset.img_count = count == subset_images.end() ? 0 : count->second;
      subset.num_repeats = s.num_repeats;
      subset.color_aug = s.color_aug;
      subset.flip_aug = s.flip_aug;
      subset.random_crop = s.random_crop;
      subset.shuffle_caption = s.shuffle_caption;
      subset.keep_tokens = s.keep_tokens;
      subset.keep_tokens_separator = s.keep_tokens_separator;
      subset.class_tokens = s.class_tokens;
      group.subsets.push_back(std::move(subset));
    }
    double group_ar_sum = 0;
    int64_t group_images = 0;
    std::map<std::pair<int, int>, int64_t> buckets;  // (width, height) -> entries with repeats
    for (const auto& e : images) {
      if (e.dataset_index != static_cast<int>(gi)) continue;
      (e.is_reg ? group.num_reg_images : group.num_train_images) += e.num_repeats;
      group_ar_sum += std::abs(e.ar_error);
      ++group_images;
      buckets[{e.bucket_width, e.bucket_height}] += e.num_repeats;
    }
    group.mean_img_ar_error = group_images ? group_ar_sum / static_cast<double>(group_images) : 0.0;
    for (const auto& [reso, n] : buckets) group.buckets.push_back({reso.first, reso.second, n});
    facts.groups.push_back(std::move(group));
  }
  for (const data::BucketStat& b : dataset.bucket_stats()) facts.buckets.push_back({b.width, b.height, b.count});
  facts.mean_img_ar_error = images.empty() ? 0.0 : ar_sum / static_cast<double>(images.size());
  return facts;
}

TrainInputs InputsFor(const TrainConfig& config, data::Dataset& dataset) {
  TrainInputs inputs;
  inputs.source = &dataset;
  inputs.dataset_facts = DatasetFactsOf(dataset);
  const bool to_disk = config.cache_latents_to_disk;
  const std::filesystem::path cache_dir = std::filesystem::path(config.output_dir) / "latent_cache";
  inputs.cache_latents = [&dataset, to_disk, cache_dir](LatentEncodeFn encoder, const std::string& identity) {
    data::LatentCacheOptions options;
    options.vae_identity = identity;
    if (to_disk) options.cache_dir = cache_dir;
    return dataset.CacheLatents(
        [encoder](const torch::Tensor& images) -> absl::StatusOr<torch::Tensor> { return encoder(images); },
        options);
  };
  inputs.cache_text_encoder_outputs =
      DiskTextEncoderCacheHook(std::filesystem::path(config.output_dir) / "text_encoder_cache");
  return inputs;
}

}  // namespace lorad::train
