#pragma once
// multiscale_roi_crop (docs/operators.md section 2): candidate n = k * S + s is scale s of box k; its
// sample grid is roi_align's grid of that candidate box. Shared by the CPU and CUDA kernels.

#include <cstdint>

#include "common/bilinear.h"
#include "common/macros.h"
#include "common/scale_candidates.h"

namespace ssanet_ops::roi_crop {

// Everything a kernel needs besides the tensors. T is the type boxes and weights are computed
// in: the input's type, float for float16 and bfloat16.
template <typename T>
struct CropParams {
  int64_t boxes;                           // K
  int64_t scales;                          // S
  int64_t batch, channels, height, width;  // of the input map
  int64_t out_h, out_w;
  T spatial_scale;
  int64_t sampling_ratio;
  bool aligned, clip;
  T image_height, image_width;  // clip bounds: the map's size / spatial_scale

  SSANET_HOST_DEVICE int64_t candidates() const { return boxes * scales; }
  SSANET_HOST_DEVICE int64_t cells() const { return out_h * out_w; }
};

// The sample grid of candidate box `candidate` on the input map.
template <typename T>
SSANET_HOST_DEVICE RoiGrid<T> candidate_grid(const CropParams<T>& p, const Box<T>& candidate) {
  return roi_grid(candidate, p.spatial_scale, p.aligned, p.sampling_ratio, p.out_h, p.out_w,
                  p.height, p.width);
}

// The grid of candidate `scale` of `box`, whose image has 2c = `center`.
template <typename T>
SSANET_HOST_DEVICE RoiGrid<T> candidate_grid(const CropParams<T>& p, const Box<T>& box,
                                             TwiceCenter center, T scale) {
  return candidate_grid(p, candidate_box(box, anchor_corners(box, center), scale, p.clip,
                                         p.image_height, p.image_width));
}

// The gradient that one candidate's output gradient grad[oh, ow] (with strides) sends to map
// element (y, x) of its image and channel: the sum over the output cells whose samples reach
// (y, x) of grad * (y weight) * (x weight) / count, in a fixed order (rows, then columns).
// Cells whose weight on (y, x) is zero on either axis are skipped, not multiplied by zero, so
// that a NaN or infinite gradient reaches exactly the elements its cell's samples read with a
// non-zero weight, as on the CPU and in the atomic kernel (issue 9 defect 8). row_offset: the
// output row that grad's row 0 holds (0 for the whole gradient; the row a staged tile starts at).
template <typename T, typename grad_t>
SSANET_HOST_DEVICE T gather_gradient(const RoiGrid<T>& g, const grad_t* grad, int64_t stride_h,
                                     int64_t stride_w, int64_t y, int64_t x,
                                     int64_t row_offset = 0) {
  int64_t first_row, last_row, first_column, last_column;
  outputs_reaching(g.y, y, first_row, last_row);
  outputs_reaching(g.x, x, first_column, last_column);
  T total = 0;
  for (int64_t ph = first_row; ph <= last_row; ++ph) {
    const T wy = weight_to(g.y, ph, y);
    if (wy == T(0)) {
      continue;
    }
    T row = 0;
    for (int64_t pw = first_column; pw <= last_column; ++pw) {
      const T wx = weight_to(g.x, pw, x);
      if (wx != T(0)) {
        row += wx * static_cast<T>(grad[(ph - row_offset) * stride_h + pw * stride_w]);
      }
    }
    total += wy * row;
  }
  return total / g.count;
}

}  // namespace ssanet_ops::roi_crop
