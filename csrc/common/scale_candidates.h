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

template <typename T>
SSANET_HOST_DEVICE bool is_finite(T value) {
  return value - value == T(0);  // false for infinities and NaN
}

// Error bits of check_box and check_center; the host turns them into messages.
constexpr int kBoxNotFinite = 1;
constexpr int kBatchIndexInvalid = 2;
constexpr int kCenterNotFinite = 4;

// The batch indices a box may carry when the number of images is not known (scale_candidates
// without centers): [0, 2^31), ssanet_ops.BATCH_INDEX_LIMIT (ssanet_ops/_roi_crop.py).
constexpr double kBatchIndexLimit = 2147483648.0;

// Checks box k: finite coordinates, and a batch index that is a whole number in
// [0, batch) (in [0, kBatchIndexLimit) when batch < 0, that is when the number of images is
// not known).
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
  const T limit = batch >= 0 ? static_cast<T>(batch) : static_cast<T>(kBatchIndexLimit);
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

// The key that groups box k by image: its batch index, or kNoImage when check_box fails or
// its image's given centre (centers: [B, 2], or nullptr without centres) is not finite. On
// CUDA, where box values are not checked (docs/operators.md section 4: no host
// synchronisation), a box without an image has zero candidates and passes no gradient, as a
// bad centre would otherwise pick arbitrary anchor corners.
constexpr int64_t kNoImage = -1;

template <typename T>
SSANET_HOST_DEVICE int64_t image_key(const T* boxes, const T* centers, int64_t k,
                                     int64_t batch) {
  if (check_box(boxes, k, batch) != 0) {
    return kNoImage;
  }
  const int64_t b = static_cast<int64_t>(boxes[5 * k]);
  return centers != nullptr && check_center(centers, b) != 0 ? kNoImage : b;
}

// Where the boxes of image b begin among the keys sorted in ascending order (sorted: `count`
// keys): the number of keys below b, torch.searchsorted(sorted, b). For b = 0, ..., B these are
// the offsets of the grouping by image, image b's boxes being positions [offsets[b],
// offsets[b + 1]) (roi_crop/arguments.h).
SSANET_HOST_DEVICE int64_t first_of_image(const int64_t* sorted, int64_t count, int64_t b) {
  int64_t low = 0, high = count;
  while (low < high) {
    const int64_t middle = low + (high - low) / 2;
    if (sorted[middle] < b) {
      low = middle + 1;
    } else {
      high = middle;
    }
  }
  return low;
}

// Twice the centre c of an image, 2c, in float64: the anchor rule of docs/operators.md section 2
// compares x1 + x2 with 2*cx, and y1 + y2 with 2*cy, in float64 for every box dtype.
struct TwiceCenter {
  double x, y;
};

// 2c of a given centre (centers: [B, 2] rows (x, y)); doubling is exact.
template <typename T>
SSANET_HOST_DEVICE TwiceCenter twice_given_center(const T* centers, int64_t b) {
  return {2.0 * static_cast<double>(centers[2 * b]),
          2.0 * static_cast<double>(centers[2 * b + 1])};
}

// Writes the 2c of box k's image to twice_centers ([K, 2] by box index) from the given
// centres; (0, 0) for a box without an image (keys: image_key of every box).
template <typename T>
SSANET_HOST_DEVICE void spread_given_center(const T* centers, const int64_t* keys, int64_t k,
                                            double* twice_centers) {
  const TwiceCenter center =
      keys[k] == kNoImage ? TwiceCenter{0, 0} : twice_given_center(centers, keys[k]);
  twice_centers[2 * k] = center.x;
  twice_centers[2 * k + 1] = center.y;
}

// The default 2c of an image (docs/operators.md section 2): the mean over its boxes of
// (x1 + x2, y1 + y2), its boxes added in index order. Only additions and one division, so no
// fused multiply-add can change the bits: every kernel that adds an image's boxes in this order
// (twice_mean_center below, the CUDA setup kernel) gets the same 2c, and one box alone gets
// exactly its own x1 + x2 and y1 + y2.
struct CenterSum {
  double x = 0, y = 0;
  int64_t members = 0;

