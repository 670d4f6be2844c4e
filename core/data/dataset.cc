#include "core/data/dataset.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <set>
#include <thread>

#include <opencv2/imgproc.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/base/limits.h"
#include "core/base/logging.h"
#include "core/base/status_macros.h"
#include "core/data/buckets.h"
#include "core/data/cache.h"
#include "core/data/caption.h"
#include "core/data/image_io.h"
#include "core/data/prefetch.h"
#include "core/data/rng.h"
#include "core/base/sha256.h"

namespace lorad::data {
namespace {

namespace fs = std::filesystem;

// Stream tags keep the seeded streams of different uses independent.
enum StreamTag : uint64_t { kEpochOrder = 1, kBucketOrder = 2, kFlip = 3, kCrop = 4, kCaption = 5, kColor = 6 };

bool IsValidUtf8(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    const int n = c < 0x80 ? 0 : (c >> 5) == 0x6 ? 1 : (c >> 4) == 0xE ? 2 : (c >> 3) == 0x1E ? 3 : -1;
    if (n < 0 || i + n >= s.size() + (n == 0 ? 1 : 0)) return false;
    for (int k = 1; k <= n; ++k) {
      if ((static_cast<unsigned char>(s[i + k]) >> 6) != 0x2) return false;
    }
    i += n + 1;
  }
  return true;
}

std::string ReadCaptionFile(const fs::path& path, bool keep_all_lines, std::string* problem) {
  std::error_code ec;
  const auto size = fs::file_size(path, ec);
  if (!ec && size > kMaxCaptionFileBytes) {  // checked before reading: a caption is a line or a few
    *problem = absl::StrCat(size, " bytes is more than the ", kMaxCaptionFileBytes, "-byte limit for a caption file");
    return "";
  }
  auto bytes = ReadFileBytes(path);
  if (!bytes.ok()) {
    *problem = std::string(bytes.status().message());
    return "";
  }
  std::string text = *bytes;
  if (text.rfind("\xEF\xBB\xBF", 0) == 0) text = text.substr(3);
  if (!IsValidUtf8(text)) {
    *problem = "not valid UTF-8 text";
    return "";
  }
  std::vector<std::string> lines = PySplit(text, "\n");
  if (!keep_all_lines) return PyStrip(lines[0]);
  std::vector<std::string> kept;
  for (auto& l : lines) {
    std::string s = PyStrip(l);
    if (!s.empty()) kept.push_back(s);
  }
  return absl::StrJoin(kept, "\n");
}

std::vector<fs::path> ListImages(const fs::path& dir) {
  std::vector<fs::path> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    if (e.is_regular_file() && IsImageFile(e.path())) out.push_back(e.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

// Reads and validates every file's header on a few threads (file reading and
// the JPEG structure scan dominate opening a large dataset).
std::vector<absl::StatusOr<ImageHeader>> ReadHeadersInParallel(const std::vector<fs::path>& files) {
  std::vector<absl::StatusOr<ImageHeader>> out(files.size(), absl::UnknownError("not read"));
  std::atomic<size_t> next{0};
  auto work = [&] {
    for (size_t i = next++; i < files.size(); i = next++) {
      auto bytes = ReadFileBytes(files[i]);
      out[i] = bytes.ok() ? ParseImageHeader(*bytes, files[i].string())
                          : absl::StatusOr<ImageHeader>(bytes.status());
    }
  };
  const size_t n = std::min<size_t>(files.size() / 16 + 1, std::max(1u, std::thread::hardware_concurrency()));
  std::vector<std::thread> threads;
  for (size_t t = 1; t < n; ++t) threads.emplace_back(work);
  work();
  for (auto& t : threads) t.join();
  return out;
}

absl::StatusOr<BucketSelector> SelectorFor(const DatasetGroupConfig& g) {
  if (!g.enable_bucket) return BucketSelector::Fixed({g.resolution_width, g.resolution_height});
  return BucketSelector::Create(g.bucket_no_upscale, {g.resolution_width, g.resolution_height}, g.min_bucket_reso,
                                g.max_bucket_reso, g.bucket_reso_steps);
}

// kohya's color_aug: a small random hue shift on a third of the samples.
void ColorAugment(cv::Mat& rgb, DeterministicRng& rng) {
  if (rng.Uniform() > 0.33) return;
  const int shift = static_cast<int>(rng.Below(17)) - 8;  // hue units of 2 degrees
  cv::Mat hsv;
  cv::cvtColor(rgb, hsv, cv::COLOR_RGB2HSV);
  for (int y = 0; y < hsv.rows; ++y) {
    auto* p = hsv.ptr<cv::Vec3b>(y);
    for (int x = 0; x < hsv.cols; ++x) p[x][0] = static_cast<uint8_t>((p[x][0] + shift + 180) % 180);
  }
  cv::cvtColor(hsv, rgb, cv::COLOR_HSV2RGB);
}

torch::Tensor ToTensorMinus1To1(const cv::Mat& rgb) {
  cv::Mat cont = rgb.isContinuous() ? rgb : rgb.clone();
  auto t = torch::from_blob(cont.data, {cont.rows, cont.cols, 3}, torch::kUInt8).clone();
  return t.permute({2, 0, 1}).to(torch::kFloat32).div_(127.5).sub_(1.0).contiguous();
}

}  // namespace

Dataset::~Dataset() = default;

absl::StatusOr<std::unique_ptr<Dataset>> Dataset::Open(const DatasetArgs& args) {
  std::unique_ptr<Dataset> ds(new Dataset());
  ds->args_ = args;
  RETURN_IF_ERROR(ds->Load());
  return ds;
}

absl::Status Dataset::Load() {
  ASSIGN_OR_RETURN(ResolvedDatasets resolved, ResolveDatasets(args_));
  groups_ = std::move(resolved.datasets);
  warnings_ = std::move(resolved.warnings);
  auto log = Logger("data");
  std::vector<std::string> dirs;
  for (size_t gi = 0; gi < groups_.size(); ++gi) {
    DatasetGroupConfig& g = groups_[gi];
    ASSIGN_OR_RETURN(BucketSelector selector, SelectorFor(g));
    std::vector<ImageEntry> train, reg;
    for (size_t si = 0; si < g.subsets.size(); ++si) {
      const SubsetConfig& s = g.subsets[si];
      dirs.push_back(s.image_dir.string());
      std::error_code ec;
      if (!fs::is_directory(s.image_dir, ec)) {
        return absl::NotFoundError(absl::StrCat("image_dir '", s.image_dir.string(),
                                                "' does not exist or is not a folder; fix the path in the dataset "
                                                "config or create it"));
      }
      const auto files = ListImages(s.image_dir);
      if (files.empty()) {
        warnings_.push_back(absl::StrCat("image_dir '", s.image_dir.string(),
                                         "' has no images (png, jpg, jpeg, webp, bmp); it contributes nothing"));
      }
      const auto headers = ReadHeadersInParallel(files);
      for (size_t fi = 0; fi < files.size(); ++fi) {
        const fs::path& path = files[fi];
        const absl::StatusOr<ImageHeader>& header = headers[fi];
        absl::StatusOr<BucketSelection> sel =
            header.ok() ? selector.Select(header->width, header->height) : header.status();
        if (!sel.ok()) {
          skipped_.push_back(absl::StrCat(path.string(), ": ", sel.status().message()));
          log->warn("skipping image: {}", std::string(sel.status().message()));
          continue;
        }
        ImageEntry e;
        e.path = path;
        e.dataset_index = static_cast<int>(gi);
        e.subset_index = static_cast<int>(si);
        e.is_reg = s.is_reg;
        e.num_repeats = s.num_repeats;
        e.width = header->width;
        e.height = header->height;
        fs::path cap = path;
        cap.replace_extension(s.caption_extension);
        std::string problem;
        if (fs::is_regular_file(cap, ec)) {
          e.caption = ReadCaptionFile(cap, s.enable_wildcard, &problem);
          if (!problem.empty()) {
            e.caption_problem = "unreadable: " + problem;
          } else if (e.caption.empty()) {
            e.caption_problem = "empty";
          } else {
            e.caption_from_file = true;
          }
        } else {
          e.caption_problem = "missing";
        }
        if (!e.caption_from_file) {
          if (e.caption_problem != "missing") {
            warnings_.push_back(absl::StrCat("caption '", cap.string(), "' is ", e.caption_problem,
                                             "; using the class tokens"));
          }
          e.caption = s.class_tokens;
        }
        e.bucket_width = sel->bucket.width;
        e.bucket_height = sel->bucket.height;
        e.resized_width = sel->resized.width;
        e.resized_height = sel->resized.height;
        e.ar_error = sel->ar_error;
        (s.is_reg ? reg : train).push_back(std::move(e));
      }
    }
    // Regularisation rebalancing (kohya DreamBoothDataset): register reg images
    // once with their repeats until they reach num_train_images, then add one
    // repeat at a time round-robin; reg images past that point go unused.
    int64_t num_train = 0;
    for (const auto& e : train) num_train += e.num_repeats;
    if (num_train > kMaxSamplesPerEpoch) {  // before rebalancing, which loops once per sample
      return absl::InvalidArgumentError(absl::StrCat(
          "dataset ", gi, " has ", train.size(), " training images and ", num_train,
          " samples per epoch (images x num_repeats), more than the limit of ", kMaxSamplesPerEpoch,
          "; lower num_repeats"));
    }
    std::vector<ImageEntry> used_reg;
    if (!reg.empty() && num_train > 0) {
      int64_t n = 0;
      bool first_loop = true;
      while (n < num_train) {
        for (size_t i = 0; i < reg.size(); ++i) {
          if (first_loop) {
            used_reg.push_back(reg[i]);
            n += reg[i].num_repeats;
          } else {
            used_reg[i].num_repeats += 1;
            n += 1;
          }
          if (n >= num_train) break;
        }
        first_loop = false;
      }
      if (used_reg.size() < reg.size()) {
        warnings_.push_back(absl::StrCat(reg.size() - used_reg.size(),
                                         " regularisation images are unused (more than the training images need)"));
      }
    }
    images_.insert(images_.end(), train.begin(), train.end());
    images_.insert(images_.end(), used_reg.begin(), used_reg.end());
  }
  for (const auto& w : warnings_) log->warn("{}", w);
  // Repeats x images is bounded, so an epoch's plan (one entry per sample) and
  // its step count stay finite and stated.
  int64_t samples = 0;
  for (const auto& e : images_) samples += e.num_repeats;
  if (samples > kMaxSamplesPerEpoch) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the dataset has ", images_.size(), " images and ", samples,
        " samples per epoch (images x num_repeats), more than the limit of ", kMaxSamplesPerEpoch,
        "; lower num_repeats"));
  }
  bool any_train = std::any_of(images_.begin(), images_.end(), [](const ImageEntry& e) { return !e.is_reg; });
  if (!any_train) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the dataset has no usable training images in ", absl::StrJoin(dirs, ", "),
        skipped_.empty() ? "" : absl::StrCat(" (", skipped_.size(), " unreadable files skipped: ",
                                             absl::StrJoin(skipped_, "; "), ")"),
        "; add png/jpg/jpeg/webp/bmp images to the image folders"));
  }
  log->info("{} images, {} samples per epoch (images x num_repeats), {} batches per epoch", images_.size(), samples,
            num_batches_per_epoch());
  return absl::OkStatus();
}

