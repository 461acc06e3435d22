#pragma once
// oriented_pool's CUDA kernels, running the shared cell functions of common/oriented_pool.h.
// Compiled by nvcc into cuda.cu and by the host compiler into sim.cpp (common/simulation.h); the
// entry points at the end do what both share.
//
// The tiled kernels (the usual path): each work item is one sample and a block of channels,
// whose data goes through shared memory so that consecutive threads of a warp touch consecutive
// global addresses (issue 24; benchmarks/gpu_model.py measures it):
//   - forward: the item's input tile (the rows and columns the grid covers) is read in x's memory
//     order (channel fastest for channels-last, the column fastest otherwise); each output cell
//     then takes its maxima from shared memory and the item's outputs, G runs of count*h*w
//     consecutive cells per orientation, are written in order.
//   - backward: the item's output gradient and argmax (4 + 2 planes of G runs of count*h*w) are
//     read in order into shared memory; each input element then gathers its gradient from there
//     in the fixed order of backward_cell and grad_input is written in order.
// The per-cell kernels (one thread per output cell or input element, reading global memory):
// for channels whose tile exceeds the shared memory of a block, and tiles whose indices need
// int64.

#include <algorithm>
#include <tuple>

#include "common/launch.h"
#include "common/simulation.h"
#include "oriented_pool/arguments.h"

