// oriented_pool on CUDA: the kernels of kernels.cuh on the current device and stream.

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "oriented_pool/kernels.cuh"

namespace ssanet_ops::oriented_pool {
namespace {

std::tuple<at::Tensor, at::Tensor> oriented_pool_forward_cuda(const at::Tensor& x,
                                                              at::IntArrayRef patch_size,
                                                              int64_t grid_size,
                                                              at::IntArrayRef stride) {
  const c10::cuda::CUDAGuard device_guard(x.device());
  return forward(x, patch_size, grid_size, stride, c10::cuda::getCurrentCUDAStream());
}

at::Tensor oriented_pool_backward_cuda(const at::Tensor& grad_output, const at::Tensor& argmax,
                                       at::IntArrayRef patch_size, int64_t grid_size,
                                       at::IntArrayRef stride, int64_t batch, int64_t channels,
                                       int64_t height, int64_t width) {
  const c10::cuda::CUDAGuard device_guard(grad_output.device());
  return backward(grad_output, argmax, patch_size, grid_size, stride, batch, channels, height,
                  width, c10::cuda::getCurrentCUDAStream());
}

}  // namespace

TORCH_LIBRARY_IMPL(ssanet_ops, CUDA, m) {
  m.impl("oriented_pool", &oriented_pool_forward_cuda);
  m.impl("_oriented_pool_backward", &oriented_pool_backward_cuda);
}

}  // namespace ssanet_ops::oriented_pool
