// scale_correlation and scale_align's CUDA kernels run by the host simulator
// (common/simulation.h) on CPU tensors, as torch.ops.ssanet_ops_sim.* (reached through
// ssanet_ops.testing.simulate_cuda()). The products run as the same ATen calls (through the
// dispatcher), on the CPU.

#include "scale_align/kernels.cuh"

namespace ssanet_ops::scale_align {
namespace {

std::tuple<Tensor, Tensor> scale_align_sim(const Tensor& phi, const Tensor& weight,
                                           const std::optional<Tensor>& bias) {
  return align(phi, weight, bias, gpu::Stream{});
}

Tensor scale_correlation_sim(const Tensor& phi, const Tensor& weight) {
  return correlation(phi, weight, gpu::Stream{});
}

Tensor scale_correlation_backward_phi_sim(const Tensor& grad, const Tensor& weight) {
  return backward(grad, std::nullopt, weight, false, "scale_correlation backward",
                  gpu::Stream{});
}

Tensor scale_correlation_backward_weight_sim(const Tensor& grad, const Tensor& phi) {
  return backward(grad, std::nullopt, phi, true, "scale_correlation backward", gpu::Stream{});
}

std::tuple<Tensor, Tensor, Tensor> scale_align_backward_sim(
    const Tensor& grad, const Tensor& shift, const Tensor& phi, const Tensor& weight,
    bool phi_grad, bool weight_grad, bool bias_grad) {
  return align_backward(grad, shift, phi, weight, phi_grad, weight_grad, bias_grad,
                        gpu::Stream{});
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(ssanet_ops_sim, CPU, m) {
  m.impl("scale_correlation", TORCH_BOX(&scale_correlation_sim));
  m.impl("scale_align", TORCH_BOX(&scale_align_sim));
  m.impl("_scale_correlation_backward_phi", TORCH_BOX(&scale_correlation_backward_phi_sim));
  m.impl("_scale_correlation_backward_weight", TORCH_BOX(&scale_correlation_backward_weight_sim));
  m.impl("_scale_align_backward", TORCH_BOX(&scale_align_backward_sim));
}

}  // namespace ssanet_ops::scale_align
