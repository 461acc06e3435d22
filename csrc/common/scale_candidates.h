#pragma once
// Multi-scale candidate boxes (docs/operators.md section 2; paper section 3.2), shared by the CPU and CUDA
// kernels of scale_candidates and multiscale_roi_crop, so that the CPU tests exercise the
// geometry the GPU computes.
//
// A box (x1, y1, x2, y2) of image b and that image's centre c give S candidates, one per scale
// factor s: width s*w and height s*h, anchored at psi (the corner farthest from c) when s >= 1,
// so the box grows towards c, and at eta (the corner nearest to c) when s < 1, so it shrinks
// towards the corner nearest c. s = 1 gives the box itself. With clip, each candidate is clipped
// to the image [0, W_img] x [0, H_img].

#include <cstdint>

#include "common/macros.h"

namespace ssanet_ops::roi_crop {

template <typename T>
struct Box {
  T x1, y1, x2, y2;
};

// Box k of a contiguous [K, 5] tensor of rows (batch_index, x1, y1, x2, y2), as roi_align takes.
template <typename T>
SSANET_HOST_DEVICE Box<T> box_at(const T* boxes, int64_t k) {
  const T* row = boxes + 5 * k;
  return {row[1], row[2], row[3], row[4]};
}

// The image of box k. Valid once check_box has passed: a whole number, so truncation is exact.
template <typename T>
SSANET_HOST_DEVICE int64_t image_of(const T* boxes, int64_t k) {
  return static_cast<int64_t>(boxes[5 * k]);
}

template <typename T>
SSANET_HOST_DEVICE bool is_finite(T value) {
  return value - value == T(0);  // false for infinities and NaN
}

// Error bits of check_box and check_center; the host turns them into messages.
constexpr int kBoxNotFinite = 1;
constexpr int kBatchIndexInvalid = 2;
constexpr int kCenterNotFinite = 4;

// Checks box k: finite coordinates, and a batch index that is a whole number in
// [0, batch) (in [0, 2^31) when batch < 0, that is when the number of images is not known).
template <typename T>
SSANET_HOST_DEVICE int check_box(const T* boxes, int64_t k, int64_t batch) {
  const T* row = boxes + 5 * k;
  int error = 0;
  for (int i = 1; i < 5; ++i) {
    if (!is_finite(row[i])) {
      error |= kBoxNotFinite;
    }
  }
  const T index = row[0];
  const T limit = batch >= 0 ? static_cast<T>(batch) : T(2147483648.0);
  // Written as !(in range) so that NaN fails; the cast is then in range.
  if (!(index >= T(0) && index < limit) ||
      static_cast<T>(static_cast<int64_t>(index)) != index) {
    error |= kBatchIndexInvalid;
  }
  return error;
}

template <typename T>
SSANET_HOST_DEVICE int check_center(const T* centers, int64_t b) {
  return is_finite(centers[2 * b]) && is_finite(centers[2 * b + 1]) ? 0 : kCenterNotFinite;
}

template <typename T>
SSANET_HOST_DEVICE T center_x(const Box<T>& box) {
  return (box.x1 + box.x2) / T(2);
}

template <typename T>
SSANET_HOST_DEVICE T center_y(const Box<T>& box) {
  return (box.y1 + box.y2) / T(2);
}

// The default centre of an image (docs/operators.md section 2): the mean of the centres of its boxes,
// summed in box order, (0, 0) when it has none. A kernel that accumulates every image in one
// pass over the boxes adds the same terms in the same order, so gets the same bits.
template <typename T>
SSANET_HOST_DEVICE void mean_box_center(const T* boxes, int64_t count, int64_t image,
                                        T& mean_x, T& mean_y) {
  T sum_x = 0, sum_y = 0;
  int64_t members = 0;
  for (int64_t k = 0; k < count; ++k) {
    if (image_of(boxes, k) == image) {
      const Box<T> box = box_at(boxes, k);
      sum_x += center_x(box);
      sum_y += center_y(box);
      ++members;
    }
  }
  mean_x = members > 0 ? sum_x / static_cast<T>(members) : T(0);
  mean_y = members > 0 ? sum_y / static_cast<T>(members) : T(0);
}

// Corners in the contract's order: 0 = (x1, y1), 1 = (x2, y1), 2 = (x1, y2), 3 = (x2, y2).
template <typename T>
SSANET_HOST_DEVICE T corner_distance_squared(const Box<T>& box, int corner, T cx, T cy) {
  const T dx = ((corner & 1) ? box.x2 : box.x1) - cx;
  const T dy = ((corner & 2) ? box.y2 : box.y1) - cy;
  return dx * dx + dy * dy;
}

// psi (farthest from the centre) and eta (nearest); a tie keeps the first corner.
struct Anchors {
  int psi, eta;
};

template <typename T>
SSANET_HOST_DEVICE Anchors anchor_corners(const Box<T>& box, T cx, T cy) {
  Anchors anchors{0, 0};
  T farthest = corner_distance_squared(box, 0, cx, cy);
  T nearest = farthest;
  for (int corner = 1; corner < 4; ++corner) {
    const T distance = corner_distance_squared(box, corner, cx, cy);
    if (distance > farthest) {
      farthest = distance;
      anchors.psi = corner;
    }
    if (distance < nearest) {
      nearest = distance;
      anchors.eta = corner;
    }
  }
  return anchors;
}

template <typename T>
SSANET_HOST_DEVICE T clamp_to(T value, T upper) {
  return value < T(0) ? T(0) : (value > upper ? upper : value);
}

// The candidate of `box` for factor `scale` (docs/operators.md section 2). The anchor corner keeps its
// coordinates; the opposite sides move so that the size becomes scale * (w, h).
template <typename T>
SSANET_HOST_DEVICE Box<T> candidate_box(const Box<T>& box, const Anchors& anchors, T scale,
                                        bool clip, T image_height, T image_width) {
  Box<T> candidate = box;
  if (scale != T(1)) {
    const int anchor = scale >= T(1) ? anchors.psi : anchors.eta;
    const T width = scale * (box.x2 - box.x1);
    const T height = scale * (box.y2 - box.y1);
    if (anchor & 1) {  // anchored at x2
      candidate.x1 = box.x2 - width;
    } else {
      candidate.x2 = box.x1 + width;
    }
    if (anchor & 2) {  // anchored at y2
      candidate.y1 = box.y2 - height;
    } else {
      candidate.y2 = box.y1 + height;
    }
  }
  if (clip) {
    candidate.x1 = clamp_to(candidate.x1, image_width);
    candidate.x2 = clamp_to(candidate.x2, image_width);
    candidate.y1 = clamp_to(candidate.y1, image_height);
    candidate.y2 = clamp_to(candidate.y2, image_height);
  }
  return candidate;
}

}  // namespace ssanet_ops::roi_crop
