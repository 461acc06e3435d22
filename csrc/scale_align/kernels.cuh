#pragma once
// scale_correlation and scale_align's CUDA kernels, in the Fourier form of common/scale_dft.h:
//   1. analysis_kernel: the DFT over the scale axis of phi and weight (any strides; float32,
//      float64, float16, bfloat16), one thread per feature column, writing the T packed planes
//      [G, T, R, D] in the accumulation type (float32 for float16/bfloat16: the planes are sums
//      of S inputs, which overflow float16 from about 65504 / S, and the gradient planes carry
//      the rounding of the result; docs/operators.md section 4 keeps float32 intermediates);
//   2. the T plane products as one batched GEMM in the accumulation type, through ATen's bmm
//      (cuBLAS on a GPU), called through the dispatcher on the calling thread, split over
//      chunks of the feature axis whose partial products a reduction adds up (issue 20);
//   3. align_kernel / correlation_kernel: the inverse DFT fused with max, argmax (within the tie
//      tolerance, from the norms of phi's and weight's rows) and bias (one thread per (n, c)).
// The backward runs grad_planes_kernel (the gradient's planes, one-hot for scale_align), the
// DFT of the other input, the products and synthesis_kernel (the inverse DFT to d phi or
// d weight). Each kernel computes the twiddles into shared memory once per block.
//
// Compiled by nvcc into cuda.cu and by the host compiler into sim.cpp (common/simulation.h),
// where the products and the norms run as the same ATen calls on CPU tensors. The loops index
// in int64 throughout: each thread's DFT (S*S/2 multiply-adds or more) outweighs the divisions
// that an int32 index would make cheaper.
//
// TF32 needs no op argument: this code reads no global setting; ATen's CUDA bmm, reached
// through the dispatcher, decides by itself from torch.backends.cuda.matmul.allow_tf32 /
// torch.set_float32_matmul_precision, as for any torch.bmm.

#include <algorithm>
#include <optional>
#include <tuple>
#include <vector>

#include "common/launch.h"
#include "common/scale_dft.h"
#include "common/simulation.h"
#include "common/strides.h"
#include "common/stable.h"
#include "scale_align/arguments.h"

