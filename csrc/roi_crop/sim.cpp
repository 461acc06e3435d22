// scale_candidates and multiscale_roi_crop's CUDA kernels run by the host simulator
// (common/simulation.h) on CPU tensors, as torch.ops.ssanet_ops_sim.* (reached through
// ssanet_ops.testing.simulate_cuda()).

#include "roi_crop/kernels.cuh"

namespace ssanet_ops::roi_crop {
namespace {

Tensor scale_candidates_sim(const Tensor& boxes, DoubleArrayRef scales,
                            const std::optional<Tensor>& centers, double image_height,
                            double image_width, bool clip) {
  return scale_candidates(boxes, scales, centers, image_height, image_width, clip,
                          gpu::Stream{});
}

Tensor multiscale_roi_crop_sim(const Tensor& input, const Tensor& boxes, DoubleArrayRef scales,
                               const std::optional<Tensor>& centers, IntArrayRef output_size,
                               double spatial_scale, int64_t sampling_ratio, bool aligned,
                               bool clip) {
  return crop_forward(input, boxes, scales, centers, output_size, spatial_scale, sampling_ratio,
                      aligned, clip, gpu::Stream{});
}

Tensor multiscale_roi_crop_backward_sim(const Tensor& grad_output, const Tensor& boxes,
                                        DoubleArrayRef scales,
                                        const std::optional<Tensor>& centers,
                                        IntArrayRef output_size, double spatial_scale,
                                        int64_t sampling_ratio, bool aligned, bool clip,
                                        int64_t batch, int64_t channels, int64_t height,
                                        int64_t width, bool deterministic) {
  return crop_backward(grad_output, boxes, scales, centers, output_size, spatial_scale,
                       sampling_ratio, aligned, clip, batch, channels, height, width,
                       deterministic, gpu::Stream{});
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(ssanet_ops_sim, CPU, m) {
  m.impl("scale_candidates", TORCH_BOX(&scale_candidates_sim));
  m.impl("multiscale_roi_crop", TORCH_BOX(&multiscale_roi_crop_sim));
  m.impl("_multiscale_roi_crop_backward", TORCH_BOX(&multiscale_roi_crop_backward_sim));
}

}  // namespace ssanet_ops::roi_crop
