// scale_correlation and scale_align's CUDA kernels run by the host simulator
// (common/simulation.h) on CPU tensors, as torch.ops.ssanet_ops_sim.* (reached through
// ssanet_ops.testing.simulate_cuda()). The plane products run as the same at::bmm calls, on
// the CPU.

#include <torch/library.h>

#include "scale_align/kernels.cuh"

namespace ssanet_ops::scale_align {
namespace {

std::tuple<at::Tensor, at::Tensor> scale_align_sim(const at::Tensor& phi,
                                                   const at::Tensor& weight,
                                                   const std::optional<at::Tensor>& bias) {
  return align(phi, weight, bias, gpu::Stream{});
}

at::Tensor scale_correlation_sim(const at::Tensor& phi, const at::Tensor& weight) {
  return correlation(phi, weight, gpu::Stream{});
}

at::Tensor scale_correlation_backward_phi_sim(const at::Tensor& grad, const at::Tensor& weight) {
  return backward(grad, std::nullopt, weight, false, "scale_correlation backward",
                  gpu::Stream{});
}

at::Tensor scale_correlation_backward_weight_sim(const at::Tensor& grad, const at::Tensor& phi) {
  return backward(grad, std::nullopt, phi, true, "scale_correlation backward", gpu::Stream{});
}

at::Tensor scale_align_backward_phi_sim(const at::Tensor& grad, const at::Tensor& shift,
                                        const at::Tensor& weight) {
  return backward(grad, shift, weight, false, "scale_align backward", gpu::Stream{});
}

at::Tensor scale_align_backward_weight_sim(const at::Tensor& grad, const at::Tensor& shift,
                                           const at::Tensor& phi) {
  return backward(grad, shift, phi, true, "scale_align backward", gpu::Stream{});
}

}  // namespace

TORCH_LIBRARY_IMPL(ssanet_ops_sim, CPU, m) {
  m.impl("scale_correlation", &scale_correlation_sim);
  m.impl("scale_align", &scale_align_sim);
  m.impl("_scale_correlation_backward_phi", &scale_correlation_backward_phi_sim);
  m.impl("_scale_correlation_backward_weight", &scale_correlation_backward_weight_sim);
  m.impl("_scale_align_backward_phi", &scale_align_backward_phi_sim);
  m.impl("_scale_align_backward_weight", &scale_align_backward_weight_sim);
}

}  // namespace ssanet_ops::scale_align