namespace ssanet_ops::oriented_pool {

// Shared memory of a tiled kernel's block: a tile of at most kTileBytes (eight blocks of 256
// threads, a full H100 SM, then use 128 of its 228 KiB), and the tiled kernels only where one
// channel fits in the 48 KiB a launch gets without opting in.
constexpr int64_t kTileBytes = int64_t{16} << 10;
constexpr int64_t kMaxTileBytes = int64_t{48} << 10;
// Fewer work items than this leave SMs idle (about two blocks per SM of an H100's 132): tiles
// shrink towards it, down to kMinChannels channels (more where x is read channel-fastest), so
// that an item's runs of count*h*w cells in out, argmax and grad_output start and end on
// 32-byte sectors (when C is a multiple of 32), even in uint8.
constexpr int64_t kMinItems = 256;
constexpr int64_t kMinChannels = 32;

// ---- kernels ----

// Tiled forward. Work item `item` is sample item / per_sample and the channels
// [c0, c0 + count), c0 = (item % per_sample) * tile_channels; its tile holds x[b, c0 + c, y, x]
// for y < rows, x < columns at tile[(c * rows + y) * columns + x].
template <typename scalar_t>
__global__ void forward_tiled_kernel(const scalar_t* __restrict__ x, Strides4 x_strides,
                                     Geometry g, int tile_channels, int64_t items,
                                     scalar_t* __restrict__ out, uint8_t* __restrict__ argmax) {
  using acc_t = opmath_t<scalar_t>;
  scalar_t* tile = gpu::dynamic_shared<scalar_t>();
  // int: a tile's indices are below int32_index_limit() (plan_tiles).
  const int rows = static_cast<int>((g.grid - 1) * g.stride_h + g.patch_h);
  const int columns = static_cast<int>((g.grid - 1) * g.stride_w + g.patch_w);
  const int plane = rows * columns;
  const int patch_w = static_cast<int>(g.patch_w);
  const int area = static_cast<int>(g.patch_area());
  const int64_t per_sample = (g.channels + tile_channels - 1) / tile_channels;
  const int64_t GL = g.orientation_length();
  const Strides4 tile_strides{0, plane, columns, 1};
  const bool channel_fastest = x_strides.c < x_strides.w;  // channels-last
  for (int64_t item = blockIdx.x; item < items; item += gridDim.x) {
    const int64_t b = item / per_sample;
    const int64_t c0 = item % per_sample * tile_channels;
    const int count = static_cast<int>(std::min<int64_t>(tile_channels, g.channels - c0));
    const scalar_t* corner = x + b * x_strides.n + c0 * x_strides.c;
    for (int i = threadIdx.x; i < count * plane; i += blockDim.x) {
      int c, y, column;
      if (channel_fastest) {
        c = i % count;
        y = i / count / columns;
        column = i / count % columns;
      } else {
        c = i / plane;
        y = i / columns % rows;
        column = i % columns;
      }
      tile[(c * rows + y) * columns + column] =
          corner[c * x_strides.c + y * x_strides.h + column * x_strides.w];
    }
    __syncthreads();
    // Cell i = k * cells + (c*h + dy)*w + dx: consecutive threads write consecutive outputs.
    const int cells = count * area;
    for (int i = threadIdx.x; i < static_cast<int>(g.grid) * cells; i += blockDim.x) {
      const int k = i / cells;
      const int l = i % cells;
      forward_cell<scalar_t, acc_t>(tile, tile_strides, g, k, l / area, l % area / patch_w,
                                    l % patch_w, out + b * 4 * GL + c0 * area,
                                    argmax + b * 2 * GL + c0 * area);
    }
    __syncthreads();  // before the next item overwrites the tile
  }
}

// Tiled backward, on the work items of forward_tiled_kernel. The item's output gradient goes to
// grads[o][k][l] and its argmax to winners[plane][k][l] (l = (c*h + dy)*w + dx, c < count): the
// layouts of grad_output and argmax for a map of count channels, which backward_cell reads with
// that geometry, in int arithmetic. Registers (ptxas, sm_90): 56 in float32 unbounded, 4 blocks
// of 256 threads per SM; bounded to 5 blocks they are 48 with no spills (float64: 36 bytes).
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads, 5)
    backward_tiled_kernel(const scalar_t* __restrict__ grad_output, int64_t grad_stride_n,
                          int64_t grad_stride_o, int64_t grad_stride_l,
                          const uint8_t* __restrict__ argmax, Geometry g, int tile_channels,
                          int64_t items, scalar_t* __restrict__ grad_input) {
  using acc_t = opmath_t<scalar_t>;
  const int area = static_cast<int>(g.patch_area());
  const int plane = static_cast<int>(g.height * g.width);
  const int width = static_cast<int>(g.width);
  const int64_t per_sample = (g.channels + tile_channels - 1) / tile_channels;
  const int64_t L = g.patch_length();
  const int64_t GL = g.orientation_length();
  for (int64_t item = blockIdx.x; item < items; item += gridDim.x) {
    const int64_t b = item / per_sample;
    const int64_t c0 = item % per_sample * tile_channels;
    const int count = static_cast<int>(std::min<int64_t>(tile_channels, g.channels - c0));
    Geometry item_geometry = g;
    item_geometry.channels = count;
    const int cells = count * area;
    const int positions = static_cast<int>(g.grid) * cells;
    scalar_t* grads = gpu::dynamic_shared<scalar_t>();
    uint8_t* winners = reinterpret_cast<uint8_t*>(grads + 4 * positions);
    const scalar_t* grad_item = grad_output + b * grad_stride_n + c0 * area * grad_stride_l;
    const uint8_t* argmax_item = argmax + b * 2 * GL + c0 * area;
    for (int i = threadIdx.x; i < positions; i += blockDim.x) {
      const int64_t at = i / cells * L + i % cells;
      for (int o = 0; o < 4; ++o) {
        grads[o * positions + i] = grad_item[o * grad_stride_o + at * grad_stride_l];
      }
      winners[i] = argmax_item[at];
      winners[positions + i] = argmax_item[GL + at];
    }
    __syncthreads();
    scalar_t* grad_item_input = grad_input + (b * g.channels + c0) * plane;
    for (int i = threadIdx.x; i < count * plane; i += blockDim.x) {
      const int p = i % plane;
      grad_item_input[i] = static_cast<scalar_t>(backward_cell<scalar_t, acc_t, int>(
          grads, positions, 1, winners, item_geometry, i / plane, p / width, p % width));
    }
    __syncthreads();  // before the next item overwrites the staged gradients
  }
}

// Per-cell forward: one thread per output cell. index_t: the launch's index type
// (with_index_type). Offsets into the tensors are int64.
template <typename scalar_t, typename index_t>
__global__ void forward_kernel(const scalar_t* __restrict__ x, Strides4 x_strides, Geometry g,
                               index_t cells, scalar_t* __restrict__ out,
                               uint8_t* __restrict__ argmax) {
  using acc_t = opmath_t<scalar_t>;
  const index_t L = g.patch_length();
  const index_t grid = g.grid, patch_w = g.patch_w, patch_h = g.patch_h;
  for (index_t cell = blockIdx.x * blockDim.x + threadIdx.x; cell < cells;
       cell += gridDim.x * blockDim.x) {
    // cell = (b * G + k) * L + l with l = (c*h + dy)*w + dx: consecutive threads write
    // consecutive outputs.
    const index_t l = cell % L;
    const index_t k = (cell / L) % grid;
    const int64_t b = cell / (L * grid);
    const index_t dx = l % patch_w;
    const index_t dy = (l / patch_w) % patch_h;
    const index_t c = l / (patch_w * patch_h);
    forward_cell<scalar_t, acc_t>(x + b * x_strides.n, x_strides, g, k, c, dy, dx,
                                  out + b * 4 * g.orientation_length(),
                                  argmax + b * 2 * g.orientation_length());
  }
}

