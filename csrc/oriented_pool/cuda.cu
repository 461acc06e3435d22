// oriented_pool on CUDA: one thread per output cell (forward) and per input element (backward,
// a gather with no atomics), running the shared cell functions of common/oriented_pool.h.

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <limits>

#include "oriented_pool/oriented_pool.h"

namespace ssanet_ops::oriented_pool {
namespace {

constexpr int kThreads = 256;

bool fits_int32(int64_t bound) { return bound < std::numeric_limits<int32_t>::max(); }

int64_t blocks_for(int64_t work) {
  // Grid-stride loops cover the rest when the work exceeds this many blocks.
  return std::min<int64_t>((work + kThreads - 1) / kThreads, int64_t{1} << 20);
}

// index_t is int32_t whenever the tensors allow it: 64-bit division, which the index
// decomposition needs, is several times slower on the GPU.
template <typename scalar_t, typename index_t>
__global__ void oriented_pool_forward_kernel(const scalar_t* __restrict__ x, Strides4 x_strides,
                                             Geometry g, index_t cells,
                                             scalar_t* __restrict__ out,
                                             uint8_t* __restrict__ argmax) {
  using acc_t = at::opmath_type<scalar_t>;
  const index_t L = g.patch_length();
  const index_t grid = g.grid, patch_w = g.patch_w, patch_h = g.patch_h;
  for (index_t cell = blockIdx.x * blockDim.x + threadIdx.x; cell < cells;
       cell += gridDim.x * blockDim.x) {
    // cell = (b * G + k) * L + l with l = (c*h + dy)*w + dx: consecutive threads write
    // consecutive outputs.
    const index_t l = cell % L;
    const index_t k = (cell / L) % grid;
    const index_t b = cell / (L * grid);
    const index_t dx = l % patch_w;
    const index_t dy = (l / patch_w) % patch_h;
    const index_t c = l / (patch_w * patch_h);
    forward_cell<scalar_t, acc_t>(x + b * x_strides.n, x_strides, g, k, c, dy, dx,
                                  out + b * 4 * g.orientation_length(),
                                  argmax + b * 2 * g.orientation_length());
  }
}

template <typename scalar_t, typename index_t>
__global__ void oriented_pool_backward_kernel(const scalar_t* __restrict__ grad_output,
                                              int64_t grad_stride_n, int64_t grad_stride_o,
                                              int64_t grad_stride_l,
                                              const uint8_t* __restrict__ argmax, Geometry g,
                                              index_t elements,
                                              scalar_t* __restrict__ grad_input) {
  using acc_t = at::opmath_type<scalar_t>;
  const index_t width = g.width, height = g.height, channels = g.channels;
  for (index_t element = blockIdx.x * blockDim.x + threadIdx.x; element < elements;
       element += gridDim.x * blockDim.x) {
    const index_t x = element % width;
    const index_t y = (element / width) % height;
    const index_t c = (element / (width * height)) % channels;
    const index_t b = element / (width * height * channels);
    grad_input[element] = static_cast<scalar_t>(backward_cell<scalar_t, acc_t>(
        grad_output + b * grad_stride_n, grad_stride_o, grad_stride_l,
        argmax + b * 2 * g.orientation_length(), g, c, y, x));
  }
}

std::tuple<at::Tensor, at::Tensor> oriented_pool_forward_cuda(const at::Tensor& x,
                                                              at::IntArrayRef patch_size,
                                                              int64_t grid_size,
                                                              at::IntArrayRef stride) {
  const Geometry g = check_forward_args(x, patch_size, grid_size, stride);
  const c10::cuda::CUDAGuard device_guard(x.device());
  auto [out, argmax] = allocate_outputs(x, g);
  const int64_t cells = x.size(0) * g.orientation_length();
  if (cells == 0) {
    return {out, argmax};
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "oriented_pool_forward_cuda", [&] {
        auto launch = [&](auto index_zero) {
          using index_t = decltype(index_zero);
          oriented_pool_forward_kernel<scalar_t, index_t>
              <<<blocks_for(cells), kThreads, 0, stream>>>(
                  x.const_data_ptr<scalar_t>(), strides_of(x), g, static_cast<index_t>(cells),
                  out.mutable_data_ptr<scalar_t>(), argmax.mutable_data_ptr<uint8_t>());
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        };
        // The cell count bounds every index the kernel forms (out has 4 cells' worth).
        if (fits_int32(4 * cells)) {
          launch(int32_t{0});
        } else {
          launch(int64_t{0});
        }
      });
  return {out, argmax};
}

at::Tensor oriented_pool_backward_cuda(const at::Tensor& grad_output, const at::Tensor& argmax,
                                       at::IntArrayRef patch_size, int64_t grid_size,
                                       at::IntArrayRef stride, int64_t batch, int64_t channels,
                                       int64_t height, int64_t width) {
  const Geometry g = check_backward_args(grad_output, argmax, patch_size, grid_size, stride,
                                         batch, channels, height, width);
  const c10::cuda::CUDAGuard device_guard(grad_output.device());
  at::Tensor grad_input = at::empty({batch, channels, height, width}, grad_output.options());
  const int64_t elements = grad_input.numel();
  if (elements == 0) {
    return grad_input;
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, grad_output.scalar_type(), "oriented_pool_backward_cuda", [&] {
        auto launch = [&](auto index_zero) {
          using index_t = decltype(index_zero);
          oriented_pool_backward_kernel<scalar_t, index_t>
              <<<blocks_for(elements), kThreads, 0, stream>>>(
                  grad_output.const_data_ptr<scalar_t>(), grad_output.stride(0),
                  grad_output.stride(1), grad_output.stride(2),
                  argmax.const_data_ptr<uint8_t>(), g, static_cast<index_t>(elements),
                  grad_input.mutable_data_ptr<scalar_t>());
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        };
        if (fits_int32(elements)) {
          launch(int32_t{0});
        } else {
          launch(int64_t{0});
        }
      });
  return grad_input;
}

}  // namespace

TORCH_LIBRARY_IMPL(ssanet_ops, CUDA, m) {
  m.impl("oriented_pool", &oriented_pool_forward_cuda);
  m.impl("_oriented_pool_backward", &oriented_pool_backward_cuda);
}

}  // namespace ssanet_ops::oriented_pool
