// oriented_pool's CUDA kernels run by the host simulator (common/simulation.h) on CPU tensors,
// as torch.ops.ssanet_ops_sim.* (reached through ssanet_ops.testing.simulate_cuda()).

#include "oriented_pool/kernels.cuh"

namespace ssanet_ops::oriented_pool {
namespace {

std::tuple<Tensor, Tensor> oriented_pool_forward_sim(const Tensor& x, IntArrayRef patch_size,
                                                     int64_t grid_size, IntArrayRef stride) {
  return forward(x, patch_size, grid_size, stride, gpu::Stream{});
}

Tensor oriented_pool_backward_sim(const Tensor& grad_output, const Tensor& argmax,
                                  IntArrayRef patch_size, int64_t grid_size, IntArrayRef stride,
                                  int64_t batch, int64_t channels, int64_t height, int64_t width) {
  return backward(grad_output, argmax, patch_size, grid_size, stride, batch, channels, height,
                  width, gpu::Stream{});
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(ssanet_ops_sim, CPU, m) {
  m.impl("oriented_pool", TORCH_BOX(&oriented_pool_forward_sim));
  m.impl("_oriented_pool_backward", TORCH_BOX(&oriented_pool_backward_sim));
}

}  // namespace ssanet_ops::oriented_pool
