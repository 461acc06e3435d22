#pragma once
// Oriented pooling math (docs/operators.md section 1; paper eqs. 9-12), shared by the CPU and CUDA
// kernels so that the CPU tests exercise the arithmetic the GPU runs.
//
// The input x[B, C, H, W] is cut into a G x G grid of h x w patches; patch (i, j) starts at
// (i * sh, j * sw). A patch flattens in (C, h, w) order to L = C*h*w values, so the position
// l = (c*h + dy)*w + dx inside it is the element x[b, c, i*sh + dy, j*sw + dx].
//   p_i[l] = max over j of patch(i, j)[l]      (row maxima)
//   q_j[l] = max over i of patch(i, j)[l]      (column maxima)
// The output out[B, 4, G*L] holds [p_0..p_{G-1}], [q_0..q_{G-1}] and both reversed.
// argmax[B, 2, G, L] (uint8) records the winning j of p_i[l] in plane 0 and the winning i of
// q_j[l] in plane 1: the forward computes it in the same pass as the maxima.

#include <cstdint>

#include "common/macros.h"
#include "common/running_max.h"
#include "common/strides.h"

namespace ssanet_ops::oriented_pool {

struct Geometry {
  int64_t channels, height, width;  // of the input map
  int64_t patch_h, patch_w;
  int64_t grid;  // G: patches per row and per column
  int64_t stride_h, stride_w;

  SSANET_HOST_DEVICE int64_t patch_area() const { return patch_h * patch_w; }
  SSANET_HOST_DEVICE int64_t patch_length() const { return channels * patch_h * patch_w; }  // L
  SSANET_HOST_DEVICE int64_t orientation_length() const { return grid * patch_length(); }  // G*L
};

// Maximum of the G values line[k * step], k = 0..G-1, and the k that won it.
template <typename scalar_t, typename acc_t>
SSANET_HOST_DEVICE acc_t line_max(const scalar_t* line, int64_t step, int64_t count,
                                  uint8_t& winner) {
  acc_t best = static_cast<acc_t>(line[0]);
  winner = 0;
  for (int64_t k = 1; k < count; ++k) {
    const acc_t value = static_cast<acc_t>(line[k * step]);
    const bool replaces = replaces_max(value, best);
    best = replaces ? value : best;
    winner = replaces ? static_cast<uint8_t>(k) : winner;
  }
  return best;
}

// Forward for one (sample, grid line k, position l = (c, dy, dx)): p_k[l] and q_k[l], written to
// the four orientations, with their argmax. `sample` and `out_sample`, `argmax_sample` point at
// sample b of x, out and argmax.
template <typename scalar_t, typename acc_t>
SSANET_HOST_DEVICE void forward_cell(const scalar_t* sample, const Strides4& x_strides,
                                     const Geometry& g, int64_t k, int64_t c, int64_t dy,
                                     int64_t dx, scalar_t* out_sample, uint8_t* argmax_sample) {
  const scalar_t* corner = sample + c * x_strides.c + dy * x_strides.h + dx * x_strides.w;
  uint8_t winning_column, winning_row;
  // Row k: patches (k, j) for j = 0..G-1, stepping sw columns.
  const acc_t p = line_max<scalar_t, acc_t>(corner + k * g.stride_h * x_strides.h,
                                            g.stride_w * x_strides.w, g.grid, winning_column);
  // Column k: patches (i, k) for i = 0..G-1, stepping sh rows.
  const acc_t q = line_max<scalar_t, acc_t>(corner + k * g.stride_w * x_strides.w,
                                            g.stride_h * x_strides.h, g.grid, winning_row);

  const int64_t L = g.patch_length();
  const int64_t GL = g.orientation_length();
  const int64_t l = (c * g.patch_h + dy) * g.patch_w + dx;
  const int64_t forward_at = k * L + l;
  const int64_t reversed_at = (g.grid - 1 - k) * L + l;
  out_sample[0 * GL + forward_at] = static_cast<scalar_t>(p);
  out_sample[1 * GL + forward_at] = static_cast<scalar_t>(q);
  out_sample[2 * GL + reversed_at] = static_cast<scalar_t>(p);
  out_sample[3 * GL + reversed_at] = static_cast<scalar_t>(q);
  argmax_sample[forward_at] = winning_column;
  argmax_sample[GL + forward_at] = winning_row;
}

// Grid lines k in [first, last] whose patch span [k*stride, k*stride + size) covers `pos`
// (empty when first > last). index_t: int64_t, or int where every index fits (the CUDA tiles).
template <typename index_t>
SSANET_HOST_DEVICE void covering_patches(index_t pos, index_t size, index_t stride, index_t grid,
                                         index_t& first, index_t& last) {
  if (stride == 0) {  // every patch starts at 0
    first = 0;
    last = pos < size ? grid - 1 : -1;
    return;
  }
  const index_t lowest_start = pos - size + 1;  // k*stride >= pos - size + 1
  first = lowest_start <= 0 ? 0 : (lowest_start + stride - 1) / stride;
  last = pos / stride < grid - 1 ? pos / stride : grid - 1;
}

// Gradient of one input element x[b, c, y, x] (docs/operators.md section 1, backward): the sum
// over the patches that contain it of the gradients of the maxima it won. Each gather is a
// fixed-order sum with no atomics, so the backward is deterministic on both devices.
// grad_sample points at sample b of grad_out[B, 4, G*L], with strides (orientation, position).
// index_t: the type of the index arithmetic, int64_t, or int where every index of grad_sample
// and argmax_sample fits (the CUDA tiles, whose g has the tile's channel count).
template <typename scalar_t, typename acc_t, typename index_t>
SSANET_HOST_DEVICE acc_t backward_cell(const scalar_t* grad_sample, index_t grad_stride_o,
                                       index_t grad_stride_l, const uint8_t* argmax_sample,
                                       const Geometry& g, index_t c, index_t y, index_t x) {
  const index_t grid = static_cast<index_t>(g.grid);
  const index_t patch_h = static_cast<index_t>(g.patch_h);
  const index_t patch_w = static_cast<index_t>(g.patch_w);
  const index_t stride_h = static_cast<index_t>(g.stride_h);
  const index_t stride_w = static_cast<index_t>(g.stride_w);
  index_t first_row, last_row, first_column, last_column;
  covering_patches<index_t>(y, patch_h, stride_h, grid, first_row, last_row);
  covering_patches<index_t>(x, patch_w, stride_w, grid, first_column, last_column);
  const index_t L = static_cast<index_t>(g.patch_length());
  const index_t GL = static_cast<index_t>(g.orientation_length());
  auto grad_at = [&](index_t orientation, index_t position) {
    return static_cast<acc_t>(grad_sample[orientation * grad_stride_o + position * grad_stride_l]);
  };

  acc_t total = 0;
  for (index_t i = first_row; i <= last_row; ++i) {
    const index_t dy = y - i * stride_h;
    for (index_t j = first_column; j <= last_column; ++j) {
      const index_t dx = x - j * stride_w;
      const index_t l = (c * patch_h + dy) * patch_w + dx;
      // Selects rather than branches, as in line_max.
      const acc_t row_grad = grad_at(0, i * L + l) + grad_at(2, (grid - 1 - i) * L + l);
      const acc_t column_grad = grad_at(1, j * L + l) + grad_at(3, (grid - 1 - j) * L + l);
      total += argmax_sample[i * L + l] == j ? row_grad : acc_t(0);  // won p_i[l]
      total += argmax_sample[GL + j * L + l] == i ? column_grad : acc_t(0);  // won q_j[l]
    }
  }
  return total;
}

}  // namespace ssanet_ops::oriented_pool
