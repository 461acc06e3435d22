#pragma once
// Argument checks shared by the CPU and CUDA kernels of scale_candidates and
// multiscale_roi_crop. The Python wrappers (ssanet_ops/ops.py) check shapes and types with
// friendlier messages and convert boxes; these guard direct calls of torch.ops.ssanet_ops.*.
// Checks of the box values (finite, batch index in range) need the data: each backend runs the
// shared check_box of common/scale_candidates.h and reports with box_error_message.

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <cmath>
#include <optional>
#include <string>
#include <string_view>

#include "common/roi_crop.h"

namespace ssanet_ops::roi_crop {

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

inline void check_image_size(double image_height, double image_width, const char* op) {
  TORCH_CHECK(std::isfinite(image_height) && std::isfinite(image_width) && image_height > 0 &&
                  image_width > 0,
              op, ": image_size must be a positive finite (height, width), got (", image_height,
              ", ", image_width, ")");
}

struct CropShape {
  int64_t out_h, out_w;
};

inline CropShape check_crop_args(const at::Tensor& input, const at::Tensor& boxes,
                                 at::ArrayRef<double> scales,
                                 const std::optional<at::Tensor>& centers,
                                 at::IntArrayRef output_size, double spatial_scale,
                                 const char* op) {
  TORCH_CHECK(input.dim() == 4, op, ": input must be a 4-d tensor [B, C, H, W], got ",
              input.dim(), " dimensions");
  check_boxes(boxes, compute_type(input.scalar_type()), input.device(), op);
  check_scales(scales, op);
  check_centers(centers, boxes, input.size(0), op);
  TORCH_CHECK(output_size.size() == 2 && output_size[0] > 0 && output_size[1] > 0, op,
              ": output_size must be two positive ints, got ", output_size);
  TORCH_CHECK(std::isfinite(spatial_scale) && spatial_scale > 0, op,
              ": spatial_scale must be positive and finite, got ", spatial_scale);
  return {output_size[0], output_size[1]};
}

inline CropShape check_crop_backward_args(const at::Tensor& grad_output, const at::Tensor& boxes,
                                          at::ArrayRef<double> scales,
                                          const std::optional<at::Tensor>& centers,
                                          at::IntArrayRef output_size, double spatial_scale,
                                          int64_t batch, int64_t channels, const char* op) {
  TORCH_CHECK(output_size.size() == 2 && output_size[0] > 0 && output_size[1] > 0, op,
              ": output_size must be two positive ints, got ", output_size);
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
  return {output_size[0], output_size[1]};
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
