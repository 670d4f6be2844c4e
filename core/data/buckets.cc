#include "core/data/buckets.h"

#include <cmath>
#include <cstdlib>

#include "absl/strings/str_cat.h"

namespace lorad::data {

std::vector<Reso> MakeBucketResolutions(Reso max_reso, int min_size, int max_size, int divisible) {
  const long long max_area = static_cast<long long>(max_reso.width) * max_reso.height;
  std::set<Reso> resos;
  // int(math.sqrt(max_area) // divisible) * divisible
  const int square = static_cast<int>(std::floor(std::sqrt(static_cast<double>(max_area)) / divisible)) * divisible;
  resos.insert({square, square});
  for (int width = min_size; width <= max_size; width += divisible) {
    const long long h = (max_area / width) / divisible * divisible;
    const int height = static_cast<int>(std::min<long long>(max_size, h));
    if (height >= min_size) {
      resos.insert({width, height});
      resos.insert({height, width});
    }
  }
  return {resos.begin(), resos.end()};
}

absl::StatusOr<BucketSelector> BucketSelector::Create(bool no_upscale, Reso max_reso, int min_size,
                                                      int max_size, int reso_steps) {
  if (reso_steps <= 0 || reso_steps % 8 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "bucket_reso_steps must be a positive multiple of 8 (the VAE downsamples by 8); got ", reso_steps));
  }
  if (max_reso.width <= 0 || max_reso.height <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("resolution must be positive; got ", max_reso.width, "x",
                                                   max_reso.height));
  }
  if (min_size <= 0 || min_size > max_size) {
    return absl::InvalidArgumentError(absl::StrCat("min_bucket_reso (", min_size,
                                                   ") must be positive and <= max_bucket_reso (", max_size, ")"));
  }
  if (max_size < max_reso.width || max_size < max_reso.height) {
    return absl::InvalidArgumentError(absl::StrCat("max_bucket_reso (", max_size,
                                                   ") must be >= the resolution's sides (", max_reso.width, "x",
                                                   max_reso.height, "); raise max_bucket_reso"));
  }
  BucketSelector s;
  s.no_upscale_ = no_upscale;
  s.max_reso_ = max_reso;
  s.max_area_ = static_cast<long long>(max_reso.width) * max_reso.height;
  s.reso_steps_ = reso_steps;
  if (!no_upscale) {
    s.predefined_ = MakeBucketResolutions(max_reso, min_size, max_size, reso_steps);
    s.predefined_set_ = {s.predefined_.begin(), s.predefined_.end()};
  }
  return s;
}

BucketSelector BucketSelector::Fixed(Reso resolution) {
  BucketSelector s;
  s.max_reso_ = resolution;
  s.max_area_ = static_cast<long long>(resolution.width) * resolution.height;
  s.predefined_ = {resolution};
  s.predefined_set_ = {resolution};
  return s;
}

int BucketSelector::RoundToSteps(double x) const {
  const int r = static_cast<int>(x + 0.5);
  return r - r % reso_steps_;
}

absl::StatusOr<BucketSelection> BucketSelector::Select(int image_width, int image_height) const {
  if (image_width <= 0 || image_height <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("image size ", image_width, "x", image_height, " is empty"));
  }
  const double aspect = static_cast<double>(image_width) / image_height;
  BucketSelection out;
  if (!no_upscale_) {
    Reso reso{image_width, image_height};
    if (!predefined_set_.contains(reso)) {
      // np.abs(ar_errors).argmin(): the first minimum in list order.
      size_t best = 0;
      double best_err = 0;
      for (size_t i = 0; i < predefined_.size(); ++i) {
        const double err = std::abs(static_cast<double>(predefined_[i].width) / predefined_[i].height - aspect);
        if (i == 0 || err < best_err) {
          best = i;
          best_err = err;
        }
      }
      reso = predefined_[best];
    }
    const double ar_reso = static_cast<double>(reso.width) / reso.height;
    const double scale = aspect > ar_reso ? static_cast<double>(reso.height) / image_height
                                          : static_cast<double>(reso.width) / image_width;
    out.bucket = reso;
    out.resized = {static_cast<int>(image_width * scale + 0.5), static_cast<int>(image_height * scale + 0.5)};
  } else {
    Reso resized{image_width, image_height};
    if (static_cast<long long>(image_width) * image_height > max_area_) {
      const double rw = std::sqrt(static_cast<double>(max_area_) * aspect);
      const double rh = static_cast<double>(max_area_) / rw;
      const int bw_rounded = RoundToSteps(rw);
      const int bh_in_wr = RoundToSteps(bw_rounded / aspect);
      const int bh_rounded = RoundToSteps(rh);
      const int bw_in_hr = RoundToSteps(bh_rounded * aspect);
      if (bh_in_wr == 0 || bh_rounded == 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            "image ", image_width, "x", image_height, " has an aspect ratio too extreme for bucket_no_upscale at ",
            max_reso_.width, "x", max_reso_.height, " with bucket_reso_steps ", reso_steps_,
            " (a side rounds to 0; kohya divides by zero here); crop the image or remove it"));
      }
      const double ar_w = static_cast<double>(bw_rounded) / bh_in_wr;
      const double ar_h = static_cast<double>(bw_in_hr) / bh_rounded;
      if (std::abs(ar_w - aspect) < std::abs(ar_h - aspect)) {
        resized = {bw_rounded, static_cast<int>(bw_rounded / aspect + 0.5)};
      } else {
        resized = {static_cast<int>(bh_rounded * aspect + 0.5), bh_rounded};
      }
    }
    out.resized = resized;
    out.bucket = {resized.width - resized.width % reso_steps_, resized.height - resized.height % reso_steps_};
  }
  if (out.bucket.width <= 0 || out.bucket.height <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "image ", image_width, "x", image_height, " gets an empty bucket (", out.bucket.width, "x",
        out.bucket.height, ") with bucket_no_upscale and bucket_reso_steps ", reso_steps_,
        ": a side is shorter than one step (kohya fails on this image); crop or remove it, or lower "
        "bucket_reso_steps"));
  }
  out.ar_error = static_cast<double>(out.bucket.width) / out.bucket.height - aspect;
  return out;
}

ResizeFilter ChooseResizeFilter(Reso from, Reso to) {
  if (from == to) return ResizeFilter::kNone;
  if (from.width > to.width && from.height > to.height) return ResizeFilter::kArea;
  return ResizeFilter::kLanczos;
}

CropLtrb GetCropLtrb(Reso bucket, Reso original) {
  const double bucket_ar = static_cast<double>(bucket.width) / bucket.height;
  const double image_ar = static_cast<double>(original.width) / original.height;
  double rw, rh;
  if (bucket_ar > image_ar) {
    rw = bucket.height * image_ar;
    rh = bucket.height;
  } else {
    rw = bucket.width;
    rh = bucket.width / image_ar;
  }
  const double left = std::floor((bucket.width - rw) / 2);
  const double top = std::floor((bucket.height - rh) / 2);
  return {left, top, left + rw, top + rh};
}

std::pair<int, int> SdxlCropTopLeft(Reso bucket, const CropLtrb& crop, bool flipped) {
  const int top = static_cast<int>(crop.top);
  const int left = flipped ? static_cast<int>(bucket.width - crop.right) : static_cast<int>(crop.left);
  return {top, left};
}

std::pair<int, int> CenterTrim(Reso resized, Reso bucket) {
  const int left = resized.width > bucket.width ? (resized.width - bucket.width) / 2 : 0;
  const int top = resized.height > bucket.height ? (resized.height - bucket.height) / 2 : 0;
  return {left, top};
}

}  // namespace lorad::data
