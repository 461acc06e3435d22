#pragma once
// Host code shared by the CPU and CUDA kernels of scale_candidates and multiscale_roi_crop:
// argument checks and the grouping of boxes by image. The Python wrappers (ssanet_ops/ops.py)
// check shapes and types with friendlier messages and convert boxes; these checks guard direct
// calls of torch.ops.ssanet_ops.*. Box values (finite, batch index in range) are checked on the
// CPU only (docs/operators.md section 4), with the shared check_box of common/scale_candidates.h, and
// reported with report_box_errors.

#include <ATen/core/Tensor.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/searchsorted.h>
#include <ATen/ops/sort.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>

#include "common/checked.h"
#include "common/dtypes.h"
#include "common/roi_crop.h"

namespace ssanet_ops::roi_crop {

constexpr const char* kCandidatesOp = "scale_candidates";
constexpr const char* kCropOp = "multiscale_roi_crop";

// The CUDA kernels take the scale factors by value, in a fixed-size array.
constexpr int64_t kMaxScales = 64;

// Boxes, centres and weights are computed in double for double input, else in float.
inline at::ScalarType compute_type(at::ScalarType input_type) {
  return input_type == at::kDouble ? at::kDouble : at::kFloat;
}

inline void check_scales(at::ArrayRef<double> scales, const char* op) {
  TORCH_CHECK(!scales.empty() && static_cast<int64_t>(scales.size()) <= kMaxScales, op,
              ": scales must hold 1 to ", kMaxScales, " factors, got ", scales.size());
  for (const double scale : scales) {
    TORCH_CHECK(std::isfinite(scale) && scale > 0, op,
                ": scales must be positive finite factors, got ", scales);
  }
}

inline void check_boxes(const at::Tensor& boxes, at::ScalarType type, at::Device device,
                        const char* op) {
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(1) == 5, op,
              ": boxes must be a [K, 5] tensor of (batch_index, x1, y1, x2, y2), got shape ",
              boxes.sizes());
  TORCH_CHECK(boxes.scalar_type() == type, op, ": boxes must be ", type, ", got ",
              boxes.scalar_type());
  TORCH_CHECK(boxes.device() == device, op, ": boxes must be on ", device, ", got ",
              boxes.device());
}

// centers, when given: [B, 2] rows (x, y), of the boxes' type and device. batch < 0: any B.
inline void check_centers(const std::optional<at::Tensor>& centers, const at::Tensor& boxes,
                          int64_t batch, const char* op) {
  if (!centers.has_value()) {
    return;
  }
  const at::Tensor& c = *centers;
  TORCH_CHECK(c.dim() == 2 && c.size(1) == 2 && (batch < 0 || c.size(0) == batch), op,
              ": centers must be a [", batch < 0 ? std::string("B") : std::to_string(batch),
              ", 2] tensor of (x, y), got shape ", c.sizes());
  TORCH_CHECK(c.scalar_type() == boxes.scalar_type() && c.device() == boxes.device(), op,
              ": centers must be ", boxes.scalar_type(), " on ", boxes.device(), " like boxes, got ",
              c.scalar_type(), " on ", c.device());
}

// The message for the error bits of check_box / check_center; batch < 0: B not known.
inline void report_box_errors(int errors, int64_t batch, const char* op) {
  TORCH_CHECK(!(errors & kBoxNotFinite), op, ": boxes must have finite coordinates");
  TORCH_CHECK(!(errors & kBatchIndexInvalid), op,
              ": the batch index of each box (boxes[:, 0]) must be a whole number in [0, ",
              batch < 0 ? std::string("2^31") : std::to_string(batch), ")",
              batch < 0                                 ? ""
              : std::string_view(op) == "scale_candidates" ? " (the rows of centers)"
                                                           : " (the batch size of input)");
  TORCH_CHECK(!(errors & kCenterNotFinite), op, ": centers must be finite");
}

// Raises unless `sizes` are non-negative and their product fits in int64, so that no size
// computed from the arguments of a direct torch.ops call wraps (issue 12 item 7).
inline void check_sizes(std::initializer_list<int64_t> sizes, const char* what, const char* op) {
  Checked product = 1;
  for (const int64_t size : sizes) {
    TORCH_CHECK(size >= 0, op, ": ", what, " has a negative size ", size);
    product = product * size;
  }
  TORCH_CHECK(product.valid(), op, ": ", what, " has more than 2^63 - 1 elements");
}

inline void check_sampling_ratio(int64_t sampling_ratio, const char* op) {
  TORCH_CHECK(sampling_ratio <= kMaxSamplingRatio, op, ": sampling_ratio must be at most ",
              kMaxSamplingRatio,
              " (samples per bin and axis; <= 0 takes roi_align's adaptive grid, capped at the "
              "same bound), got ",
              sampling_ratio);
}

