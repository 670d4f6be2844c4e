#include "core/train/dataset_args.h"

#include "core/base/status_macros.h"

namespace lorad::train {

absl::StatusOr<data::DatasetArgs> DatasetArgsFor(const TrainConfig& config, int64_t native_resolution) {
  data::DatasetArgs args;
  if (!config.dataset_config.empty()) args.dataset_config = config.dataset_config;
  if (!config.train_data_dir.empty()) args.train_data_dir = config.train_data_dir;
  if (!config.reg_data_dir.empty()) args.reg_data_dir = config.reg_data_dir;
  ASSIGN_OR_RETURN(auto wh, config.ResolutionWH(native_resolution));
  args.resolution_width = static_cast<int>(wh.first);
  args.resolution_height = static_cast<int>(wh.second);
  args.train_batch_size = static_cast<int>(config.train_batch_size);
  args.enable_bucket = config.enable_bucket;
  args.min_bucket_reso = static_cast<int>(config.min_bucket_reso);
  args.max_bucket_reso = static_cast<int>(config.max_bucket_reso);
  args.bucket_reso_steps = static_cast<int>(config.bucket_reso_steps);
  args.bucket_no_upscale = config.bucket_no_upscale;
  data::SubsetConfig& s = args.subset_defaults;
  s.caption_extension = config.caption_extension;
  s.shuffle_caption = config.shuffle_caption;
  s.caption_separator = config.caption_separator;
  s.keep_tokens = static_cast<int>(config.keep_tokens);
  s.keep_tokens_separator = config.keep_tokens_separator;
  s.secondary_separator = config.secondary_separator;
  s.enable_wildcard = config.enable_wildcard;
  s.caption_prefix = config.caption_prefix;
  s.caption_suffix = config.caption_suffix;
  s.caption_dropout_rate = config.caption_dropout_rate;
  s.caption_dropout_every_n_epochs = static_cast<int>(config.caption_dropout_every_n_epochs);
  s.caption_tag_dropout_rate = config.caption_tag_dropout_rate;
  s.token_warmup_step = static_cast<double>(config.token_warmup_step);
  s.token_warmup_min = static_cast<int>(config.token_warmup_min);
  s.flip_aug = config.flip_aug;
  s.random_crop = config.random_crop;
  s.color_aug = config.color_aug;
  s.num_repeats = static_cast<int>(config.dataset_repeats);
  args.prior_loss_weight = config.prior_loss_weight;
  args.seed = static_cast<uint64_t>(config.seed.value_or(0));
  args.max_train_steps = config.max_train_steps;
  return args;
}

}  // namespace lorad::train