namespace ssanet_ops::scale_align {

// ---- device functions ----

// cos, sin(2*pi*k/S) for k < S, computed by the block into its dynamic shared memory
// (twiddle_bytes<acc_t>(S) of it). Every thread of the block must call it.
template <typename acc_t>
__device__ scale_dft::Twiddles<acc_t> block_twiddles(int64_t S) {
  acc_t* cosines = gpu::dynamic_shared<acc_t>();
  acc_t* sines = cosines + S;
  for (int64_t k = threadIdx.x; k < S; k += blockDim.x) {
    scale_dft::fill_twiddle(k, S, cosines, sines);
  }
  __syncthreads();
  return {cosines, sines, S};
}

// ---- kernels ----

// planes[g, p, k, r, e] of x[g, r, :, k * W + e] for x [G, R, S, D] of any strides, whose
// strides of (g, r, s, d) are those that common/strides.h names (n, c, h, w): the feature axis
// cut into K chunks of W columns, zero past D (K = 1, W = D: planes [G, T, R, D]).
template <typename scalar_t>
__global__ void analysis_kernel(const scalar_t* __restrict__ x, Strides4 strides, int64_t R,
                                int64_t S, int64_t D, int64_t K, int64_t W, int64_t columns,
                                scale_dft::Packing packing,
                                opmath_t<scalar_t>* __restrict__ planes) {
  using acc_t = opmath_t<scalar_t>;
  const scale_dft::Twiddles<acc_t> tw = block_twiddles<acc_t>(S);
  const int64_t T = scale_dft::plane_count(S);
  for (int64_t index = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; index < columns;
       index += int64_t{gridDim.x} * blockDim.x) {
    // index = ((g * K + k) * R + r) * W + e: consecutive threads read and write consecutive d.
    const int64_t e = index % W;
    const int64_t r = (index / W) % R;
    const int64_t k = (index / (W * R)) % K;
    const int64_t g = index / (W * R * K);
    const int64_t d = k * W + e;
    const bool inside = d < D;
    const scalar_t* source = x + g * strides.n + r * strides.c + (inside ? d : 0) * strides.w;
    acc_t* target = planes + ((g * T * K + k) * R + r) * W + e;
    const auto column = [&](int64_t j) {
      return inside ? static_cast<acc_t>(source[j * strides.h]) : acc_t(0);
    };
    const auto out = [&](int64_t p, acc_t value) { target[p * K * R * W] = value; };
    scale_dft::planes<acc_t>(packing, /*conjugate=*/false, column, tw, out);
  }
}

// logits and shift at (g, n, c) from the products [G, T, N, C]. phi_norms [G, N] and
// weight_norms [G, C] (contiguous) are the Frobenius norms of the rows of phi and weight, for
// the tie tolerance.
template <typename scalar_t>
__global__ void align_kernel(const opmath_t<scalar_t>* __restrict__ products,
                             const opmath_t<scalar_t>* __restrict__ phi_norms,
                             const opmath_t<scalar_t>* __restrict__ weight_norms,
                             const scalar_t* __restrict__ bias, int64_t bias_stride_g,
                             int64_t bias_stride_c, int64_t N, int64_t C, int64_t S,
                             int64_t points, scalar_t* __restrict__ logits,
                             int64_t* __restrict__ shift) {
  using acc_t = opmath_t<scalar_t>;
  const scale_dft::Twiddles<acc_t> tw = block_twiddles<acc_t>(S);
  const int64_t T = scale_dft::plane_count(S);
  for (int64_t index = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; index < points;
       index += int64_t{gridDim.x} * blockDim.x) {
    // index = (g * N + n) * C + c
    const int64_t c = index % C;
    const int64_t g = index / (N * C);
    const acc_t* point = products + g * T * N * C + index % (N * C);
    const auto K = [&](int64_t p) { return point[p * N * C]; };
    const acc_t tolerance =
        scale_dft::tie_tolerance(S, phi_norms[index / C], weight_norms[g * C + c]);
    acc_t response;
    shift[index] = scale_dft::align_point(K, tw, tolerance, response);
    if (bias != nullptr) {
      response += static_cast<acc_t>(bias[g * bias_stride_g + c * bias_stride_c]);
    }
    logits[index] = static_cast<scalar_t>(response);
  }
}

// corr[g, n, c, :] from the products [G, T, N, C].
template <typename scalar_t>
__global__ void correlation_kernel(const opmath_t<scalar_t>* __restrict__ products,
                                   int64_t N, int64_t C, int64_t S, int64_t points,
                                   scalar_t* __restrict__ corr) {
  using acc_t = opmath_t<scalar_t>;
  const scale_dft::Twiddles<acc_t> tw = block_twiddles<acc_t>(S);
  const int64_t T = scale_dft::plane_count(S);
  for (int64_t index = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; index < points;
       index += int64_t{gridDim.x} * blockDim.x) {
    const int64_t g = index / (N * C);
    const acc_t* point = products + g * T * N * C + index % (N * C);
    const auto K = [&](int64_t p) { return point[p * N * C]; };
    scalar_t* target = corr + index * S;
    const auto out = [&](int64_t r, acc_t value) { target[r] = static_cast<scalar_t>(value); };
    scale_dft::synthesis<acc_t>(K, /*conjugate=*/false, tw, out);
  }
}

// planes[g, p, n, c] (in the accumulation type) of the gradient over shifts at (g, n, c): dense
// grad [G, N, C, S] (any strides), or grad [G, N, C] one-hot at shift[g, n, c] (contiguous) when
// `shift` is given. `strides` holds grad's strides of (g, n, c, shift) in the fields
// (n, c, h, w). A shift outside [0, S), which only a direct call of the private backward op can
// pass, contributes nothing: checking it would synchronise with the host (docs/operators.md section 4),
// and a device assert would end the CUDA context.
template <typename scalar_t>
__global__ void grad_planes_kernel(const scalar_t* __restrict__ grad, Strides4 strides,
                                   const int64_t* __restrict__ shift, int64_t N, int64_t C,
                                   int64_t S, int64_t points, scale_dft::Packing packing,
                                   bool conjugate, opmath_t<scalar_t>* __restrict__ planes) {
  using acc_t = opmath_t<scalar_t>;
  const scale_dft::Twiddles<acc_t> tw = block_twiddles<acc_t>(S);
  const int64_t T = scale_dft::plane_count(S);
  for (int64_t index = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; index < points;
       index += int64_t{gridDim.x} * blockDim.x) {
    const int64_t c = index % C;
    const int64_t n = (index / C) % N;
    const int64_t g = index / (N * C);
    const scalar_t* point = grad + g * strides.n + n * strides.c + c * strides.h;
    acc_t* target = planes + g * T * N * C + index % (N * C);
    const auto out = [&](int64_t p, acc_t value) { target[p * N * C] = value; };
    if (shift != nullptr) {
      const int64_t winner = shift[index];
      const bool in_range = winner >= 0 && winner < S;
      scale_dft::one_hot_planes<acc_t>(packing, conjugate,
                                       in_range ? static_cast<acc_t>(*point) : acc_t(0),
                                       in_range ? winner : 0, tw, out);
    } else {
      const auto column = [&](int64_t j) { return static_cast<acc_t>(point[j * strides.w]); };
      scale_dft::planes<acc_t>(packing, conjugate, column, tw, out);
    }
  }
}

// out[g, r, :, d] (contiguous [G, R, S, D]) = the inverse DFT of products[g, :, r, d].
template <typename scalar_t>
__global__ void synthesis_kernel(const opmath_t<scalar_t>* __restrict__ products,
                                 int64_t R, int64_t S, int64_t D, int64_t columns,
                                 bool conjugate, scalar_t* __restrict__ out) {
  using acc_t = opmath_t<scalar_t>;
  const scale_dft::Twiddles<acc_t> tw = block_twiddles<acc_t>(S);
  const int64_t T = scale_dft::plane_count(S);
  for (int64_t index = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; index < columns;
       index += int64_t{gridDim.x} * blockDim.x) {
    const int64_t d = index % D;
    const int64_t row = index / D;  // g * R + r
    const int64_t g = row / R, r = row % R;
    const acc_t* source = products + (g * T * R + r) * D + d;
    scalar_t* target = out + row * S * D + d;
    const auto K = [&](int64_t p) { return source[p * R * D]; };
    const auto column = [&](int64_t j, acc_t value) {
      target[j * D] = static_cast<scalar_t>(value);
    };
    scale_dft::synthesis<acc_t>(K, conjugate, tw, column);
  }
}

// ---- launchers: one grid-stride launch each, on tensors of the kernels' device ----

// The dynamic shared memory of every kernel here: the twiddles of S scales (block_twiddles).
template <typename acc_t>
size_t twiddle_bytes(int64_t S) {
  return static_cast<size_t>(2 * S) * sizeof(acc_t);
}

// planes [G, T, K, R, W] (accumulation type) of x [G, R, S, D] in K chunks of W columns.
template <typename scalar_t>
void launch_analysis(const Tensor& x, scale_dft::Packing packing, int64_t K, int64_t W,
                     Tensor& planes, gpu::Stream stream) {
  using acc_t = opmath_t<scalar_t>;
  const int64_t R = x.size(1), S = x.size(2), D = x.size(3);
  const int64_t columns = x.size(0) * K * R * W;
  const GridStride launch = grid_stride(columns);
  gpu::launch(analysis_kernel<scalar_t>, launch.blocks, launch.threads, twiddle_bytes<acc_t>(S),
              stream, x.const_data_ptr<scalar_t>(), strides_of(x), R, S, D, K, W, columns,
              packing, planes.mutable_data_ptr<acc_t>());
}

// logits and shift [G, N, C] from the products [G*T, N, C] and the row norms [G, N], [G, C];
// bias [G, C] or undefined.
template <typename scalar_t>
void launch_align(const Tensor& products, const Tensor& phi_norms, const Tensor& weight_norms,
                  const Tensor& bias, const Shape& shape, Tensor& logits, Tensor& shift,
                  gpu::Stream stream) {
  using acc_t = opmath_t<scalar_t>;
  const int64_t points = logits.numel();
  const bool has_bias = bias.defined();
  const GridStride launch = grid_stride(points);
  gpu::launch(align_kernel<scalar_t>, launch.blocks, launch.threads,
              twiddle_bytes<acc_t>(shape.scales), stream, products.const_data_ptr<acc_t>(),
              phi_norms.const_data_ptr<acc_t>(), weight_norms.const_data_ptr<acc_t>(),
              has_bias ? bias.const_data_ptr<scalar_t>() : nullptr,
              has_bias ? bias.stride(0) : 0, has_bias ? bias.stride(1) : 0, shape.proposals,
              shape.classes, shape.scales, points, logits.mutable_data_ptr<scalar_t>(),
              shift.mutable_data_ptr<int64_t>());
}

// corr [G, N, C, S] from the products [G*T, N, C].
template <typename scalar_t>
void launch_correlation(const Tensor& products, const Shape& shape, Tensor& corr,
                        gpu::Stream stream) {
  using acc_t = opmath_t<scalar_t>;
  const int64_t points = shape.groups * shape.proposals * shape.classes;
  const GridStride launch = grid_stride(points);
  gpu::launch(correlation_kernel<scalar_t>, launch.blocks, launch.threads,
              twiddle_bytes<acc_t>(shape.scales), stream, products.const_data_ptr<acc_t>(),
              shape.proposals, shape.classes, shape.scales, points,
              corr.mutable_data_ptr<scalar_t>());
}

// planes [G, T, N, C] (accumulation type) of grad [G, N, C, S], or of grad [G, N, C] one-hot at
// shift [G, N, C] (contiguous) when `shift` is defined.
template <typename scalar_t>
void launch_grad_planes(const Tensor& grad, const Tensor& shift, const Shape& shape,
                        scale_dft::Packing packing, bool conjugate, Tensor& planes,
                        gpu::Stream stream) {
  using acc_t = opmath_t<scalar_t>;
  const int64_t points = shape.groups * shape.proposals * shape.classes;
  // grad's strides of (g, n, c, shift) in the fields (n, c, h, w).
  const Strides4 strides{grad.stride(0), grad.stride(1), grad.stride(2),
                         shift.defined() ? 0 : grad.stride(3)};
  const GridStride launch = grid_stride(points);
  gpu::launch(grad_planes_kernel<scalar_t>, launch.blocks, launch.threads,
              twiddle_bytes<acc_t>(shape.scales), stream, grad.const_data_ptr<scalar_t>(),
              strides, shift.defined() ? shift.const_data_ptr<int64_t>() : nullptr,
              shape.proposals, shape.classes, shape.scales, points, packing, conjugate,
              planes.mutable_data_ptr<acc_t>());
}

// out [G, R, S, D] (contiguous) from the products [G*T, R, D].
template <typename scalar_t>
void launch_synthesis(const Tensor& products, bool conjugate, Tensor& out, gpu::Stream stream) {
  using acc_t = opmath_t<scalar_t>;
  const int64_t R = out.size(1), S = out.size(2), D = out.size(3);
  const int64_t columns = out.numel() / S;
  const GridStride launch = grid_stride(columns);
  gpu::launch(synthesis_kernel<scalar_t>, launch.blocks, launch.threads, twiddle_bytes<acc_t>(S),
              stream, products.const_data_ptr<acc_t>(), R, S, D, columns, conjugate,
              out.mutable_data_ptr<scalar_t>());
}

// ---- entry points: the ops' schemas, on tensors of the kernels' device ----

// The accumulation dtype of inputs of `dtype`: of the planes and their products.
inline ScalarType accumulation_dtype(ScalarType dtype) {
  return dtype == ScalarType::Double ? ScalarType::Double : ScalarType::Float;
}

// The planes of x [G, R, S, D] in the accumulation dtype, its feature axis in K chunks of W
// columns (zero past D) as [G * T * K, R, W]; [G * T, R, D] when K = 1 and W = D.
inline Tensor analysis(const Tensor& x, scale_dft::Packing packing, int64_t K, int64_t W,
                       gpu::Stream stream) {
  const int64_t T = scale_dft::plane_count(x.size(2));
  Tensor planes = empty_like_device(x, {x.size(0) * T * K, x.size(1), W},
                                    accumulation_dtype(x.scalar_type()));
  if (planes.numel() > 0) {
    SSANET_DISPATCH_FLOATING_TYPES(x.scalar_type(), "scale_align_dft", [&] {
      launch_analysis<scalar_t>(x, packing, K, W, planes, stream);
    });
  }
  return planes;
}

// out = lhs @ rhs, batched ([B, M, K] @ [B, K, P] into [B, M, P]), through ATen's bmm.out.
inline void bmm_out(Tensor& out, const Tensor& lhs, const Tensor& rhs) {
  call_aten("aten::bmm", "out", lhs, rhs, out);
}

// Columns per chunk of the forward's products: a GEMM adds the terms of its inner dimension
// one after another, so its rounding grows with D (at D = 100,352 in the simulator's bmm, 15
// times that of torch.fft in float64, issue 20); chunks of this width, whose partial products
// a reduction adds up, keep it near that of one chunk (the CPU kernels' chunks do the same,
// cpu.cpp).
constexpr int64_t kProductChunkWidth = 256;

// The number of chunks K of the forward's products: D / kProductChunkWidth, rounded up, but no
// more than keeps the partial products [G*T*K, N, C] within the planes' memory.
inline int64_t product_chunks(const Shape& shape) {
  const int64_t N = shape.proposals, C = shape.classes, D = shape.features;
  const int64_t wanted = (D + kProductChunkWidth - 1) / kProductChunkWidth;
  const int64_t within_planes = (N + C) * D / std::max<int64_t>(N * C, 1);
  return std::max<int64_t>(1, std::min(wanted, within_planes));
}

// The T plane products of the forward, [G*T, N, C] in the accumulation dtype, through ATen's
// bmm (on a GPU, cuBLAS: TF32 for float32 as torch.backends.cuda.matmul.allow_tf32 says) over
// K chunks of the feature axis at once, then ATen's sum over the chunks.
inline Tensor forward_products(const Tensor& phi4, const Tensor& weight4, const Shape& shape,
                               gpu::Stream stream) {
  const int64_t N = shape.proposals, C = shape.classes, D = shape.features;
  const int64_t batches = shape.groups * shape.planes();
  if (D == 0) {  // sums over an empty feature axis
    Tensor products =
        empty_like_device(phi4, {batches, N, C}, accumulation_dtype(phi4.scalar_type()));
    return torch::stable::zero_(products);
  }
  const int64_t wanted_chunks = product_chunks(shape);
  const int64_t W = (D + wanted_chunks - 1) / wanted_chunks;
  const int64_t K = (D + W - 1) / W;  // no chunk wholly past D
  const Tensor phi_planes = analysis(phi4, scale_dft::kPhiPacking, K, W, stream);
  const Tensor weight_planes = analysis(weight4, scale_dft::kWeightPacking, K, W, stream);
  Tensor partials = empty_like_device(phi_planes, {batches * K, N, C});
  bmm_out(partials, phi_planes, torch::stable::transpose(weight_planes, 1, 2));
  if (K == 1) {
    return partials;
  }
  // sum.dim_IntList's dim is an optional list (int[1]?), passed as such through the stable ABI.
  const std::optional<std::vector<int64_t>> chunk_dim = std::vector<int64_t>{1};
  return call_aten("aten::sum", "dim_IntList",
                   torch::stable::view(partials, {batches, K, N, C}), chunk_dim,
                   /*keepdim=*/false, std::nullopt)[0];
}

// The Frobenius norms [G, R] of the rows x[g, r] of x [G, R, S, D], in the accumulation dtype:
// aten::norm with p = None (2), whose Scalar p the stable ABI cannot pass but None, as
// torch.linalg.vector_norm(x, 2, (2, 3), dtype=...) computes them.
inline Tensor row_norms(const Tensor& x) {
  return call_aten("aten::norm", "ScalarOpt_dim_dtype", x, std::nullopt,
                   std::vector<int64_t>{2, 3}, /*keepdim=*/false,
                   accumulation_dtype(x.scalar_type()))[0];
}

inline std::tuple<Tensor, Tensor> align(const Tensor& phi, const Tensor& weight,
                                        const std::optional<Tensor>& bias, gpu::Stream stream) {
  constexpr const char* op = "scale_align";
  const Shape shape = check_inputs(phi, weight, op);
  check_bias(bias, weight, shape, op);
  check_floating_dtype(phi, "phi", op);
  const int64_t G = shape.groups, N = shape.proposals, C = shape.classes;
  Tensor logits = empty_like_device(phi, {G, N, C});
  Tensor shift = empty_like_device(phi, {G, N, C}, ScalarType::Long);
  if (logits.numel() > 0) {
    const Tensor phi4 = as_grouped(phi), weight4 = as_grouped(weight);
    const Tensor products = forward_products(phi4, weight4, shape, stream);
    const Tensor phi_norms = row_norms(phi4), weight_norms = row_norms(weight4);
    const Tensor bias_grouped =
        bias.has_value() ? torch::stable::reshape(*bias, {G, C}) : Tensor();
    SSANET_DISPATCH_FLOATING_TYPES(phi.scalar_type(), "scale_align", [&] {
      launch_align<scalar_t>(products, phi_norms, weight_norms, bias_grouped, shape, logits,
                             shift, stream);
    });
  }
  return {ungroup_like(logits, shape), ungroup_like(shift, shape)};
}

inline Tensor correlation(const Tensor& phi, const Tensor& weight, gpu::Stream stream) {
  constexpr const char* op = "scale_correlation";
  const Shape shape = check_inputs(phi, weight, op);
  check_floating_dtype(phi, "phi", op);
  Tensor corr =
      empty_like_device(phi, {shape.groups, shape.proposals, shape.classes, shape.scales});
  if (corr.numel() > 0) {
    const Tensor products =
        forward_products(as_grouped(phi), as_grouped(weight), shape, stream);
    SSANET_DISPATCH_FLOATING_TYPES(phi.scalar_type(), "scale_correlation", [&] {
      launch_correlation<scalar_t>(products, shape, corr, stream);
    });
  }
  return ungroup_like(corr, shape);
}

// d phi (for_weight false) or d weight (for_weight true) of either op (docs/operators.md section 3,
// eq. 8), as on the CPU (cpu.cpp, backward_cpu) but over the whole feature axis at once: `shift`
// for scale_align, none for scale_correlation; `other` is the saved input, weight for d phi and
// phi for d weight.
inline Tensor backward(const Tensor& grad, const std::optional<Tensor>& shift,
                       const Tensor& other, bool for_weight, const char* op, gpu::Stream stream) {
  const Shape shape = check_grad(grad, shift, other, /*other_is_weight=*/!for_weight, op);
  check_floating_dtype(grad, "grad", op);
  const bool grouped = shape.grouped;
  const int64_t G = shape.groups, N = shape.proposals, C = shape.classes;
  const int64_t S = shape.scales, D = shape.features, T = shape.planes();
  const int64_t other_rows = for_weight ? N : C;
  const int64_t result_rows = for_weight ? C : N;
  Tensor result = empty_like_device(grad, {G, result_rows, S, D});
  if (result.numel() == 0) {
    return grouped ? result : torch::stable::squeeze(result, 0);
  }
  const Tensor grad4 = grouped ? grad : torch::stable::unsqueeze(grad, 0);
  const Tensor shift4 =
      shift.has_value()
          ? torch::stable::contiguous(grouped ? *shift : torch::stable::unsqueeze(*shift, 0))
          : Tensor();
  const ScalarType accumulation = accumulation_dtype(grad.scalar_type());
  Tensor planes = empty_like_device(grad, {G, T, N, C}, accumulation);
  if (planes.numel() > 0) {
    const scale_dft::Packing packing =
        for_weight ? scale_dft::kWeightPacking : scale_dft::kPhiPacking;
    SSANET_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "scale_align_grad_planes", [&] {
      launch_grad_planes<scalar_t>(grad4, shift4, shape, packing, /*conjugate=*/for_weight,
                                   planes, stream);
    });
  }
  const Tensor input_planes =
      analysis(as_grouped(other), for_weight ? scale_dft::kPhiPacking : scale_dft::kWeightPacking,
               /*K=*/1, D, stream);
  const int64_t batches = G * T;
  const Tensor planes3 = torch::stable::view(planes, {batches, N, C});
  const Tensor lhs = for_weight ? torch::stable::transpose(planes3, 1, 2) : planes3;
  Tensor products = empty_like_device(grad, {batches, result_rows, D}, accumulation);
  if (other_rows == 0) {
    torch::stable::zero_(products);  // a sum over no proposals (d weight with N = 0) or classes
  } else {
    bmm_out(products, lhs, torch::stable::view(input_planes, {batches, other_rows, D}));
  }
  SSANET_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "scale_align_synthesis", [&] {
    launch_synthesis<scalar_t>(products, /*conjugate=*/for_weight, result, stream);
  });
  return grouped ? result : torch::stable::squeeze(result, 0);
}

}  // namespace ssanet_ops::scale_align