int64_t Dataset::num_train_images() const {
  int64_t n = 0;
  for (const auto& e : images_) n += e.is_reg ? 0 : e.num_repeats;
  return n;
}

int64_t Dataset::num_reg_images() const {
  int64_t n = 0;
  for (const auto& e : images_) n += e.is_reg ? e.num_repeats : 0;
  return n;
}

std::vector<BucketStat> Dataset::bucket_stats() const {
  std::map<std::pair<int, int>, int64_t> counts;
  for (const auto& e : images_) counts[{e.bucket_width, e.bucket_height}] += e.num_repeats;
  std::vector<BucketStat> out;
  for (const auto& [reso, n] : counts) out.push_back({reso.first, reso.second, n});
  return out;
}

int64_t Dataset::num_batches_per_epoch() const {
  // B_epoch = sum over datasets and buckets of ceil(entries / batch_size).
  std::map<std::tuple<int, int, int>, int64_t> counts;
  for (const auto& e : images_) counts[{e.dataset_index, e.bucket_width, e.bucket_height}] += e.num_repeats;
  int64_t batches = 0;
  for (const auto& [key, n] : counts) {
    const int64_t bs = static_cast<int64_t>(groups_[std::get<0>(key)].batch_size) * std::max(1, args_.world_size);
    batches += (n + bs - 1) / bs;
  }
  return batches;
}