inline void check_output_size(at::IntArrayRef output_size, const char* op) {
  TORCH_CHECK(output_size.size() == 2 && output_size[0] > 0 && output_size[1] > 0, op,
              ": output_size must be two positive ints, got ", output_size);
  check_sizes({output_size[0], output_size[1]}, "output_size", op);
}

inline void check_image_size(double image_height, double image_width, const char* op) {
  TORCH_CHECK(std::isfinite(image_height) && std::isfinite(image_width) && image_height > 0 &&
                  image_width > 0,
              op, ": image_size must be a positive finite (height, width), got (", image_height,
              ", ", image_width, ")");
}

// scale_candidates' arguments, on every device: boxes float32 or float64.
inline void check_candidates_args(const at::Tensor& boxes, at::ArrayRef<double> scales,
                                  const std::optional<at::Tensor>& centers, double image_height,
                                  double image_width) {
  TORCH_CHECK(boxes.scalar_type() == at::kFloat || boxes.scalar_type() == at::kDouble,
              kCandidatesOp, ": boxes must be float32 or float64, got ", boxes.scalar_type());
  check_boxes(boxes, boxes.scalar_type(), boxes.device(), kCandidatesOp);
  check_scales(scales, kCandidatesOp);
  check_centers(centers, boxes, -1, kCandidatesOp);
  check_image_size(image_height, image_width, kCandidatesOp);
}

struct CropShape {
  int64_t out_h, out_w;
};

inline CropShape check_crop_args(const at::Tensor& input, const at::Tensor& boxes,
                                 at::ArrayRef<double> scales,
                                 const std::optional<at::Tensor>& centers,
                                 at::IntArrayRef output_size, double spatial_scale,
                                 int64_t sampling_ratio, const char* op) {
  TORCH_CHECK(input.dim() == 4, op, ": input must be a 4-d tensor [B, C, H, W], got ",
              input.dim(), " dimensions");
  check_boxes(boxes, compute_type(input.scalar_type()), input.device(), op);
  check_scales(scales, op);
  check_centers(centers, boxes, input.size(0), op);
  check_output_size(output_size, op);
  TORCH_CHECK(std::isfinite(spatial_scale) && spatial_scale > 0, op,
              ": spatial_scale must be positive and finite, got ", spatial_scale);
  check_sampling_ratio(sampling_ratio, op);
  check_sizes({boxes.size(0), static_cast<int64_t>(scales.size()), input.size(1),
               output_size[0], output_size[1]},
              "the output [K, S, C, oh, ow]", op);
  return {output_size[0], output_size[1]};
}

inline CropShape check_crop_backward_args(const at::Tensor& grad_output, const at::Tensor& boxes,
                                          at::ArrayRef<double> scales,
                                          const std::optional<at::Tensor>& centers,
                                          at::IntArrayRef output_size, double spatial_scale,
                                          int64_t sampling_ratio, int64_t batch,
                                          int64_t channels, int64_t height, int64_t width,
                                          const char* op) {
  check_output_size(output_size, op);
  check_sizes({batch, channels, height, width}, "the input gradient [B, C, H, W]", op);
  check_boxes(boxes, compute_type(grad_output.scalar_type()), grad_output.device(), op);
  check_scales(scales, op);
  check_centers(centers, boxes, batch, op);
  const int64_t expected[5] = {boxes.size(0), static_cast<int64_t>(scales.size()), channels,
                               output_size[0], output_size[1]};
  TORCH_CHECK(grad_output.sizes() == at::IntArrayRef(expected), op,
              ": grad_output must have shape ", at::IntArrayRef(expected), ", got ",
              grad_output.sizes());
  TORCH_CHECK(std::isfinite(spatial_scale) && spatial_scale > 0, op,
              ": spatial_scale must be positive and finite, got ", spatial_scale);
  check_sampling_ratio(sampling_ratio, op);
  return {output_size[0], output_size[1]};
}

// The boxes grouped by image, on the boxes' device and without a host synchronisation, so
// that the default centres and the deterministic backward visit each image's boxes once
// (issue 9 defect 6). keys: [K] int64, image_key of every box (kNoImage sorts first). order:
// the box indices sorted by key, stably, so an image's boxes keep index order; sorted: the keys
// in that order. With the number of images B known (batch >= 0), offsets: [B + 1], the boxes of
// image b being order[offsets[b]:offsets[b + 1]].
struct ImageSegments {
  at::Tensor keys, order, sorted, offsets;
};

inline ImageSegments group_by_image(const at::Tensor& keys, int64_t batch) {
  ImageSegments segments;
  segments.keys = keys;
  std::tie(segments.sorted, segments.order) =
      keys.sort(/*stable=*/true, /*dim=*/0, /*descending=*/false);
  if (batch >= 0) {
    segments.offsets = at::searchsorted(segments.sorted, at::arange(batch + 1, keys.options()));
  }
  return segments;
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
