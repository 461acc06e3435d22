// scale_correlation and scale_align on CUDA: the kernels of kernels.cuh on the current device
// and stream.

#include "common/cuda_context.h"
#include "scale_align/kernels.cuh"

namespace ssanet_ops::scale_align {
namespace {

std::tuple<Tensor, Tensor> scale_align_cuda(const Tensor& phi, const Tensor& weight,
                                            const std::optional<Tensor>& bias) {
  const CudaContext context(phi);
  return align(phi, weight, bias, context.stream());
}

Tensor scale_correlation_cuda(const Tensor& phi, const Tensor& weight) {
  const CudaContext context(phi);
  return correlation(phi, weight, context.stream());
}

Tensor backward_cuda(const Tensor& grad, const std::optional<Tensor>& shift, const Tensor& other,
                     bool for_weight, const char* op) {
  const CudaContext context(grad);
  return backward(grad, shift, other, for_weight, op, context.stream());
}

Tensor scale_correlation_backward_phi_cuda(const Tensor& grad, const Tensor& weight) {
  return backward_cuda(grad, std::nullopt, weight, false, "scale_correlation backward");
}

Tensor scale_correlation_backward_weight_cuda(const Tensor& grad, const Tensor& phi) {
  return backward_cuda(grad, std::nullopt, phi, true, "scale_correlation backward");
}

std::tuple<Tensor, Tensor, Tensor> scale_align_backward_cuda(
    const Tensor& grad, const Tensor& shift, const Tensor& phi, const Tensor& weight,
    bool phi_grad, bool weight_grad, bool bias_grad) {
  const CudaContext context(grad);
  return align_backward(grad, shift, phi, weight, phi_grad, weight_grad, bias_grad,
                        context.stream());
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(ssanet_ops, CUDA, m) {
  m.impl("scale_correlation", TORCH_BOX(&scale_correlation_cuda));
  m.impl("scale_align", TORCH_BOX(&scale_align_cuda));
  m.impl("_scale_correlation_backward_phi", TORCH_BOX(&scale_correlation_backward_phi_cuda));
  m.impl("_scale_correlation_backward_weight", TORCH_BOX(&scale_correlation_backward_weight_cuda));
  m.impl("_scale_align_backward", TORCH_BOX(&scale_align_backward_cuda));
}

}  // namespace ssanet_ops::scale_align