std::vector<std::vector<Dataset::PlannedSample>> Dataset::PlanEpoch(int epoch) const {
  const uint64_t seed = args_.seed;
  // Buckets hold one entry per repeat, in image order (a deterministic start).
  std::map<std::tuple<int, int, int>, std::vector<int64_t>> buckets;
  for (int64_t i = 0; i < static_cast<int64_t>(images_.size()); ++i) {
    const auto& e = images_[i];
    auto& b = buckets[{e.dataset_index, e.bucket_width, e.bucket_height}];
    for (int r = 0; r < e.num_repeats; ++r) b.push_back(i);
  }
  std::vector<std::vector<PlannedSample>> batches;
  uint64_t bucket_no = 0;
  for (auto& [key, entries] : buckets) {
    auto rng = DeterministicRng::ForKeys({seed, static_cast<uint64_t>(epoch), kBucketOrder, bucket_no++});
    rng.Shuffle(entries);
    // Data-parallel: global batches, split across the ranks in LoadBatch.
    const size_t bs = static_cast<size_t>(groups_[std::get<0>(key)].batch_size) *
                      static_cast<size_t>(std::max(1, args_.world_size));
    for (size_t start = 0; start < entries.size(); start += bs) {
      std::vector<PlannedSample> batch;
      for (size_t j = start; j < std::min(entries.size(), start + bs); ++j) batch.push_back({entries[j], false});
      batches.push_back(std::move(batch));
    }
  }
  auto order = DeterministicRng::ForKeys({seed, static_cast<uint64_t>(epoch), kEpochOrder});
  order.Shuffle(batches);
  for (size_t b = 0; b < batches.size(); ++b) {
    for (size_t s = 0; s < batches[b].size(); ++s) {
      auto& sample = batches[b][s];
      const auto& e = images_[sample.image];
      if (groups_[e.dataset_index].subsets[e.subset_index].flip_aug) {
        auto rng = DeterministicRng::ForKeys({seed, static_cast<uint64_t>(epoch), kFlip, b, s});
        sample.flip = rng.Uniform() < 0.5;
      }
    }
  }
  return batches;
}

