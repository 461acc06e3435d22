#pragma once
// Host code shared by the CPU and CUDA kernels of scale_candidates and multiscale_roi_crop:
// argument checks and the grouping of boxes by image. The Python wrappers (ssanet_ops/ops.py)
// check shapes and types with friendlier messages and convert boxes; these checks guard direct
// calls of torch.ops.ssanet_ops.*. Box values (finite, batch index in range) are checked on the
// CPU only (docs/operators.md section 4), with the shared check_box of common/scale_candidates.h, and
// reported with report_box_errors.

#include <cmath>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>

#include "common/checked.h"
#include "common/dtypes.h"
#include "common/roi_crop.h"
#include "common/stable.h"

namespace ssanet_ops::roi_crop {

constexpr const char* kCandidatesOp = "scale_candidates";
constexpr const char* kCropOp = "multiscale_roi_crop";

// The CUDA kernels take the scale factors by value, in a fixed-size array.
constexpr int64_t kMaxScales = 64;

// Boxes, centres and weights are computed in double for double input, else in float.
inline ScalarType compute_type(ScalarType input_type) {
  return input_type == ScalarType::Double ? ScalarType::Double : ScalarType::Float;
}

inline void check_scales(DoubleArrayRef scales, const char* op) {
  SSANET_CHECK(!scales.empty() && static_cast<int64_t>(scales.size()) <= kMaxScales, op,
               ": scales must hold 1 to ", kMaxScales, " factors, got ", scales.size());
  for (const double scale : scales) {
    SSANET_CHECK(std::isfinite(scale) && scale > 0, op,
                 ": scales must be positive finite factors, got ", scales);
  }
}

// boxes must be a [K, 5] tensor of `type` on `like`'s device.
inline void check_boxes(const Tensor& boxes, ScalarType type, const Tensor& like,
                        const char* op) {
  SSANET_CHECK(boxes.dim() == 2 && boxes.size(1) == 5, op,
               ": boxes must be a [K, 5] tensor of (batch_index, x1, y1, x2, y2), got shape ",
               boxes.sizes());
  SSANET_CHECK(boxes.scalar_type() == type, op, ": boxes must be ", type, ", got ",
               boxes.scalar_type());
  SSANET_CHECK(boxes.device() == like.device(), op, ": boxes must be on ", device_name(like),
               ", got ", device_name(boxes));
}

// centers, when given: [B, 2] rows (x, y), of the boxes' type and device. batch < 0: any B.
inline void check_centers(const std::optional<Tensor>& centers, const Tensor& boxes,
                          int64_t batch, const char* op) {
  if (!centers.has_value()) {
    return;
  }
  const Tensor& c = *centers;
  SSANET_CHECK(c.dim() == 2 && c.size(1) == 2 && (batch < 0 || c.size(0) == batch), op,
               ": centers must be a [", batch < 0 ? std::string("B") : std::to_string(batch),
               ", 2] tensor of (x, y), got shape ", c.sizes());
  SSANET_CHECK(c.scalar_type() == boxes.scalar_type() && c.device() == boxes.device(), op,
               ": centers must be ", boxes.scalar_type(), " on ", device_name(boxes),
               " like boxes, got ", c.scalar_type(), " on ", device_name(c));
}

// The message for the error bits of check_box / check_center; batch < 0: B not known.
inline void report_box_errors(int errors, int64_t batch, const char* op) {
  SSANET_CHECK(!(errors & kBoxNotFinite), op, ": boxes must have finite coordinates");
  SSANET_CHECK(!(errors & kBatchIndexInvalid), op,
               ": the batch index of each box (boxes[:, 0]) must be a whole number in [0, ",
               batch < 0 ? std::string("2^31") : std::to_string(batch), ")",
               batch < 0                                 ? ""
               : std::string_view(op) == "scale_candidates" ? " (the rows of centers)"
                                                            : " (the batch size of input)");
  SSANET_CHECK(!(errors & kCenterNotFinite), op, ": centers must be finite");
}

// Raises unless `sizes` are non-negative and their product fits in int64, so that no size
// computed from the arguments of a direct torch.ops call wraps (issue 12 item 7).
inline void check_sizes(std::initializer_list<int64_t> sizes, const char* what, const char* op) {
  Checked product = 1;
  for (const int64_t size : sizes) {
    SSANET_CHECK(size >= 0, op, ": ", what, " has a negative size ", size);
    product = product * size;
  }
  SSANET_CHECK(product.valid(), op, ": ", what, " has more than 2^63 - 1 elements");
}

inline void check_sampling_ratio(int64_t sampling_ratio, const char* op) {
  SSANET_CHECK(sampling_ratio <= kMaxSamplingRatio, op, ": sampling_ratio must be at most ",
               kMaxSamplingRatio,
               " (samples per bin and axis; <= 0 takes roi_align's adaptive grid, capped at the "
               "same bound), got ",
               sampling_ratio);
}

inline void check_output_size(IntArrayRef output_size, const char* op) {
  SSANET_CHECK(output_size.size() == 2 && output_size[0] > 0 && output_size[1] > 0, op,
               ": output_size must be two positive ints, got ", output_size);
  check_sizes({output_size[0], output_size[1]}, "output_size", op);
}

inline void check_image_size(double image_height, double image_width, const char* op) {
  SSANET_CHECK(std::isfinite(image_height) && std::isfinite(image_width) && image_height > 0 &&
                   image_width > 0,
               op, ": image_size must be a positive finite (height, width), got (", image_height,
               ", ", image_width, ")");
}

// scale_candidates' arguments, on every device: boxes float32 or float64.
inline void check_candidates_args(const Tensor& boxes, DoubleArrayRef scales,
                                  const std::optional<Tensor>& centers, double image_height,
                                  double image_width) {
  SSANET_CHECK(boxes.scalar_type() == ScalarType::Float ||
                   boxes.scalar_type() == ScalarType::Double,
               kCandidatesOp, ": boxes must be float32 or float64, got ", boxes.scalar_type());
  check_boxes(boxes, boxes.scalar_type(), boxes, kCandidatesOp);
  check_scales(scales, kCandidatesOp);
  check_centers(centers, boxes, -1, kCandidatesOp);
  check_image_size(image_height, image_width, kCandidatesOp);
}

// What scale_candidates does on every device before its kernel: the checks, the output
// [K, S, 4] (complete when K = 0), the contiguous boxes and centres, and the number of images
// (-1 without centres: the batch indices are then bounded by kBatchIndexLimit, and the grouping
// allocates by the number of boxes, not by the largest index; issue 12 item 8).
struct CandidatesCall {
  Tensor out, boxes, centers;
  int64_t batch;
};

inline CandidatesCall prepare_candidates(const Tensor& boxes, DoubleArrayRef scales,
                                         const std::optional<Tensor>& centers,
                                         double image_height, double image_width) {
  check_candidates_args(boxes, scales, centers, image_height, image_width);
  const int64_t S = static_cast<int64_t>(scales.size());
  CandidatesCall call{empty_like_device(boxes, {boxes.size(0), S, 4}), Tensor(), Tensor(), -1};
  if (boxes.size(0) > 0) {
    call.boxes = torch::stable::contiguous(boxes);
    if (centers.has_value()) {
      call.centers = torch::stable::contiguous(*centers);
      call.batch = call.centers.size(0);
    }
  }
  return call;
}

struct CropShape {
  int64_t out_h, out_w;
};

inline CropShape check_crop_args(const Tensor& input, const Tensor& boxes,
                                 DoubleArrayRef scales,
                                 const std::optional<Tensor>& centers,
                                 IntArrayRef output_size, double spatial_scale,
                                 int64_t sampling_ratio, const char* op) {
  SSANET_CHECK(input.dim() == 4, op, ": input must be a 4-d tensor [B, C, H, W], got ",
               input.dim(), " dimensions");
  check_boxes(boxes, compute_type(input.scalar_type()), input, op);
  check_scales(scales, op);
  check_centers(centers, boxes, input.size(0), op);
  check_output_size(output_size, op);
  SSANET_CHECK(std::isfinite(spatial_scale) && spatial_scale > 0, op,
               ": spatial_scale must be positive and finite, got ", spatial_scale);
  check_sampling_ratio(sampling_ratio, op);
  check_sizes({boxes.size(0), static_cast<int64_t>(scales.size()), input.size(1),
               output_size[0], output_size[1]},
              "the output [K, S, C, oh, ow]", op);
  return {output_size[0], output_size[1]};
}

inline CropShape check_crop_backward_args(const Tensor& grad_output, const Tensor& boxes,
                                          DoubleArrayRef scales,
                                          const std::optional<Tensor>& centers,
                                          IntArrayRef output_size, double spatial_scale,
                                          int64_t sampling_ratio, int64_t batch,
                                          int64_t channels, int64_t height, int64_t width,
                                          const char* op) {
  check_output_size(output_size, op);
  check_sizes({batch, channels, height, width}, "the input gradient [B, C, H, W]", op);
  check_boxes(boxes, compute_type(grad_output.scalar_type()), grad_output, op);
  check_scales(scales, op);
  check_centers(centers, boxes, batch, op);
  const int64_t expected[5] = {boxes.size(0), static_cast<int64_t>(scales.size()), channels,
                               output_size[0], output_size[1]};
  SSANET_CHECK(same_sizes(grad_output.sizes(), IntArrayRef(expected)), op,
               ": grad_output must have shape ", IntArrayRef(expected), ", got ",
               grad_output.sizes());
  SSANET_CHECK(std::isfinite(spatial_scale) && spatial_scale > 0, op,
               ": spatial_scale must be positive and finite, got ", spatial_scale);
  check_sampling_ratio(sampling_ratio, op);
  return {output_size[0], output_size[1]};
}

// The boxes grouped by image, on the boxes' device and without a host synchronisation, so
// that the default centres and the deterministic backward visit each image's boxes once
// (issue 9 defect 6). keys: [K] int64, image_key of every box (kNoImage sorts first). order:
// the box indices sorted by key, stably, so an image's boxes keep index order; sorted: the keys
// in that order. With the number of images B known, offsets: [B + 1], the boxes of image b
// being order[offsets[b]:offsets[b + 1]] (first_of_image of common/scale_candidates.h, which
// each backend runs on its device: image_offsets). Used by the CPU kernels and CUDA's
// scale_candidates; CUDA's multiscale_roi_crop groups the boxes in its setup kernel instead, in
// the same order, without torch's sort (roi_crop/kernels.cuh, issue 24).
struct ImageSegments {
  Tensor keys, order, sorted, offsets;
};

// The keys sorted: torch.sort(keys, stable=True) through the dispatcher, on keys' device (the
// stable API has no sort of its own).
inline ImageSegments sort_by_image(const Tensor& keys) {
  const auto [sorted, order] = call_aten<2>("aten::sort", "stable", keys,
                                            std::optional<bool>(true), int64_t{0}, false);
  return {keys, order, sorted, Tensor()};
}

template <typename T>
CropParams<T> crop_params(int64_t boxes, int64_t scales, int64_t batch, int64_t channels,
                          int64_t height, int64_t width, CropShape shape, double spatial_scale,
                          int64_t sampling_ratio, bool aligned, bool clip) {
  return {boxes,
          scales,
          batch,
          channels,
          height,
          width,
          shape.out_h,
          shape.out_w,
          static_cast<T>(spatial_scale),
          sampling_ratio,
          aligned,
          clip,
          // docs/operators.md section 2: clip to the image, (H, W) of the map / spatial_scale.
          static_cast<T>(static_cast<double>(height) / spatial_scale),
          static_cast<T>(static_cast<double>(width) / spatial_scale)};
}

}  // namespace ssanet_ops::roi_crop
