#pragma once
// oriented_pool's CUDA kernels: one thread per output cell (forward) and per input element
// (backward, a gather with no atomics), running the shared cell functions of
// common/oriented_pool.h. Compiled by nvcc into cuda.cu and by the host compiler into sim.cpp
// (common/simulation.h); the entry points at the end do what both share.

#include <tuple>

#include "common/launch.h"
#include "common/simulation.h"
#include "oriented_pool/arguments.h"

namespace ssanet_ops::oriented_pool {

// ---- kernels ----

// index_t: the launch's index type (with_index_type). Offsets into the tensors are int64.
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
    grad_input[element] = static_cast<scalar_t>(backward_cell<scalar_t, acc_t>(
        grad_output + b * grad_stride_n, grad_stride_o, grad_stride_l,
        argmax + b * 2 * g.orientation_length(), g, c, y, x));
  }
}

// ---- launchers ----

template <typename scalar_t>
void launch_forward(const Tensor& x, const Geometry& g, Tensor& out, Tensor& argmax,
                    gpu::Stream stream) {
  const int64_t cells = x.size(0) * g.orientation_length();
  const GridStride launch = grid_stride(cells);
  with_index_type(launch, [&](auto index_type) {
    using index_t = decltype(index_type);
    gpu::launch(forward_kernel<scalar_t, index_t>, launch.blocks, launch.threads, 0, stream,
                x.const_data_ptr<scalar_t>(), strides_of(x), g, static_cast<index_t>(cells),
                out.mutable_data_ptr<scalar_t>(), argmax.mutable_data_ptr<uint8_t>());
  });
}

template <typename scalar_t>
void launch_backward(const Tensor& grad_output, const Tensor& argmax, const Geometry& g,
                     Tensor& grad_input, gpu::Stream stream) {
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