std::string Dataset::CaptionFor(int64_t image, int epoch, int64_t global_step, int64_t batch_index, int slot) const {
  const auto& e = images_[image];
  const SubsetConfig& subset = groups_[e.dataset_index].subsets[e.subset_index];
  SeededCaptionRandom random(DeterministicRng::ForKeys(
      {args_.seed, static_cast<uint64_t>(epoch), kCaption, static_cast<uint64_t>(batch_index),
       static_cast<uint64_t>(slot)}));
  CaptionContext ctx;
  ctx.epoch = epoch;
  ctx.step = global_step;
  ctx.max_train_steps = args_.max_train_steps;
  ctx.replacements = &args_.caption_replacements;
  return ProcessCaption(subset, e.caption, ctx, random);
}

std::pair<int, int> Dataset::CropOffsets(int64_t image, int epoch, int64_t batch_index, int slot) const {
  const auto& e = images_[image];
  const Reso resized{e.resized_width, e.resized_height};
  const Reso bucket{e.bucket_width, e.bucket_height};
  if (!groups_[e.dataset_index].subsets[e.subset_index].random_crop) return CenterTrim(resized, bucket);
  auto rng = DeterministicRng::ForKeys({args_.seed, static_cast<uint64_t>(epoch), kCrop,
                                        static_cast<uint64_t>(batch_index), static_cast<uint64_t>(slot)});
  // random.randint(0, excess) per axis, width first (kohya's order).
  const int left = resized.width > bucket.width ? static_cast<int>(rng.Below(resized.width - bucket.width + 1)) : 0;
  const int top = resized.height > bucket.height ? static_cast<int>(rng.Below(resized.height - bucket.height + 1)) : 0;
  return {left, top};
}

