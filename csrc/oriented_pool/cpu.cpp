// oriented_pool on the CPU. Each work item is one sample and a block of channels; the block is
// transposed into a [H][W][channels] buffer so that every step of the contract's max (forward) and
// of the gradient gather (backward) is a loop over contiguous channels, which the compiler
// vectorizes. The rules themselves (replaces_max, covering_patches) come from
// common/oriented_pool.h and are the ones the CUDA kernels run per element; the summation order
// of the backward is the CUDA kernel's too (row maxima then column maxima, patches in row-major
// order), so both devices round the same way. float16 and bfloat16 are held in float32
// (opmath_t) inside the per-thread buffers, so their gradients accumulate in float32.

#include <algorithm>
#include <vector>

#include "common/dtypes.h"
#include "oriented_pool/arguments.h"

namespace ssanet_ops::oriented_pool {
namespace {

// Channels per work item: the transposed input block stays within about 64 KiB (L2-resident).
int64_t channel_block(const Geometry& g, int64_t element_size) {
  const int64_t plane_bytes = std::max<int64_t>(1, g.height * g.width * element_size);
  return std::clamp<int64_t>((int64_t{64} << 10) / plane_bytes, 1, 64);
}

// A [cells][block] buffer of values and one of grid indices, for the G*h*w cells of the row
// maxima p_k (or the column maxima q_k) of one channel block; cell = (k*h + dy)*w + dx.
template <typename scalar_t, typename index_t>
struct CellBlock {
  std::vector<scalar_t> value;
  std::vector<index_t> index;
  CellBlock(int64_t cells, int64_t block) : value(cells * block), index(cells * block) {}
};

// Max over the G patches of a grid line for one cell and `count` channels, vectorized over
// channels: first[c + m*line_step] for m = 0..G-1 (docs/operators.md section 1 rules via replaces_max).
template <typename scalar_t>
void block_line_max(const scalar_t* __restrict first, int64_t line_step, int64_t grid,
                    int64_t count, scalar_t* __restrict best, uint8_t* __restrict winner) {
  for (int64_t c = 0; c < count; ++c) {
    best[c] = first[c];
    winner[c] = 0;
  }
  for (int64_t m = 1; m < grid; ++m) {
    const scalar_t* __restrict line = first + m * line_step;
    for (int64_t c = 0; c < count; ++c) {
      const bool replaces = replaces_max(line[c], best[c]);
      best[c] = replaces ? line[c] : best[c];
      winner[c] = replaces ? static_cast<uint8_t>(m) : winner[c];
    }
  }
}

// The forward and backward of one work item are functions of their own, not inlined into the
// parallel_for callback, and take what they use by value (pointers, geometry), not through the
// callback's captures or the buffers' std::vectors. Compiled inside the callback that
// torch::stable::parallel_for hands to libtorch, their loops kept pointers on the stack and
// reloaded them on every element (after each argmax byte store, which may alias anything):
// 10-35 % slower than before the stable-ABI port (benchmarks/results/stable_abi_port.md).

// The forward of the channels [c0, c0 + count) of one sample: transpose them into
// `transposed` ([H][W][block]), take the row maxima p_k and column maxima q_k of every cell
// (cell = (k*h + dy)*w + dx, [cells][block] buffers), and write them in the four orientations.
template <typename scalar_t, typename acc_t>
[[gnu::noinline]] void forward_block(const Geometry g, const Strides4 x_strides,
                                     const scalar_t* x_sample, int64_t c0, int64_t count,
                                     int64_t block, acc_t* __restrict transposed,
                                     acc_t* __restrict row_max, uint8_t* __restrict row_winner,
                                     acc_t* __restrict column_max,
                                     uint8_t* __restrict column_winner,
                                     scalar_t* __restrict out_sample,
                                     uint8_t* __restrict argmax_sample) {
  const int64_t L = g.patch_length();
  const int64_t GL = g.orientation_length();
  const int64_t area = g.patch_area();

  for (int64_t c = 0; c < count; ++c) {
    const scalar_t* plane = x_sample + (c0 + c) * x_strides.c;
    for (int64_t y = 0; y < g.height; ++y) {
      for (int64_t x = 0; x < g.width; ++x) {
        transposed[(y * g.width + x) * block + c] =
            static_cast<acc_t>(plane[y * x_strides.h + x * x_strides.w]);
      }
    }
  }

  // Row k of patches steps sw columns; column k steps sh rows.
  const int64_t column_step = g.stride_w * block;
  const int64_t row_step = g.stride_h * g.width * block;
  for (int64_t k = 0; k < g.grid; ++k) {
    for (int64_t dy = 0; dy < g.patch_h; ++dy) {
      for (int64_t dx = 0; dx < g.patch_w; ++dx) {
        const int64_t cell = ((k * g.patch_h + dy) * g.patch_w + dx) * block;
        block_line_max(&transposed[((k * g.stride_h + dy) * g.width + dx) * block], column_step,
                       g.grid, count, &row_max[cell], &row_winner[cell]);
        block_line_max(&transposed[(dy * g.width + k * g.stride_w + dx) * block], row_step,
                       g.grid, count, &column_max[cell], &column_winner[cell]);
      }
    }
  }

  // Back to the output layout: out[b, o, k*L + (c*h + dy)*w + dx].
  for (int64_t k = 0; k < g.grid; ++k) {
    const int64_t forward_at = k * L + c0 * area;
    const int64_t reversed_at = (g.grid - 1 - k) * L + c0 * area;
    for (int64_t c = 0; c < count; ++c) {
      for (int64_t offset = 0; offset < area; ++offset) {
        const int64_t from = (k * area + offset) * block + c;
        const int64_t to = c * area + offset;
        const auto row = static_cast<scalar_t>(row_max[from]);
        const auto column = static_cast<scalar_t>(column_max[from]);
        out_sample[0 * GL + forward_at + to] = row;
        out_sample[1 * GL + forward_at + to] = column;
        out_sample[2 * GL + reversed_at + to] = row;
        out_sample[3 * GL + reversed_at + to] = column;
        argmax_sample[forward_at + to] = row_winner[from];
        argmax_sample[GL + forward_at + to] = column_winner[from];
      }
    }
  }
}

// The patches covering each input row [first_row, last_row] and column: the same for every
// channel and sample.
struct CoveringPatches {
  const int64_t* first_row;
  const int64_t* last_row;
  const int64_t* first_column;
  const int64_t* last_column;
};

// The backward of the channels [c0, c0 + count) of one sample into `grad_plane` (their first
// input plane). Per cell and channel, `row_grad`/`column_grad` receive the gradient reaching
// p_k (orientations 0 and 2) or q_k (1 and 3) and `row_winner`/`column_winner` the grid index
// that won it, held as acc_t so that comparing it and selecting the gradient is one
// vectorizable loop of a single type; `total` is one pixel's sums for the block.
template <typename scalar_t, typename acc_t>
[[gnu::noinline]] void backward_block(
    const Geometry g, const scalar_t* grad_sample, int64_t grad_stride_o, int64_t grad_stride_l,
    const uint8_t* argmax_sample, const CoveringPatches covering, int64_t c0, int64_t count,
    int64_t block, acc_t* __restrict row_grad, acc_t* __restrict row_winner,
    acc_t* __restrict column_grad, acc_t* __restrict column_winner, acc_t* __restrict total,
    scalar_t* __restrict grad_plane) {
  const int64_t L = g.patch_length();
  const int64_t GL = g.orientation_length();
  const int64_t area = g.patch_area();
  auto grad_at = [=](int64_t orientation, int64_t position) {
    return static_cast<acc_t>(grad_sample[orientation * grad_stride_o + position * grad_stride_l]);
  };

  for (int64_t k = 0; k < g.grid; ++k) {
    const int64_t forward_at = k * L + c0 * area;
    const int64_t reversed_at = (g.grid - 1 - k) * L + c0 * area;
    for (int64_t c = 0; c < count; ++c) {
      for (int64_t offset = 0; offset < area; ++offset) {
        const int64_t to = (k * area + offset) * block + c;
        const int64_t from = c * area + offset;
        row_grad[to] = grad_at(0, forward_at + from) + grad_at(2, reversed_at + from);
        column_grad[to] = grad_at(1, forward_at + from) + grad_at(3, reversed_at + from);
        row_winner[to] = argmax_sample[forward_at + from];
        column_winner[to] = argmax_sample[GL + forward_at + from];
      }
    }
  }

  const int64_t plane_size = g.height * g.width;
  for (int64_t y = 0; y < g.height; ++y) {
    for (int64_t x = 0; x < g.width; ++x) {
      std::fill(total, total + count, acc_t(0));
      // docs/operators.md section 1 backward: x[y, x] gets the gradient of each max it won.
      for (int64_t i = covering.first_row[y]; i <= covering.last_row[y]; ++i) {
        const int64_t dy = y - i * g.stride_h;
        for (int64_t j = covering.first_column[x]; j <= covering.last_column[x]; ++j) {
          const int64_t dx = x - j * g.stride_w;
          const int64_t row_cell = ((i * g.patch_h + dy) * g.patch_w + dx) * block;
          const int64_t column_cell = ((j * g.patch_h + dy) * g.patch_w + dx) * block;
          const acc_t* __restrict row_value = &row_grad[row_cell];
          const acc_t* __restrict row_index = &row_winner[row_cell];
          const acc_t* __restrict column_value = &column_grad[column_cell];
          const acc_t* __restrict column_index = &column_winner[column_cell];
          const acc_t column_of_patch = static_cast<acc_t>(j);
          const acc_t row_of_patch = static_cast<acc_t>(i);
          for (int64_t c = 0; c < count; ++c) {
            // Both loaded unconditionally, so that the selection vectorizes.
            const acc_t from_row = row_value[c];
            const acc_t from_column = column_value[c];
            total[c] += row_index[c] == column_of_patch ? from_row : acc_t(0);
            total[c] += column_index[c] == row_of_patch ? from_column : acc_t(0);
          }
        }
      }
      for (int64_t c = 0; c < count; ++c) {
        grad_plane[c * plane_size + y * g.width + x] = static_cast<scalar_t>(total[c]);
      }
    }
  }
}

std::tuple<Tensor, Tensor> oriented_pool_forward_cpu(const Tensor& x, IntArrayRef patch_size,
                                                     int64_t grid_size, IntArrayRef stride) {
  const Geometry g = check_forward_args(x, patch_size, grid_size, stride);
  check_floating_dtype(x, "x", "oriented_pool");
  auto [out, argmax] = allocate_outputs(x, g);
  if (out.numel() == 0) {
    return {out, argmax};
  }
  const Strides4 x_strides = strides_of(x);
  const int64_t batch = x.size(0);
  const int64_t GL = g.orientation_length();
  const int64_t cells = g.grid * g.patch_area();

  SSANET_DISPATCH_FLOATING_TYPES(x.scalar_type(), "oriented_pool_forward_cpu", [&] {
    using acc_t = opmath_t<scalar_t>;
    const int64_t block = channel_block(g, sizeof(acc_t));
    const int64_t blocks_per_sample = (g.channels + block - 1) / block;
    const scalar_t* x_data = x.const_data_ptr<scalar_t>();
    scalar_t* out_data = out.mutable_data_ptr<scalar_t>();
    uint8_t* argmax_data = argmax.mutable_data_ptr<uint8_t>();

    parallel_for(0, batch * blocks_per_sample, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> transposed(g.height * g.width * block);
      CellBlock<acc_t, uint8_t> rows(cells, block), columns(cells, block);  // p_k, q_k
      for (int64_t item = begin; item < end; ++item) {
        const int64_t b = item / blocks_per_sample;
        const int64_t c0 = (item % blocks_per_sample) * block;
        forward_block<scalar_t, acc_t>(
            g, x_strides, x_data + b * x_strides.n, c0, std::min(block, g.channels - c0), block,
            transposed.data(), rows.value.data(), rows.index.data(), columns.value.data(),
            columns.index.data(), out_data + b * 4 * GL, argmax_data + b * 2 * GL);
      }
    });
  });
  return {out, argmax};
}

Tensor oriented_pool_backward_cpu(const Tensor& grad_output, const Tensor& argmax,
                                  IntArrayRef patch_size, int64_t grid_size, IntArrayRef stride,
                                  int64_t batch, int64_t channels, int64_t height, int64_t width) {
  const Geometry g = check_backward_args(grad_output, argmax, patch_size, grid_size, stride,
                                         batch, channels, height, width);
  check_floating_dtype(grad_output, "grad_output", "oriented_pool backward");
  Tensor grad_input = empty_like_device(grad_output, {batch, channels, height, width});
  if (grad_input.numel() == 0) {
    return grad_input;
  }
  const int64_t GL = g.orientation_length();
  const int64_t cells = g.grid * g.patch_area();

  std::vector<int64_t> first_row(height), last_row(height), first_column(width),
      last_column(width);
  for (int64_t y = 0; y < height; ++y) {
    covering_patches(y, g.patch_h, g.stride_h, g.grid, first_row[y], last_row[y]);
  }
  for (int64_t x = 0; x < width; ++x) {
    covering_patches(x, g.patch_w, g.stride_w, g.grid, first_column[x], last_column[x]);
  }
  const CoveringPatches covering{first_row.data(), last_row.data(), first_column.data(),
                                 last_column.data()};

  SSANET_DISPATCH_FLOATING_TYPES(grad_output.scalar_type(), "oriented_pool_backward_cpu", [&] {
    using acc_t = opmath_t<scalar_t>;
    const int64_t block = channel_block(g, sizeof(acc_t));
    const int64_t blocks_per_sample = (channels + block - 1) / block;
    const scalar_t* grad_data = grad_output.const_data_ptr<scalar_t>();
    const uint8_t* argmax_data = argmax.const_data_ptr<uint8_t>();
    scalar_t* grad_input_data = grad_input.mutable_data_ptr<scalar_t>();
    const int64_t grad_stride_n = grad_output.stride(0);
    const int64_t grad_stride_o = grad_output.stride(1);
    const int64_t grad_stride_l = grad_output.stride(2);

    // Each work item owns its (sample, channel block) of grad_input: no races, and a fixed
    // summation order, so the result is deterministic.
    parallel_for(0, batch * blocks_per_sample, 1, [&](int64_t begin, int64_t end) {
      CellBlock<acc_t, acc_t> rows(cells, block), columns(cells, block);
      std::vector<acc_t> total(block);
      for (int64_t item = begin; item < end; ++item) {
        const int64_t b = item / blocks_per_sample;
        const int64_t c0 = (item % blocks_per_sample) * block;
        backward_block<scalar_t, acc_t>(
            g, grad_data + b * grad_stride_n, grad_stride_o, grad_stride_l,
            argmax_data + b * 2 * GL, covering, c0, std::min(block, channels - c0), block,
            rows.value.data(), rows.index.data(), columns.value.data(), columns.index.data(),
            total.data(), grad_input_data + (b * channels + c0) * height * width);
      }
    });
  });
  return grad_input;
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(ssanet_ops, CPU, m) {
  m.impl("oriented_pool", TORCH_BOX(&oriented_pool_forward_cpu));
  m.impl("_oriented_pool_backward", TORCH_BOX(&oriented_pool_backward_cpu));
}

}  // namespace ssanet_ops::oriented_pool