// Per-cell backward: one thread per input element, a gather with no atomics.
template <typename scalar_t, typename index_t>
__global__ void backward_kernel(const scalar_t* __restrict__ grad_output, int64_t grad_stride_n,
                                int64_t grad_stride_o, int64_t grad_stride_l,
                                const uint8_t* __restrict__ argmax, Geometry g, index_t elements,
                                scalar_t* __restrict__ grad_input) {
  using acc_t = opmath_t<scalar_t>;
  const index_t width = g.width, height = g.height, channels = g.channels;
  for (index_t element = blockIdx.x * blockDim.x + threadIdx.x; element < elements;
       element += gridDim.x * blockDim.x) {
    const index_t x = element % width;
    const index_t y = (element / width) % height;
    const index_t c = (element / (width * height)) % channels;
    const int64_t b = element / (width * height * channels);
    grad_input[element] = static_cast<scalar_t>(backward_cell<scalar_t, acc_t, int64_t>(
        grad_output + b * grad_stride_n, grad_stride_o, grad_stride_l,
        argmax + b * 2 * g.orientation_length(), g, c, y, x));
  }
}

// ---- launchers ----

// The tiled kernels' work items: `channels` per item, `items` in all, `shared_bytes` per block;
// `fits` is false where the per-cell kernels must run instead.
struct TilePlan {
  int64_t channels, items, shared_bytes;
  bool fits;
};

// channel_bytes: shared memory per channel of an item; channel_indices: the most elements per
// channel that a loop of the kernel indexes; min_channels: the fewest channels per item that
// keep the item's global runs long (see plan's callers), where there are few items.
inline TilePlan plan_tiles(int64_t batch, int64_t channels, int64_t channel_bytes,
                           int64_t channel_indices, int64_t min_channels) {
  TilePlan plan{1, 0, channel_bytes, false};
  const auto fits = [&](int64_t n) {
    return n * channel_bytes <= kTileBytes &&
           n * channel_indices - 1 + kThreads <= gpu::int32_index_limit();
  };
  if (channel_bytes > kMaxTileBytes ||
      channel_indices - 1 + kThreads > gpu::int32_index_limit()) {
    return plan;
  }
  while (plan.channels < channels && fits(2 * plan.channels)) {
    plan.channels *= 2;
  }
  const auto items_for = [&](int64_t n) { return batch * ((channels + n - 1) / n); };
  while (plan.channels / 2 >= min_channels && items_for(plan.channels) < kMinItems) {
    plan.channels /= 2;
  }
  plan.channels = std::min(plan.channels, channels);
  plan.items = items_for(plan.channels);
  plan.shared_bytes = plan.channels * channel_bytes;
  plan.fits = true;
  return plan;
}

template <typename scalar_t>
void launch_forward(const Tensor& x, const Geometry& g, Tensor& out, Tensor& argmax,
                    gpu::Stream stream) {
  const Strides4 x_strides = strides_of(x);
  const int64_t rows = (g.grid - 1) * g.stride_h + g.patch_h;
  const int64_t columns = (g.grid - 1) * g.stride_w + g.patch_w;
  const bool channel_fastest = x_strides.c < x_strides.w;
  const TilePlan plan = plan_tiles(
      x.size(0), g.channels, rows * columns * int64_t{sizeof(scalar_t)},
      std::max(rows * columns, g.grid * g.patch_area()),
      // Read channel-fastest, 128 bytes of channels per pixel.
      std::max(kMinChannels, channel_fastest ? 128 / int64_t{sizeof(scalar_t)} : 1));
  if (plan.fits) {
    gpu::launch(forward_tiled_kernel<scalar_t>, std::min(plan.items, kMaxBlocks), kThreads,
                plan.shared_bytes, stream, x.const_data_ptr<scalar_t>(), x_strides, g,
                static_cast<int>(plan.channels), plan.items, out.mutable_data_ptr<scalar_t>(),
                argmax.mutable_data_ptr<uint8_t>());
    return;
  }
  const int64_t cells = x.size(0) * g.orientation_length();
  const GridStride launch = grid_stride(cells);
  with_index_type(launch, [&](auto index_type) {
    using index_t = decltype(index_type);
    gpu::launch(forward_kernel<scalar_t, index_t>, launch.blocks, launch.threads, 0, stream,
                x.const_data_ptr<scalar_t>(), x_strides, g, static_cast<index_t>(cells),
                out.mutable_data_ptr<scalar_t>(), argmax.mutable_data_ptr<uint8_t>());
  });
}