namespace {

// Decodes, resizes (kohya's filter choice) and crops one image to its bucket.
absl::StatusOr<cv::Mat> PrepareImageOrThrow(const ImageEntry& e, std::pair<int, int> crop, bool flip) {
  ASSIGN_OR_RETURN(cv::Mat rgb, LoadImageRgb(e.path));
  const Reso resized{e.resized_width, e.resized_height};
  const Reso have{rgb.cols, rgb.rows};
  switch (ChooseResizeFilter(have, resized)) {
    case ResizeFilter::kNone:
      break;
    case ResizeFilter::kArea:
      cv::resize(rgb, rgb, cv::Size(resized.width, resized.height), 0, 0, cv::INTER_AREA);
      break;
    case ResizeFilter::kLanczos:
      cv::resize(rgb, rgb, cv::Size(resized.width, resized.height), 0, 0, cv::INTER_LANCZOS4);
      break;
  }
  const int w = std::min(e.bucket_width, rgb.cols), h = std::min(e.bucket_height, rgb.rows);
  if (crop.first < 0 || crop.second < 0 || crop.first + w > rgb.cols || crop.second + h > rgb.rows) {
    return absl::DataLossError(absl::StrCat("image '", e.path.string(), "' decoded to ", rgb.cols, "x", rgb.rows,
                                            ", smaller than its header said"));
  }
  cv::Mat out = rgb(cv::Rect(crop.first, crop.second, w, h)).clone();
  if (out.cols != e.bucket_width || out.rows != e.bucket_height) {
    return absl::DataLossError(absl::StrCat("image '", e.path.string(), "' resized to ", rgb.cols, "x", rgb.rows,
                                            " cannot cover its bucket ", e.bucket_width, "x", e.bucket_height));
  }
  if (flip) cv::flip(out, out, 1);
  return out;
}

// The same, with every OpenCV exception (bad data, out of memory) as a Status.
absl::StatusOr<cv::Mat> PrepareImage(const ImageEntry& e, std::pair<int, int> crop, bool flip) {
  try {
    return PrepareImageOrThrow(e, crop, flip);
  } catch (const cv::Exception& err) {
    return absl::DataLossError(absl::StrCat("image '", e.path.string(), "': ", err.what()));
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(absl::StrCat("image '", e.path.string(), "': out of memory"));
  }
}

}  // namespace

bool Dataset::IsDecodeFailure(int64_t image) const {
  std::lock_guard<std::mutex> lock(failed_mu_);
  return failed_.contains(image);
}

std::vector<std::string> Dataset::decode_failures() const {
  std::lock_guard<std::mutex> lock(failed_mu_);
  std::vector<std::string> out;
  for (const auto& [image, why] : failed_) out.push_back(why);
  return out;
}

