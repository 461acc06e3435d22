#pragma once
// The sample grid and bilinear weights of torchvision.ops.roi_align (docs/operators.md section 2: the crop
// samples each candidate exactly as roi_align does), written per axis and shared by the CPU and
// CUDA kernels of multiscale_roi_crop.
//
// roi_align averages, in each of the oh x ow output cells, a grid of gh x gw bilinear samples.
// Sample (p, i) of the y axis sits at  start + p * bin + (i + 1/2) * bin / gh,  and likewise on
// x; a sample (y, x) counts as zero when y is outside [-1, H] or x outside [-1, W], otherwise
// it is clamped to the map and interpolated from its four neighbours with weights
// (1 - ly)(1 - lx), (1 - ly) lx, ly (1 - lx), ly lx. The weight of a sample is therefore the
// product of a y factor and an x factor, and the two axes are handled separately here: a
// kernel combines the taps of its y and x samples.

#include <cstdint>

#include "common/macros.h"
#include "common/scale_candidates.h"

namespace ssanet_ops::roi_crop {

// One axis of one box's sample grid.
template <typename T>
struct AxisGrid {
  T start;          // box start on the map (times spatial_scale, minus 0.5 when aligned)
  T bin;            // bin length: box length / outputs
  int64_t grid;     // samples per bin (0: none, the output is zero)
  int64_t outputs;  // oh or ow
  int64_t size;     // H or W of the map

