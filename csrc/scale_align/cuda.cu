// scale_correlation and scale_align on CUDA: the kernels of kernels.cuh on the current device
// and stream.

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "scale_align/kernels.cuh"

namespace ssanet_ops::scale_align {
namespace {

std::tuple<at::Tensor, at::Tensor> scale_align_cuda(const at::Tensor& phi,
                                                    const at::Tensor& weight,
                                                    const std::optional<at::Tensor>& bias) {
  const c10::cuda::CUDAGuard device_guard(phi.device());
  return align(phi, weight, bias, c10::cuda::getCurrentCUDAStream());
}

at::Tensor scale_correlation_cuda(const at::Tensor& phi, const at::Tensor& weight) {
  const c10::cuda::CUDAGuard device_guard(phi.device());
  return correlation(phi, weight, c10::cuda::getCurrentCUDAStream());
}

at::Tensor backward_cuda(const at::Tensor& grad, const std::optional<at::Tensor>& shift,
                         const at::Tensor& other, bool for_weight, const char* op) {
  const c10::cuda::CUDAGuard device_guard(grad.device());
  return backward(grad, shift, other, for_weight, op, c10::cuda::getCurrentCUDAStream());
}

at::Tensor scale_correlation_backward_phi_cuda(const at::Tensor& grad, const at::Tensor& weight) {
  return backward_cuda(grad, std::nullopt, weight, false, "scale_correlation backward");
}

at::Tensor scale_correlation_backward_weight_cuda(const at::Tensor& grad, const at::Tensor& phi) {
  return backward_cuda(grad, std::nullopt, phi, true, "scale_correlation backward");
}

at::Tensor scale_align_backward_phi_cuda(const at::Tensor& grad, const at::Tensor& shift,
                                         const at::Tensor& weight) {
  return backward_cuda(grad, shift, weight, false, "scale_align backward");
}

at::Tensor scale_align_backward_weight_cuda(const at::Tensor& grad, const at::Tensor& shift,
                                            const at::Tensor& phi) {
  return backward_cuda(grad, shift, phi, true, "scale_align backward");
}

}  // namespace

TORCH_LIBRARY_IMPL(ssanet_ops, CUDA, m) {
  m.impl("scale_correlation", &scale_correlation_cuda);
  m.impl("scale_align", &scale_align_cuda);
  m.impl("_scale_correlation_backward_phi", &scale_correlation_backward_phi_cuda);
  m.impl("_scale_correlation_backward_weight", &scale_correlation_backward_weight_cuda);
  m.impl("_scale_align_backward_phi", &scale_align_backward_phi_cuda);
  m.impl("_scale_align_backward_weight", &scale_align_backward_weight_cuda);
}

}  // namespace ssanet_ops::scale_align
