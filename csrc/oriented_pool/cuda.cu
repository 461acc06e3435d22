// oriented_pool on CUDA: the kernels of kernels.cuh on the current device and stream.

#include "common/cuda_context.h"
#include "oriented_pool/kernels.cuh"

namespace ssanet_ops::oriented_pool {
namespace {

std::tuple<Tensor, Tensor> oriented_pool_forward_cuda(const Tensor& x, IntArrayRef patch_size,
                                                      int64_t grid_size, IntArrayRef stride) {
  const CudaContext context(x);
  return forward(x, patch_size, grid_size, stride, context.stream());
}

Tensor oriented_pool_backward_cuda(const Tensor& grad_output, const Tensor& argmax,
                                   IntArrayRef patch_size, int64_t grid_size, IntArrayRef stride,
                                   int64_t batch, int64_t channels, int64_t height,
                                   int64_t width) {
  const CudaContext context(grad_output);
  return backward(grad_output, argmax, patch_size, grid_size, stride, batch, channels, height,
                  width, context.stream());
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(ssanet_ops, CUDA, m) {
  m.impl("oriented_pool", TORCH_BOX(&oriented_pool_forward_cuda));
  m.impl("_oriented_pool_backward", TORCH_BOX(&oriented_pool_backward_cuda));
}

}  // namespace ssanet_ops::oriented_pool