absl::Status Dataset::RecordDecodeFailure(int64_t image, const absl::Status& why) const {
  const ImageEntry& e = images_[image];
  std::string message(why.message());
  // The path once: image_io names the file in its messages already.
  if (message.find(e.path.string()) == std::string::npos) message = absl::StrCat(e.path.string(), ": ", message);
  Logger("data")->warn("skipping image that does not decode: {}", message);
  std::lock_guard<std::mutex> lock(failed_mu_);
  failed_.emplace(image, message);
  int64_t train_images = 0, failed_train = 0;
  for (size_t i = 0; i < images_.size(); ++i) {
    if (images_[i].is_reg) continue;
    ++train_images;
    failed_train += failed_.contains(static_cast<int64_t>(i)) ? 1 : 0;
  }
  if (failed_train < train_images) return absl::OkStatus();
  std::vector<std::string> all;
  for (const auto& [i, text] : failed_) all.push_back(text);
  return absl::FailedPreconditionError(absl::StrCat("no training image decodes: ", absl::StrJoin(all, "; ")));
}

absl::StatusOr<Batch> Dataset::LoadBatch(const std::vector<PlannedSample>& plan, DataPosition position,
                                         int64_t global_step) const {
  if (plan.empty()) return absl::InvalidArgumentError("empty batch plan");
  Batch b;
  b.position = position;
  b.planned_size = static_cast<int64_t>(plan.size());
  // Every sample of a planned batch shares its bucket; set even when this
  // rank's share is empty (the trainer draws the global batch's noise from it).
  b.bucket_width = images_[plan.front().image].bucket_width;
  b.bucket_height = images_[plan.front().image].bucket_height;
  // This rank's share of the planned batch (all of it in a single process).
  const size_t world = static_cast<size_t>(std::max(1, args_.world_size));
  const size_t rank = static_cast<size_t>(std::max(0, args_.rank));
  const size_t share_begin = rank * plan.size() / world, share_end = (rank + 1) * plan.size() / world;
  std::vector<int64_t> original_hw, crop_top_left, target_hw;
  std::vector<float> loss_weights;
  std::vector<torch::Tensor> pixels, latents;
  for (size_t s = share_begin; s < share_end; ++s) {
    const int64_t image = plan[s].image;
    // An image that did not decode is skipped (named once in the log and in
    // decode_failures()), like a file that was unreadable at open.
    if (IsDecodeFailure(image)) continue;
    const ImageEntry& e = images_[image];
    const SubsetConfig& subset = groups_[e.dataset_index].subsets[e.subset_index];
    const Reso bucket{e.bucket_width, e.bucket_height};
    const auto crop = CropOffsets(image, position.epoch, position.batch_index, static_cast<int>(s));
    if (serve_latents_) {
      const std::string key = latent_cache_->KeyText(content_sha256_[image], bucket.width, bucket.height,
                                                     crop.first, crop.second, plan[s].flip);
      auto latent = latent_cache_->Lookup(key);
      if (!latent.has_value()) {
        // Evicted or corrupted since CacheLatents: recompute this one.
        absl::StatusOr<cv::Mat> img = PrepareImage(e, crop, plan[s].flip);
        if (!img.ok()) {
          RETURN_IF_ERROR(RecordDecodeFailure(image, img.status()));
          b.skipped_images.push_back(images_[image].path.string());
          continue;
        }
        absl::StatusOr<torch::Tensor> encoded = absl::InternalError("encoder not run");
        try {
          std::lock_guard<std::mutex> lock(encoder_mu_);
          encoded = encoder_(ToTensorMinus1To1(*img).unsqueeze(0));
        } catch (const c10::Error& err) {
          return absl::InternalError(absl::StrCat("latent encoder failed: ", err.what_without_backtrace()));
        }
        ASSIGN_OR_RETURN(torch::Tensor enc, std::move(encoded));
        latent_cache_->CountComputed(1);
        RETURN_IF_ERROR(latent_cache_->Store(key, enc[0]));
        latent = enc[0];
      }
      latents.push_back(*latent);
    } else {
      absl::StatusOr<cv::Mat> img = PrepareImage(e, crop, plan[s].flip);
      if (!img.ok()) {
        RETURN_IF_ERROR(RecordDecodeFailure(image, img.status()));
        b.skipped_images.push_back(images_[image].path.string());
        continue;
      }
      if (subset.color_aug) {
        auto rng = DeterministicRng::ForKeys({args_.seed, static_cast<uint64_t>(position.epoch), kColor,
                                              static_cast<uint64_t>(position.batch_index), static_cast<uint64_t>(s)});
        try {
          ColorAugment(*img, rng);
        } catch (const cv::Exception& err) {
          return absl::InternalError(absl::StrCat("color_aug of '", e.path.string(), "' failed: ", err.what()));
        }
      }
      pixels.push_back(ToTensorMinus1To1(*img));
    }
    b.bucket_width = bucket.width;
    b.bucket_height = bucket.height;
    const auto [top, left] = SdxlCropTopLeft(bucket, GetCropLtrb(bucket, {e.width, e.height}), plan[s].flip);
    original_hw.insert(original_hw.end(), {e.height, e.width});
    crop_top_left.insert(crop_top_left.end(), {top, left});
    target_hw.insert(target_hw.end(), {bucket.height, bucket.width});
    loss_weights.push_back(e.is_reg ? static_cast<float>(args_.prior_loss_weight) : 1.0f);
    b.captions.push_back(CaptionFor(image, position.epoch, global_step, position.batch_index, static_cast<int>(s)));
    b.image_paths.push_back(e.path);
    b.slots.push_back(static_cast<int64_t>(s));
    b.flipped.push_back(plan[s].flip);
    b.is_reg.push_back(e.is_reg);
  }
  // Every sample skipped: an empty batch, which the iterator passes over.
  if (b.captions.empty()) return b;
  const int64_t n = b.size();
  b.original_hw = torch::tensor(original_hw, torch::kInt64).view({n, 2});
  b.crop_top_left = torch::tensor(crop_top_left, torch::kInt64).view({n, 2});
  b.target_hw = torch::tensor(target_hw, torch::kInt64).view({n, 2});
  b.loss_weights = torch::tensor(loss_weights, torch::kFloat32);
  if (serve_latents_) {
    b.latents = torch::stack(latents);
  } else {
    b.images = torch::stack(pixels);
  }
  return b;
}