template <typename scalar_t>
void launch_backward(const Tensor& grad_output, const Tensor& argmax, const Geometry& g,
                     Tensor& grad_input, gpu::Stream stream) {
  // Per channel: 4 gradient planes and 2 argmax planes of G*h*w cells (a count that is already
  // too large stands in for bytes that could overflow).
  const int64_t positions = g.grid * g.patch_area();
  const int64_t channel_bytes = positions <= kMaxTileBytes
                                    ? positions * (4 * int64_t{sizeof(scalar_t)} + 2)
                                    : positions;
  const TilePlan plan = plan_tiles(grad_input.size(0), g.channels, channel_bytes,
                                   std::max(positions, g.height * g.width), kMinChannels);
  if (plan.fits) {
    // The kernel's int arithmetic takes the strides too. One beyond the map, possible only where
    // G = 1, covers the same elements as one equal to the map's size.
    Geometry clamped = g;
    clamped.stride_h = std::min(g.stride_h, g.height);
    clamped.stride_w = std::min(g.stride_w, g.width);
    gpu::launch(backward_tiled_kernel<scalar_t>, std::min(plan.items, kMaxBlocks), kThreads,
                plan.shared_bytes, stream, grad_output.const_data_ptr<scalar_t>(),
                grad_output.stride(0), grad_output.stride(1), grad_output.stride(2),
                argmax.const_data_ptr<uint8_t>(), clamped, static_cast<int>(plan.channels),
                plan.items, grad_input.mutable_data_ptr<scalar_t>());
    return;
  }
  const int64_t elements = grad_input.numel();
  const GridStride launch = grid_stride(elements);
  with_index_type(launch, [&](auto index_type) {
    using index_t = decltype(index_type);
    gpu::launch(backward_kernel<scalar_t, index_t>, launch.blocks, launch.threads, 0, stream,
                grad_output.const_data_ptr<scalar_t>(), grad_output.stride(0),
                grad_output.stride(1), grad_output.stride(2), argmax.const_data_ptr<uint8_t>(),
                g, static_cast<index_t>(elements), grad_input.mutable_data_ptr<scalar_t>());
  });
}

// ---- entry points: the ops' schemas, on tensors of the kernels' device ----

inline std::tuple<Tensor, Tensor> forward(const Tensor& x, IntArrayRef patch_size,
                                          int64_t grid_size, IntArrayRef stride,
                                          gpu::Stream stream) {
  const Geometry g = check_forward_args(x, patch_size, grid_size, stride);
  auto [out, argmax] = allocate_outputs(x, g);
  if (out.numel() == 0) {
    return {out, argmax};
  }
  SSANET_DISPATCH_FLOATING_TYPES(x.scalar_type(), "oriented_pool",
                                 [&] { launch_forward<scalar_t>(x, g, out, argmax, stream); });
  return {out, argmax};
}

inline Tensor backward(const Tensor& grad_output, const Tensor& argmax, IntArrayRef patch_size,
                       int64_t grid_size, IntArrayRef stride, int64_t batch, int64_t channels,
                       int64_t height, int64_t width, gpu::Stream stream) {
  const Geometry g = check_backward_args(grad_output, argmax, patch_size, grid_size, stride,
                                         batch, channels, height, width);
  Tensor grad_input = empty_like_device(grad_output, {batch, channels, height, width});
  if (grad_input.numel() == 0) {
    return grad_input;
  }
  SSANET_DISPATCH_FLOATING_TYPES(
      grad_output.scalar_type(), "oriented_pool_backward",
      [&] { launch_backward<scalar_t>(grad_output, argmax, g, grad_input, stream); });
  return grad_input;
}

}  // namespace ssanet_ops::oriented_pool
