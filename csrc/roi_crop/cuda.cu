// scale_candidates and multiscale_roi_crop on CUDA: the kernels of kernels.cuh on the current
// device and stream.

#include "common/cuda_context.h"
#include "roi_crop/kernels.cuh"

namespace ssanet_ops::roi_crop {
namespace {

Tensor scale_candidates_cuda(const Tensor& boxes, DoubleArrayRef scales,
                             const std::optional<Tensor>& centers, double image_height,
                             double image_width, bool clip) {
  const CudaContext context(boxes);
  return scale_candidates(boxes, scales, centers, image_height, image_width, clip,
                          context.stream());
}

Tensor multiscale_roi_crop_cuda(const Tensor& input, const Tensor& boxes, DoubleArrayRef scales,
                                const std::optional<Tensor>& centers, IntArrayRef output_size,
                                double spatial_scale, int64_t sampling_ratio, bool aligned,
                                bool clip) {
  const CudaContext context(input);
  return crop_forward(input, boxes, scales, centers, output_size, spatial_scale, sampling_ratio,
                      aligned, clip, context.stream());
}

Tensor multiscale_roi_crop_backward_cuda(const Tensor& grad_output, const Tensor& boxes,
                                         DoubleArrayRef scales,
                                         const std::optional<Tensor>& centers,
                                         IntArrayRef output_size, double spatial_scale,
                                         int64_t sampling_ratio, bool aligned, bool clip,
                                         int64_t batch, int64_t channels, int64_t height,
                                         int64_t width, bool deterministic) {
  const CudaContext context(grad_output);
  return crop_backward(grad_output, boxes, scales, centers, output_size, spatial_scale,
                       sampling_ratio, aligned, clip, batch, channels, height, width,
                       deterministic, context.stream());
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(ssanet_ops, CUDA, m) {
  m.impl("scale_candidates", TORCH_BOX(&scale_candidates_cuda));
  m.impl("multiscale_roi_crop", TORCH_BOX(&multiscale_roi_crop_cuda));
  m.impl("_multiscale_roi_crop_backward", TORCH_BOX(&multiscale_roi_crop_backward_cuda));
}

}  // namespace ssanet_ops::roi_crop
