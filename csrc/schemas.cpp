// The schemas of every ssanet_ops operator, part of the CPU op library (the kernels register
// themselves per backend in <op>/cpu.cpp and, in the CUDA op library, <op>/cuda.cu).

#include "common/stable.h"

STABLE_TORCH_LIBRARY(ssanet_ops, m) {
  // docs/operators.md section 1. Returns (out [B, 4, G*L], argmax [B, 2, G, L] uint8); the public
  // ssanet_ops.oriented_pool returns out only.
  m.def(
      "oriented_pool(Tensor x, int[2] patch_size, int grid_size, int[2] stride)"
      " -> (Tensor, Tensor)");
  m.def(
      "_oriented_pool_backward(Tensor grad_output, Tensor argmax, int[2] patch_size,"
      " int grid_size, int[2] stride, SymInt batch, SymInt channels, SymInt height,"
      " SymInt width) -> Tensor");

  // docs/operators.md section 2. boxes: [K, 5] rows (batch_index, x1, y1, x2, y2); centers: [B, 2] or
  // None (each image's mean box centre). scale_candidates returns [K, S, 4];
  // multiscale_roi_crop returns [K, S, C, oh, ow].
  m.def(
      "scale_candidates(Tensor boxes, float[] scales, Tensor? centers, float image_height,"
      " float image_width, bool clip) -> Tensor");
  m.def(
      "multiscale_roi_crop(Tensor input, Tensor boxes, float[] scales, Tensor? centers,"
      " int[2] output_size, float spatial_scale, int sampling_ratio, bool aligned, bool clip)"
      " -> Tensor");
  // deterministic: on CUDA, the gather backward instead of the atomic one (the CPU has one,
  // deterministic, path); the Python layer passes torch.are_deterministic_algorithms_enabled().
  m.def(
      "_multiscale_roi_crop_backward(Tensor grad_output, Tensor boxes, float[] scales,"
      " Tensor? centers, int[2] output_size, float spatial_scale, int sampling_ratio,"
      " bool aligned, bool clip, SymInt batch, SymInt channels, SymInt height, SymInt width,"
      " bool deterministic) -> Tensor");

  // docs/operators.md section 3. phi [G?, N, S, D], weight [G?, C, S, D] (bias [G?, C]); scale_correlation
  // returns corr [G?, N, C, S], scale_align (logits [G?, N, C], shift [G?, N, C] int64).
  // scale_correlation's backward ops take the gradient of corr and give d phi or d weight, each
  // on its own so that a frozen input costs nothing; scale_align's takes the gradient of logits
  // with the forward's shift and gives (d phi, d weight, d bias) in one call, each only where its
  // flag asks for it (an empty [0] tensor otherwise).
  m.def("scale_correlation(Tensor phi, Tensor weight) -> Tensor");
  m.def("scale_align(Tensor phi, Tensor weight, Tensor? bias=None) -> (Tensor, Tensor)");
  m.def("_scale_correlation_backward_phi(Tensor grad, Tensor weight) -> Tensor");
  m.def("_scale_correlation_backward_weight(Tensor grad, Tensor phi) -> Tensor");
  m.def(
      "_scale_align_backward(Tensor grad, Tensor shift, Tensor phi, Tensor weight, bool phi_grad,"
      " bool weight_grad, bool bias_grad) -> (Tensor, Tensor, Tensor)");
}