  template <typename T>
  SSANET_HOST_DEVICE void add(const T* boxes, int64_t k) {
    const T* row = boxes + 5 * k;
    x += static_cast<double>(row[1]) + static_cast<double>(row[3]);
    y += static_cast<double>(row[2]) + static_cast<double>(row[4]);
    ++members;
  }

  SSANET_HOST_DEVICE TwiceCenter mean() const {
    const double count = static_cast<double>(members);
    return members > 0 ? TwiceCenter{x / count, y / count} : TwiceCenter{0, 0};
  }
};

// The default 2c of the image whose boxes are boxes[order[first]], ..., boxes[order[last - 1]],
// in index order.
template <typename T>
SSANET_HOST_DEVICE TwiceCenter twice_mean_center(const T* boxes, const int64_t* order,
                                                 int64_t first, int64_t last) {
  CenterSum sum;
  for (int64_t i = first; i < last; ++i) {
    sum.add(boxes, order[i]);
  }
  return sum.mean();
}

// For the boxes grouped by image (sorted: their keys in ascending order, stable, so that an
// image's boxes keep index order; order: their box indices): when position i starts the run of
// an image's boxes, writes that image's default 2c to every box of the run, so that each image
// is summed once. twice_centers: [K, 2] by box index.
template <typename T>
SSANET_HOST_DEVICE void spread_image_center(const T* boxes, const int64_t* order,
                                            const int64_t* sorted, int64_t count, int64_t i,
                                            double* twice_centers) {
  if (sorted[i] == kNoImage || (i > 0 && sorted[i - 1] == sorted[i])) {
    return;
  }
  int64_t last = i + 1;
  while (last < count && sorted[last] == sorted[i]) {
    ++last;
  }
  const TwiceCenter center = twice_mean_center(boxes, order, i, last);
  for (int64_t j = i; j < last; ++j) {
    twice_centers[2 * order[j]] = center.x;
    twice_centers[2 * order[j] + 1] = center.y;
  }
}

// The 2c of box k's image from [K, 2] per-box values.
SSANET_HOST_DEVICE TwiceCenter twice_center_of(const double* twice_centers, int64_t k) {
  return {twice_centers[2 * k], twice_centers[2 * k + 1]};
}

// psi (farthest from the centre) and eta (nearest), as corner numbers in the contract's order:
// 0 = (x1, y1), 1 = (x2, y1), 2 = (x1, y2), 3 = (x2, y2).
struct Anchors {
  int psi, eta;
};

// docs/operators.md section 2, per axis and exactly: psi's x is x1 when x1 + x2 <= 2*cx, else x2; eta's
// x is x1 when x1 + x2 >= 2*cx, else x2; likewise for y. No distance is computed: a sum of two
// floats of the box's type is exact or correctly rounded in float64, and a comparison cannot
// be contracted, so CPU, CUDA and reference choose the same corners.
template <typename T>
SSANET_HOST_DEVICE Anchors anchor_corners(const Box<T>& box, TwiceCenter center) {
  const double sum_x = static_cast<double>(box.x1) + static_cast<double>(box.x2);
  const double sum_y = static_cast<double>(box.y1) + static_cast<double>(box.y2);
  const int psi = (sum_x <= center.x ? 0 : 1) | (sum_y <= center.y ? 0 : 2);
  const int eta = (sum_x >= center.x ? 0 : 1) | (sum_y >= center.y ? 0 : 2);
  return {psi, eta};
}

// a * b, rounded on its own and never fused with the addition that uses it: nvcc contracts
// a * b + c into one FMA by default (and so does the simulator of the CUDA kernels), the CPU
// build does not, and a candidate must be the same box on every device and in reference.
template <typename T>
SSANET_HOST_DEVICE T unfused_product(T a, T b) {
#if defined(__CUDA_ARCH__)
  if constexpr (sizeof(T) == sizeof(double)) {
    return __dmul_rn(a, b);
  } else {
    return __fmul_rn(a, b);
  }
#else
  const volatile T product = a * b;  // a rounded value the compiler cannot fuse
  return product;
#endif
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
    const T width = unfused_product(scale, box.x2 - box.x1);
    const T height = unfused_product(scale, box.y2 - box.y1);
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