absl::Status Dataset::CacheLatents(LatentEncoder encoder, LatentCacheOptions options) {
  if (!encoder) return absl::InvalidArgumentError("CacheLatents needs an encoder callback");
  for (const auto& g : groups_) {
    for (const auto& s : g.subsets) {
      if (s.random_crop || s.color_aug) {
        return absl::FailedPreconditionError(absl::StrCat(
            "cannot cache latents for '", s.image_dir.string(),
            "': random_crop/color_aug change the pixels every epoch; turn them off or disable the latent cache"));
      }
    }
  }
  ASSIGN_OR_RETURN(latent_cache_, LatentCache::Create(options));
  encoder_ = std::move(encoder);
  content_sha256_.assign(images_.size(), "");
  struct Job {
    int64_t image;
    bool flip;
    std::string key;
  };
  std::map<std::pair<int, int>, std::vector<Job>> todo;  // by bucket: one encoder batch = one size
  for (int64_t i = 0; i < static_cast<int64_t>(images_.size()); ++i) {
    const auto& e = images_[i];
    absl::StatusOr<std::string> bytes = ReadFileBytes(e.path);
    if (!bytes.ok()) {  // vanished since open: skipped like an image that does not decode
      RETURN_IF_ERROR(RecordDecodeFailure(i, bytes.status()));
      continue;
    }
    content_sha256_[i] = Sha256Hex(*bytes);
    const auto crop = CenterTrim({e.resized_width, e.resized_height}, {e.bucket_width, e.bucket_height});
    const bool flip_aug = groups_[e.dataset_index].subsets[e.subset_index].flip_aug;
    for (bool flip : {false, true}) {
      if (flip && !flip_aug) continue;
      std::string key = latent_cache_->KeyText(content_sha256_[i], e.bucket_width, e.bucket_height, crop.first,
                                               crop.second, flip);
      if (latent_cache_->Lookup(key).has_value()) continue;
      todo[{e.bucket_width, e.bucket_height}].push_back({i, flip, std::move(key)});
    }
  }
  const size_t bs = static_cast<size_t>(std::max(1, options.encode_batch_size));
  for (const auto& [reso, jobs] : todo) {
    for (size_t start = 0; start < jobs.size(); start += bs) {
      std::vector<torch::Tensor> pixels;
      std::vector<const Job*> encoded_jobs;
      const size_t end = std::min(jobs.size(), start + bs);
      for (size_t j = start; j < end; ++j) {
        if (IsDecodeFailure(jobs[j].image)) continue;
        const auto& e = images_[jobs[j].image];
        absl::StatusOr<cv::Mat> img = PrepareImage(
            e, CenterTrim({e.resized_width, e.resized_height}, {e.bucket_width, e.bucket_height}), jobs[j].flip);
        if (!img.ok()) {
          RETURN_IF_ERROR(RecordDecodeFailure(jobs[j].image, img.status()));
          continue;
        }
        pixels.push_back(ToTensorMinus1To1(*img));
        encoded_jobs.push_back(&jobs[j]);
      }
      if (pixels.empty()) continue;
      absl::StatusOr<torch::Tensor> enc;
      try {
        enc = encoder_(torch::stack(pixels));
      } catch (const c10::Error& err) {
        return absl::InternalError(absl::StrCat("latent encoder failed: ", err.what_without_backtrace()));
      }
      if (!enc.ok()) return enc.status();
      const int64_t count = static_cast<int64_t>(encoded_jobs.size());
      if (enc->dim() != 4 || enc->size(0) != count) {
        return absl::InvalidArgumentError(absl::StrCat("latent encoder returned shape ", enc->sizes().vec().size(),
                                                       "-d with batch ", enc->dim() ? enc->size(0) : 0, "; expected [",
                                                       count, ",C,H/8,W/8]"));
      }
      latent_cache_->CountComputed(count);
      for (int64_t j = 0; j < count; ++j) {
        RETURN_IF_ERROR(latent_cache_->Store(encoded_jobs[j]->key, (*enc)[j].detach().cpu()));
      }
    }
  }
  serve_latents_ = true;
  return absl::OkStatus();
}

