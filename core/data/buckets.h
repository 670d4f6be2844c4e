// kohya's aspect-ratio buckets (sd-scripts library/model_util.py:make_bucket_resolutions,
// library/train_util.py:BucketManager): the bucket list, choosing an
// image's bucket (with and without bucket_no_upscale), the resize/crop it gets
// and the crop coordinates kohya records for SDXL's size conditioning.
// Pure arithmetic, all sizes (width, height); thread-safe.
#pragma once

#include <set>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace lorad::data {

struct Reso {
  int width = 0;
  int height = 0;
  auto operator<=>(const Reso&) const = default;
};

// model_util.make_bucket_resolutions: sorted (w, h) list.
std::vector<Reso> MakeBucketResolutions(Reso max_reso, int min_size = 256, int max_size = 1024,
                                        int divisible = 64);

struct BucketSelection {
  Reso bucket;
  Reso resized;     // size the image is resized to before the crop
  double ar_error;  // bucket_w/bucket_h - image_w/image_h
};

// kohya's BucketManager for one dataset. With no_upscale=false it chooses among
// predefined resolutions (make_bucket_resolutions, or the single `max_reso` when
// bucketing is off); with no_upscale=true the bucket is derived from the image.
class BucketSelector {
 public:
  // Bucketing on: predefined buckets from make_bucket_resolutions (unless no_upscale).
  static absl::StatusOr<BucketSelector> Create(bool no_upscale, Reso max_reso, int min_size,
                                               int max_size, int reso_steps);
  // Bucketing off (enable_bucket=false): every image goes to `resolution`.
  static BucketSelector Fixed(Reso resolution);

  // select_bucket. An image that would get a zero-sized bucket (kohya divides
  // by zero or produces an empty crop) is an INVALID_ARGUMENT naming its size.
  absl::StatusOr<BucketSelection> Select(int image_width, int image_height) const;

  const std::vector<Reso>& predefined() const { return predefined_; }
  bool no_upscale() const { return no_upscale_; }

 private:
  int RoundToSteps(double x) const;

  bool no_upscale_ = false;
  Reso max_reso_;
  long long max_area_ = 0;
  int reso_steps_ = 64;
  std::vector<Reso> predefined_;
  std::set<Reso> predefined_set_;
};

enum class ResizeFilter {
  kNone,     // image already has the resized size
  kArea,     // cv2.INTER_AREA: kohya's choice when both sides shrink
  kLanczos,  // kohya uses PIL LANCZOS otherwise (any side grows); we use cv INTER_LANCZOS4
};

// resize_image's default interpolation choice for a resize from -> to.
ResizeFilter ChooseResizeFilter(Reso from, Reso to);

// BucketManager.get_crop_ltrb: (left, top, right, bottom) in bucket pixels, as
// if the image were fitted inside the bucket (floats, as kohya computes them).
struct CropLtrb {
  double left, top, right, bottom;
};
CropLtrb GetCropLtrb(Reso bucket, Reso original);

// What BaseDataset.__getitem__ feeds SDXL: (top, left) as ints; for a flipped
// image left becomes bucket_w - right.
std::pair<int, int> SdxlCropTopLeft(Reso bucket, const CropLtrb& crop, bool flipped);

// Where trim_and_resize_if_required cuts the resized image: centre
// ((resized - bucket) // 2 per axis) or, with random_crop, `random_left`/`top`
// drawn by the caller in [0, excess]. Returns (left, top).
std::pair<int, int> CenterTrim(Reso resized, Reso bucket);

}  // namespace lorad::data
