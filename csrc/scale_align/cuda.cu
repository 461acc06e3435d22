// scale_correlation and scale_align on CUDA, in the Fourier form of common/scale_dft.h:
//   1. analysis_kernel: the DFT over the scale axis of phi and weight (any strides; float32,
//      float64, float16, bfloat16), one thread per feature column, writing the T packed planes
//      [G, T, R, D] in the accumulation type (float32 for float16/bfloat16: the planes are sums
//      of S inputs, which overflow float16 from about 65504 / S, and the gradient planes carry
//      the rounding of the result; SPEC.md section 4 keeps float32 intermediates);
//   2. the T plane products as one batched GEMM on cuBLAS (at::bmm) in the accumulation type;
//   3. align_kernel / correlation_kernel: the inverse DFT fused with max, argmax (within the tie
//      tolerance, from the norms of phi's and weight's rows) and bias (one thread per (n, c)).
// The backward runs grad_planes_kernel (the gradient's planes, one-hot for scale_align), the
// DFT of the other input, the products and synthesis_kernel (the inverse DFT to d phi or
// d weight). Each kernel computes the twiddles into shared memory once per block.

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/linalg_vector_norm.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "scale_align/scale_align.h"

namespace ssanet_ops::scale_align {
namespace {

constexpr int kThreads = 256;

int64_t blocks_for(int64_t work) {
  // Grid-stride loops cover the rest when the work exceeds this many blocks.
  return std::min<int64_t>((work + kThreads - 1) / kThreads, int64_t{1} << 20);
}

template <typename acc_t>
size_t twiddle_bytes(int64_t S) {
  return static_cast<size_t>(2 * S) * sizeof(acc_t);
}

// cos, sin(2*pi*k/S) for k < S, computed by the block into its dynamic shared memory
// (twiddle_bytes<acc_t>(S) of it). Every thread of the block must call it.
template <typename acc_t>
__device__ scale_dft::Twiddles<acc_t> block_twiddles(int64_t S) {
  extern __shared__ __align__(16) unsigned char shared_memory[];
  acc_t* cosines = reinterpret_cast<acc_t*>(shared_memory);
  acc_t* sines = cosines + S;
  for (int64_t k = threadIdx.x; k < S; k += blockDim.x) {
    scale_dft::fill_twiddle(k, S, cosines, sines);
  }
  __syncthreads();
  return {cosines, sines, S};
}

struct Strides4 {
  int64_t g, r, s, d;
};

Strides4 strides_of(const at::Tensor& x) {
  return {x.stride(0), x.stride(1), x.stride(2), x.stride(3)};
}

// ---- 1. the DFT over the scale axis ----

// planes[g, p, r, d] of x[g, r, :, d] for x [G, R, S, D] of any strides.
template <typename scalar_t>
__global__ void analysis_kernel(const scalar_t* __restrict__ x, Strides4 strides, int64_t R,
                                int64_t S, int64_t D, int64_t columns, scale_dft::Packing packing,
                                at::opmath_type<scalar_t>* __restrict__ planes) {
  using acc_t = at::opmath_type<scalar_t>;
  const scale_dft::Twiddles<acc_t> tw = block_twiddles<acc_t>(S);
  const int64_t T = scale_dft::plane_count(S);
  for (int64_t index = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; index < columns;
       index += int64_t{gridDim.x} * blockDim.x) {
    // index = (g * R + r) * D + d: consecutive threads read and write consecutive d.
    const int64_t d = index % D;
    const int64_t row = index / D;
    const int64_t g = row / R, r = row % R;
    const scalar_t* source = x + g * strides.g + r * strides.r + d * strides.d;
    acc_t* target = planes + (g * T * R + r) * D + d;
    const auto column = [&](int64_t j) { return static_cast<acc_t>(source[j * strides.s]); };
    const auto out = [&](int64_t p, acc_t value) { target[p * R * D] = value; };
    scale_dft::planes<acc_t>(packing, /*conjugate=*/false, column, tw, out);
  }
}

// The accumulation dtype of inputs of `dtype`: of the planes and their products.
at::ScalarType accumulation_dtype(at::ScalarType dtype) {
  return dtype == at::kDouble ? at::kDouble : at::kFloat;
}

// [G, T, R, D] planes of x [G, R, S, D], in the accumulation dtype.
at::Tensor analysis(const at::Tensor& x, scale_dft::Packing packing, cudaStream_t stream) {
  const int64_t G = x.size(0), R = x.size(1), S = x.size(2), D = x.size(3);
  at::Tensor planes = at::empty({G, scale_dft::plane_count(S), R, D},
                                x.options().dtype(accumulation_dtype(x.scalar_type())));
  const int64_t columns = G * R * D;
  if (columns == 0) {
    return planes;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "scale_align_dft",
                                  [&] {
    using acc_t = at::opmath_type<scalar_t>;
    analysis_kernel<scalar_t><<<blocks_for(columns), kThreads, twiddle_bytes<acc_t>(S), stream>>>(
        x.const_data_ptr<scalar_t>(), strides_of(x), R, S, D, columns, packing,
        planes.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return planes;
}

// ---- 2, 3. the products (forward_products) and the forward epilogues ----

// phi_norms [G, N] and weight_norms [G, C] (contiguous) are the Frobenius norms of the rows of
// phi and weight, for the tie tolerance.
template <typename scalar_t>
__global__ void align_kernel(const at::opmath_type<scalar_t>* __restrict__ products,
                             const at::opmath_type<scalar_t>* __restrict__ phi_norms,
                             const at::opmath_type<scalar_t>* __restrict__ weight_norms,
                             const scalar_t* __restrict__ bias, int64_t bias_stride_g,
                             int64_t bias_stride_c, int64_t N, int64_t C, int64_t S,
                             int64_t points, scalar_t* __restrict__ logits,
                             int64_t* __restrict__ shift) {
  using acc_t = at::opmath_type<scalar_t>;
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

template <typename scalar_t>
__global__ void correlation_kernel(const at::opmath_type<scalar_t>* __restrict__ products,
                                   int64_t N, int64_t C, int64_t S, int64_t points,
                                   scalar_t* __restrict__ corr) {
  using acc_t = at::opmath_type<scalar_t>;
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

void check_cuda_args(const at::Tensor& tensor, const char* name, const char* op) {
  TORCH_CHECK(tensor.is_cuda(), op, ": ", name, " must be a CUDA tensor");
  const at::ScalarType dtype = tensor.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf ||
                  dtype == at::kBFloat16,
              op, ": ", name, " must be float32, float64, float16 or bfloat16 on CUDA, got ",
              dtype);
}

// The T plane products of the forward, [G*T, N, C] in the accumulation dtype (cuBLAS; TF32 for
// float32 as torch.backends.cuda.matmul.allow_tf32 says).
at::Tensor forward_products(const at::Tensor& phi4, const at::Tensor& weight4, const Shape& shape,
                            cudaStream_t stream) {
  const int64_t batches = shape.groups * shape.planes();
  const at::Tensor phi_planes = analysis(phi4, scale_dft::kPhiPacking, stream);
  const at::Tensor weight_planes = analysis(weight4, scale_dft::kWeightPacking, stream);
  at::Tensor products = at::empty({batches, shape.proposals, shape.classes},
                                  phi_planes.options());
  if (shape.features == 0) {
    return products.zero_();  // sums over an empty feature axis
  }
  at::bmm_out(products, phi_planes.view({batches, shape.proposals, shape.features}),
              weight_planes.view({batches, shape.classes, shape.features}).transpose(1, 2));
  return products;
}

// The Frobenius norms [G, R] of the rows x[g, r] of x [G, R, S, D], in the accumulation dtype.
at::Tensor row_norms(const at::Tensor& x) {
  return at::linalg_vector_norm(x, 2, {2, 3}, /*keepdim=*/false,
                                accumulation_dtype(x.scalar_type()));
}

std::tuple<at::Tensor, at::Tensor> scale_align_cuda(const at::Tensor& phi,
                                                    const at::Tensor& weight,
                                                    const std::optional<at::Tensor>& bias) {
  constexpr const char* op = "scale_align";
  const Shape shape = check_inputs(phi, weight, op);
  check_bias(bias, weight, shape, op);
  check_cuda_args(phi, "phi", op);
  const c10::cuda::CUDAGuard device_guard(phi.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t G = shape.groups, N = shape.proposals, C = shape.classes, S = shape.scales;
  at::Tensor logits = at::empty({G, N, C}, phi.options());
  at::Tensor shift = at::empty({G, N, C}, phi.options().dtype(at::kLong));
  const int64_t points = logits.numel();
  if (points > 0) {
    const at::Tensor phi4 = as_grouped(phi), weight4 = as_grouped(weight);
    const at::Tensor products = forward_products(phi4, weight4, shape, stream);
    const at::Tensor phi_norms = row_norms(phi4), weight_norms = row_norms(weight4);
    const at::Tensor bias_grouped = bias.has_value() ? bias->reshape({G, C}) : at::Tensor();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, phi.scalar_type(),
                                    "scale_align_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      align_kernel<scalar_t><<<blocks_for(points), kThreads, twiddle_bytes<acc_t>(S), stream>>>(
          products.const_data_ptr<acc_t>(), phi_norms.const_data_ptr<acc_t>(),
          weight_norms.const_data_ptr<acc_t>(),
          bias.has_value() ? bias_grouped.const_data_ptr<scalar_t>() : nullptr,
          bias.has_value() ? bias_grouped.stride(0) : 0,
          bias.has_value() ? bias_grouped.stride(1) : 0, N, C, S, points,
          logits.mutable_data_ptr<scalar_t>(), shift.mutable_data_ptr<int64_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {ungroup_like(logits, shape), ungroup_like(shift, shape)};
}

at::Tensor scale_correlation_cuda(const at::Tensor& phi, const at::Tensor& weight) {
  constexpr const char* op = "scale_correlation";
  const Shape shape = check_inputs(phi, weight, op);
  check_cuda_args(phi, "phi", op);
  const c10::cuda::CUDAGuard device_guard(phi.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t G = shape.groups, N = shape.proposals, C = shape.classes, S = shape.scales;
  at::Tensor corr = at::empty({G, N, C, S}, phi.options());
  const int64_t points = G * N * C;
  if (points > 0) {
    const at::Tensor products =
        forward_products(as_grouped(phi), as_grouped(weight), shape, stream);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, phi.scalar_type(),
                                    "scale_correlation_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      correlation_kernel<scalar_t>
          <<<blocks_for(points), kThreads, twiddle_bytes<acc_t>(S), stream>>>(
              products.const_data_ptr<acc_t>(), N, C, S, points,
              corr.mutable_data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return ungroup_like(corr, shape);
}

// ---- the backward (SPEC.md section 3, eq. 8) ----

// planes[g, p, n, c] (in the accumulation type) of the gradient over shifts at (g, n, c): dense
// grad [G, N, C, S] (any strides), or grad [G, N, C] one-hot at shift[g, n, c] (contiguous) when
// `shift` is given. `strides` holds grad's strides of (g, n, c, shift) in the fields
// (g, r, s, d). A shift outside [0, S), which only a direct call of the private backward op can
// pass, contributes nothing: checking it would synchronise with the host (SPEC.md section 4),
// and a device assert would end the CUDA context.
template <typename scalar_t>
__global__ void grad_planes_kernel(const scalar_t* __restrict__ grad, Strides4 strides,
                                   const int64_t* __restrict__ shift, int64_t N, int64_t C,
                                   int64_t S, int64_t points, scale_dft::Packing packing,
                                   bool conjugate, at::opmath_type<scalar_t>* __restrict__ planes) {
  using acc_t = at::opmath_type<scalar_t>;
  const scale_dft::Twiddles<acc_t> tw = block_twiddles<acc_t>(S);
  const int64_t T = scale_dft::plane_count(S);
  for (int64_t index = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; index < points;
       index += int64_t{gridDim.x} * blockDim.x) {
    const int64_t c = index % C;
    const int64_t n = (index / C) % N;
    const int64_t g = index / (N * C);
    const scalar_t* point = grad + g * strides.g + n * strides.r + c * strides.s;
    acc_t* target = planes + g * T * N * C + index % (N * C);
    const auto out = [&](int64_t p, acc_t value) { target[p * N * C] = value; };
    if (shift != nullptr) {
      const int64_t winner = shift[index];
      const bool in_range = winner >= 0 && winner < S;
      scale_dft::one_hot_planes<acc_t>(packing, conjugate,
                                       in_range ? static_cast<acc_t>(*point) : acc_t(0),
                                       in_range ? winner : 0, tw, out);
    } else {
      const auto column = [&](int64_t j) { return static_cast<acc_t>(point[j * strides.d]); };
      scale_dft::planes<acc_t>(packing, conjugate, column, tw, out);
    }
  }
}

// out[g, r, :, d] (contiguous [G, R, S, D]) = the inverse DFT of products[g, :, r, d].
template <typename scalar_t>
__global__ void synthesis_kernel(const at::opmath_type<scalar_t>* __restrict__ products,
                                 int64_t R, int64_t S, int64_t D, int64_t columns,
                                 bool conjugate, scalar_t* __restrict__ out) {
  using acc_t = at::opmath_type<scalar_t>;
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

// d phi (for_weight false) or d weight (for_weight true), as on the CPU (cpu.cpp,
// backward_cpu) but over the whole feature axis at once.
at::Tensor backward_cuda(const at::Tensor& grad, const std::optional<at::Tensor>& shift,
                         const at::Tensor& other, bool for_weight, const char* op) {
  const Shape shape = check_grad(grad, shift, other, /*other_is_weight=*/!for_weight, op);
  check_cuda_args(grad, "grad", op);
  const c10::cuda::CUDAGuard device_guard(grad.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const bool grouped = shape.grouped;
  const at::Tensor grad4 = grouped ? grad : grad.unsqueeze(0);
  const at::Tensor shift4 =
      shift.has_value() ? (grouped ? *shift : shift->unsqueeze(0)).contiguous() : at::Tensor();
  const at::Tensor other4 = as_grouped(other);
  const int64_t G = shape.groups, N = shape.proposals, C = shape.classes;
  const int64_t S = shape.scales, D = shape.features, T = shape.planes();
  const int64_t other_rows = for_weight ? N : C;
  const int64_t result_rows = for_weight ? C : N;
  at::Tensor result = at::empty({G, result_rows, S, D}, grad.options());
  if (result.numel() == 0) {
    return grouped ? result : result.squeeze(0);
  }
  const scale_dft::Packing grad_packing =
      for_weight ? scale_dft::kWeightPacking : scale_dft::kPhiPacking;
  const at::TensorOptions accumulation_options =
      grad.options().dtype(accumulation_dtype(grad.scalar_type()));
  at::Tensor planes = at::empty({G, T, N, C}, accumulation_options);
  const int64_t points = G * N * C;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(),
                                  "scale_align_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    if (points > 0) {
      const Strides4 grad_strides{grad4.stride(0), grad4.stride(1), grad4.stride(2),
                                  shift.has_value() ? 0 : grad4.stride(3)};
      grad_planes_kernel<scalar_t>
          <<<blocks_for(points), kThreads, twiddle_bytes<acc_t>(S), stream>>>(
              grad4.const_data_ptr<scalar_t>(), grad_strides,
              shift.has_value() ? shift4.const_data_ptr<int64_t>() : nullptr, N, C, S, points,
              grad_packing, /*conjugate=*/for_weight, planes.mutable_data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    const at::Tensor input_planes = analysis(
        other4, for_weight ? scale_dft::kPhiPacking : scale_dft::kWeightPacking, stream);
    const int64_t batches = G * T;
    const at::Tensor lhs = for_weight ? planes.view({batches, N, C}).transpose(1, 2)
                                      : planes.view({batches, N, C});
    at::Tensor products = at::empty({batches, result_rows, D}, accumulation_options);
    if (other_rows == 0) {
      products.zero_();  // a sum over no proposals (d weight with N = 0) or classes
    } else {
      at::bmm_out(products, lhs, input_planes.view({batches, other_rows, D}));
    }
    const int64_t columns = G * result_rows * D;
    synthesis_kernel<scalar_t><<<blocks_for(columns), kThreads, twiddle_bytes<acc_t>(S), stream>>>(
        products.const_data_ptr<acc_t>(), result_rows, S, D, columns, /*conjugate=*/for_weight,
        result.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grouped ? result : result.squeeze(0);
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