CacheCounters Dataset::latent_cache_counters() const {
  return latent_cache_ ? latent_cache_->counters() : CacheCounters{};
}

absl::StatusOr<std::unique_ptr<BatchIterator>> Dataset::Iterate(DataPosition start, int64_t global_step) {
  return Iterate(start, global_step, IterateOptions{});
}

absl::StatusOr<std::unique_ptr<BatchIterator>> Dataset::Iterate(DataPosition start, int64_t global_step,
                                                                IterateOptions options) {
  if (start.epoch < 1) return absl::InvalidArgumentError(absl::StrCat("epoch must be >= 1; got ", start.epoch));
  auto plan = PlanEpoch(start.epoch);
  if (start.batch_index < 0 || start.batch_index > static_cast<int64_t>(plan.size())) {
    return absl::OutOfRangeError(absl::StrCat("batch index ", start.batch_index, " is outside epoch ", start.epoch,
                                              " (", plan.size(), " batches)"));
  }
  return std::unique_ptr<BatchIterator>(
      new PrefetchIterator(this, std::move(plan), start, global_step, options));
}

std::map<std::string, std::map<std::string, int64_t>> Dataset::TagFrequency() const {
  std::map<std::string, std::map<std::string, int64_t>> out;
  for (const auto& e : images_) {
    const auto& s = groups_[e.dataset_index].subsets[e.subset_index];
    auto& freq = out[s.image_dir.filename().string()];
    for (std::string tag : CaptionTags(e.caption, ",")) {
      std::transform(tag.begin(), tag.end(), tag.begin(), [](unsigned char c) { return std::tolower(c); });
      ++freq[tag];
    }
  }
  return out;
}

}  // namespace lorad::data
