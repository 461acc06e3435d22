#pragma once
// Argument checks and output allocation shared by the CPU and CUDA oriented_pool kernels. The
// Python wrapper (ssanet_ops/ops.py) checks the same things with friendlier messages; these
// guard direct calls of torch.ops.ssanet_ops.oriented_pool.

#include <tuple>

#include "common/checked.h"
#include "common/oriented_pool.h"
#include "common/stable.h"

namespace ssanet_ops::oriented_pool {

// argmax stores grid indices as uint8.
constexpr int64_t kMaxGrid = 256;

// The geometry of a G x G grid of patches on a channels x height x width map, checked with
// overflow-safe arithmetic: direct calls may pass any int64.
inline Geometry check_geometry(int64_t channels, int64_t height, int64_t width,
                               IntArrayRef patch_size, int64_t grid_size,
                               IntArrayRef stride, const char* op) {
  SSANET_CHECK(patch_size.size() == 2 && patch_size[0] >= 1 && patch_size[1] >= 1, op,
               ": patch_size must be two positive ints, got ", patch_size);
  SSANET_CHECK(grid_size >= 1 && grid_size <= kMaxGrid, op, ": grid_size must be in [1, ",
               kMaxGrid, "], got ", grid_size);
  SSANET_CHECK(stride.size() == 2 && stride[0] >= 0 && stride[1] >= 0, op,
               ": stride must be two non-negative ints, got ", stride);
  const Geometry g{channels, height, width, patch_size[0], patch_size[1],
                   grid_size, stride[0], stride[1]};
  SSANET_CHECK(Checked(g.grid - 1) * g.stride_h + g.patch_h <= g.height &&
                   Checked(g.grid - 1) * g.stride_w + g.patch_w <= g.width,
               op, ": a ", g.grid, "x", g.grid, " grid of ", g.patch_h, "x", g.patch_w,
               " patches at stride (", g.stride_h, ", ", g.stride_w, ") does not fit in the ",
               g.height, "x", g.width, " input x");
  // The output length G*L = G*C*h*w (h <= H and w <= W now, but C*H*W need not fit when B = 0).
  SSANET_CHECK((Checked(g.grid) * g.channels * g.patch_h * g.patch_w).valid(), op,
               ": the output length G*C*h*w overflows int64");
  return g;
}

inline Geometry check_forward_args(const Tensor& x, IntArrayRef patch_size,
                                   int64_t grid_size, IntArrayRef stride) {
  SSANET_CHECK(x.dim() == 4, "oriented_pool: x must be a 4-d tensor [B, C, H, W], got ", x.dim(),
               " dimensions");
  return check_geometry(x.size(1), x.size(2), x.size(3), patch_size, grid_size, stride,
                        "oriented_pool");
}

// out[B, 4, G*L] in x's dtype and argmax[B, 2, G, L] as uint8.
inline std::tuple<Tensor, Tensor> allocate_outputs(const Tensor& x, const Geometry& g) {
  const int64_t batch = x.size(0);
  Tensor out = empty_like_device(x, {batch, 4, g.orientation_length()});
  Tensor argmax = empty_like_device(x, {batch, 2, g.grid, g.patch_length()}, ScalarType::Byte);
  return {out, argmax};
}

inline Geometry check_backward_args(const Tensor& grad_output, const Tensor& argmax,
                                    IntArrayRef patch_size, int64_t grid_size,
                                    IntArrayRef stride, int64_t batch, int64_t channels,
                                    int64_t height, int64_t width) {
  SSANET_CHECK(grad_output.device() == argmax.device(),
               "oriented_pool backward: grad_output and argmax must be on one device, got ",
               device_name(grad_output), " and ", device_name(argmax));
  SSANET_CHECK(argmax.scalar_type() == ScalarType::Byte, "oriented_pool backward: argmax must be uint8");
  SSANET_CHECK(batch >= 0 && channels >= 0 && height >= 0 && width >= 0,
               "oriented_pool backward: the input shape [", batch, ", ", channels, ", ", height,
               ", ", width, "] has a negative size");
  const Geometry g = check_geometry(channels, height, width, patch_size, grid_size, stride,
                                    "oriented_pool backward");
  SSANET_CHECK(grad_output.dim() == 3 && grad_output.size(0) == batch &&
                   grad_output.size(1) == 4 && grad_output.size(2) == g.orientation_length(),
               "oriented_pool backward: grad_output must have shape [", batch, ", 4, ",
               g.orientation_length(), "], got ", grad_output.sizes());
  SSANET_CHECK(argmax.is_contiguous() && argmax.dim() == 4 && argmax.size(0) == batch &&
                   argmax.size(1) == 2 && argmax.size(2) == g.grid &&
                   argmax.size(3) == g.patch_length(),
               "oriented_pool backward: argmax must be a contiguous [", batch, ", 2, ", g.grid,
               ", ", g.patch_length(), "] tensor, got ", argmax.sizes());
  return g;
}

}  // namespace ssanet_ops::oriented_pool
