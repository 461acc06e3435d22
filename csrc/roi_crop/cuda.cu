// scale_candidates and multiscale_roi_crop on CUDA: the kernels of kernels.cuh on the current
// device and stream.

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "roi_crop/kernels.cuh"

namespace ssanet_ops::roi_crop {
namespace {

at::Tensor scale_candidates_cuda(const at::Tensor& boxes, at::ArrayRef<double> scales,
                                 const std::optional<at::Tensor>& centers, double image_height,
                                 double image_width, bool clip) {
  const c10::cuda::CUDAGuard device_guard(boxes.device());
  return scale_candidates(boxes, scales, centers, image_height, image_width, clip,
                          c10::cuda::getCurrentCUDAStream());
}

at::Tensor multiscale_roi_crop_cuda(const at::Tensor& input, const at::Tensor& boxes,
                                    at::ArrayRef<double> scales,
                                    const std::optional<at::Tensor>& centers,
                                    at::IntArrayRef output_size, double spatial_scale,
                                    int64_t sampling_ratio, bool aligned, bool clip) {
  const c10::cuda::CUDAGuard device_guard(input.device());
  return crop_forward(input, boxes, scales, centers, output_size, spatial_scale, sampling_ratio,
                      aligned, clip, c10::cuda::getCurrentCUDAStream());
}

at::Tensor multiscale_roi_crop_backward_cuda(const at::Tensor& grad_output,
                                             const at::Tensor& boxes, at::ArrayRef<double> scales,
                                             const std::optional<at::Tensor>& centers,
                                             at::IntArrayRef output_size, double spatial_scale,
                                             int64_t sampling_ratio, bool aligned, bool clip,
                                             int64_t batch, int64_t channels, int64_t height,
                                             int64_t width) {
  const c10::cuda::CUDAGuard device_guard(grad_output.device());
  return crop_backward(grad_output, boxes, scales, centers, output_size, spatial_scale,
                       sampling_ratio, aligned, clip, batch, channels, height, width,
                       c10::cuda::getCurrentCUDAStream());
}

}  // namespace

TORCH_LIBRARY_IMPL(ssanet_ops, CUDA, m) {
  m.impl("scale_candidates", &scale_candidates_cuda);
  m.impl("multiscale_roi_crop", &multiscale_roi_crop_cuda);
  m.impl("_multiscale_roi_crop_backward", &multiscale_roi_crop_backward_cuda);
}

}  // namespace ssanet_ops::roi_crop