  // The same expression, in the same order, as roi_align's CPU kernel, and with its roundings
  // on every device: p * bin is rounded on its own, not contracted with the addition into an
  // FMA (nvcc's default, and the simulator's), which would move a sample by an ulp and could
  // take it across -1 or `size`, where axis_tap's rule jumps (issue 20). The second product is
  // divided before it is added, so it cannot be contracted.
  SSANET_HOST_DEVICE T sample(int64_t p, int64_t i) const {
    return start + unfused_product(static_cast<T>(p), bin) +
           (static_cast<T>(i) + T(0.5)) * bin / static_cast<T>(grid);
  }
};

template <typename T>
struct RoiGrid {
  AxisGrid<T> y, x;
  T count;  // samples averaged per output cell, at least 1
};

// The most samples per bin and axis (issue 12 item 9): an explicit sampling_ratio above it is
// refused, and roi_align's adaptive grid is capped at it, so that no box costs more than
// kMaxSamplingRatio^2 samples per output cell. Below the cap the grid is roi_align's; a box
// reaches it only when it spans more than 512 map pixels per output cell on an axis.
constexpr int64_t kMaxSamplingRatio = 512;

// roi_align's adaptive grid, ceil(length / outputs), capped at kMaxSamplingRatio (0 for empty,
// inverted or non-finite boxes).
template <typename T>
SSANET_HOST_DEVICE int64_t adaptive_grid(T length, int64_t outputs) {
  const T ratio = length / static_cast<T>(outputs);
  if (!(ratio > T(0))) {
    return 0;
  }
  if (ratio >= static_cast<T>(kMaxSamplingRatio)) {  // also keeps the conversion below defined
    return kMaxSamplingRatio;
  }
  const int64_t whole = static_cast<int64_t>(ratio);
  return static_cast<T>(whole) < ratio ? whole + 1 : whole;
}

// The sample grid of `box` (image coordinates) on a height x width map, as roi_align builds it
// (its products rounded on their own, as in AxisGrid::sample).
template <typename T>
SSANET_HOST_DEVICE RoiGrid<T> roi_grid(const Box<T>& box, T spatial_scale, bool aligned,
                                       int64_t sampling_ratio, int64_t out_h, int64_t out_w,
                                       int64_t height, int64_t width) {
  const T offset = aligned ? T(0.5) : T(0);
  const T start_x = unfused_product(box.x1, spatial_scale) - offset;
  const T start_y = unfused_product(box.y1, spatial_scale) - offset;
  T length_x = (unfused_product(box.x2, spatial_scale) - offset) - start_x;
  T length_y = (unfused_product(box.y2, spatial_scale) - offset) - start_y;
  if (!aligned) {  // roi_align's legacy mode forces boxes to at least 1x1
    length_x = length_x > T(1) ? length_x : T(1);
    length_y = length_y > T(1) ? length_y : T(1);
  }
  RoiGrid<T> g;
  g.y = {start_y, length_y / static_cast<T>(out_h),
         sampling_ratio > 0 ? sampling_ratio : adaptive_grid(length_y, out_h), out_h, height};
  g.x = {start_x, length_x / static_cast<T>(out_w),
         sampling_ratio > 0 ? sampling_ratio : adaptive_grid(length_x, out_w), out_w, width};
  const int64_t samples = g.y.grid * g.x.grid;
  g.count = static_cast<T>(samples > 1 ? samples : 1);
  return g;
}

// The two map indices a sample coordinate reads on one axis and their weights.
template <typename T>
struct Tap {
  int64_t low, high;
  T w_low, w_high;
};

// roi_align's rule on one axis: false (the sample counts as zero) outside [-1, size];
// otherwise clamps to the map and splits the weight between the two neighbours.
template <typename T>
SSANET_HOST_DEVICE bool axis_tap(T coordinate, int64_t size, Tap<T>& tap) {
  // Written as !(inside) so that NaN counts as outside. An empty map has nothing to read.
  if (!(coordinate >= T(-1) && coordinate <= static_cast<T>(size)) || size <= 0) {
    return false;
  }
  if (coordinate <= T(0)) {
    coordinate = 0;
  }
  tap.low = static_cast<int64_t>(coordinate);
  if (tap.low >= size - 1) {
    tap.low = tap.high = size - 1;
    coordinate = static_cast<T>(tap.low);
  } else {
    tap.high = tap.low + 1;
  }
  const T fraction = coordinate - static_cast<T>(tap.low);
  tap.w_low = T(1) - fraction;
  tap.w_high = fraction;
  return true;
}

// For the backward as a gather (each map element sums what reached it, in a fixed order):
// the total weight that the samples of output p give to map index r on this axis.
template <typename T>
SSANET_HOST_DEVICE T weight_to(const AxisGrid<T>& axis, int64_t p, int64_t r) {
  T total = 0;
  for (int64_t i = 0; i < axis.grid; ++i) {
    Tap<T> tap;
    if (axis_tap(axis.sample(p, i), axis.size, tap)) {
      if (tap.low == r) {
        total += tap.w_low;
      }
      if (tap.high == r) {
        total += tap.w_high;
      }
    }
  }
  return total;
}

template <typename T>
SSANET_HOST_DEVICE int64_t floor_to_int(T value) {
  const int64_t whole = static_cast<int64_t>(value);
  return static_cast<T>(whole) > value ? whole - 1 : whole;
}

// Outputs [first, last] (empty when first > last) whose samples may reach map index r: a
// superset, weight_to gives the exact weights. A sample reaches r only from [r - 1, r + 1]
// (clamping moves [-1, 0] to 0 and [size - 1, size] to size - 1), and the samples of output p
// lie between start + p * bin and start + (p + 1) * bin. The window is widened by `slack` to
// cover the rounding of both computations, generously: extra outputs only cost a weight_to
// that returns 0.
template <typename T>
SSANET_HOST_DEVICE void outputs_reaching(const AxisGrid<T>& axis, int64_t r, int64_t& first,
                                         int64_t& last) {
  first = 0;
  last = -1;
  if (axis.grid <= 0 || axis.outputs <= 0) {
    return;
  }
  const T end = axis.start + static_cast<T>(axis.outputs) * axis.bin;
  const T magnitude = (axis.start < T(0) ? -axis.start : axis.start) + (end < T(0) ? -end : end);
  const T slack = T(1e-4) * (T(1) + magnitude + static_cast<T>(r));
  const T window_low = static_cast<T>(r) - T(1) - slack - axis.start;
  const T window_high = static_cast<T>(r) + T(1) + slack - axis.start;
  if (axis.bin == T(0)) {  // every sample sits at start
    if (window_low <= T(0) && T(0) <= window_high) {
      first = 0;
      last = axis.outputs - 1;
    }
    return;
  }
  const T a = window_low / axis.bin;
  const T b = window_high / axis.bin;
  // A candidate that overflowed (a box near the type's range, grown without clip) has
  // infinite or NaN bounds; its samples are outside the map (axis_tap), so it reaches nothing,
  // and the casts below stay defined.
  if (!(is_finite(a) && is_finite(b))) {
    return;
  }
  // bin > 0: p in [a - 1, b]; bin < 0 (an inverted box): p in [b - 1, a].
  T low = (a < b ? a : b) - T(1);
  T high = a < b ? b : a;
  const T outputs = static_cast<T>(axis.outputs);
  low = low < T(-1) ? T(-1) : (low > outputs ? outputs : low);  // keeps the casts defined
  high = high < T(-1) ? T(-1) : (high > outputs ? outputs : high);
  first = floor_to_int(low);
  last = floor_to_int(high) + 1;
  first = first < 0 ? 0 : first;
  last = last > axis.outputs - 1 ? axis.outputs - 1 : last;
}

}  // namespace ssanet_ops::roi_crop
