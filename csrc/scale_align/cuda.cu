// scale_correlation and scale_align on CUDA, in the Fourier form of common/scale_dft.h:
//   1. analysis_kernel: the DFT over the scale axis of phi and weight (any strides; float32,
//      float64, float16, bfloat16), one thread per feature column, writing the T packed planes
//      [G, T, R, D] in the input dtype (so that float16/bfloat16 planes feed tensor cores);
//   2. the T plane products as one batched GEMM with float32 (float64) results: cuBLAS through
//      at::bmm, or this file's tiled kernel (tensor cores through WMMA for float16/bfloat16, and
//      TF32 for float32 when torch.backends.cuda.matmul.allow_tf32 is on; FMA tiles otherwise),
//      chosen by the environment variable SSANET_OPS_SCALE_ALIGN_PRODUCTS = torch | tiled;
//   3. align_kernel / correlation_kernel: the inverse DFT fused with bias, max and argmax (one
//      thread per (n, c)).
// The backward runs grad_planes_kernel (the gradient's planes, one-hot for scale_align), the
// DFT of the other input, the products and synthesis_kernel (the inverse DFT to d phi or
// d weight). Each kernel computes the twiddles into shared memory once per block.

#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "scale_align/scale_align.h"

namespace ssanet_ops::scale_align {
namespace {

constexpr int kThreads = 256;
// The twiddles live in shared memory: 2*S values of the accumulation type per block.
constexpr int64_t kMaxCudaScales = 2048;

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
                                scalar_t* __restrict__ planes) {
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
    scalar_t* target = planes + (g * T * R + r) * D + d;
    const auto column = [&](int64_t j) { return static_cast<acc_t>(source[j * strides.s]); };
    const auto out = [&](int64_t p, acc_t value) {
      target[p * R * D] = static_cast<scalar_t>(value);
    };
    scale_dft::planes<acc_t>(packing, /*conjugate=*/false, column, tw, out);
  }
}

// [G, T, R, D] planes of x [G, R, S, D].
at::Tensor analysis(const at::Tensor& x, scale_dft::Packing packing, cudaStream_t stream) {
  const int64_t G = x.size(0), R = x.size(1), S = x.size(2), D = x.size(3);
  at::Tensor planes = at::empty({G, scale_dft::plane_count(S), R, D}, x.options());
  const int64_t columns = G * R * D;
  if (columns == 0) {
    return planes;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "scale_align_dft",
                                  [&] {
    using acc_t = at::opmath_type<scalar_t>;
    analysis_kernel<scalar_t><<<blocks_for(columns), kThreads, twiddle_bytes<acc_t>(S), stream>>>(
        x.const_data_ptr<scalar_t>(), strides_of(x), R, S, D, columns, packing,
        planes.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return planes;
}

// ---- 2. the plane products ----

// Which kernel runs the products: SSANET_OPS_SCALE_ALIGN_PRODUCTS = torch (cuBLAS, the default)
// or tiled (this file's kernel). Read at every call so that it can be switched at run time.
bool use_tiled_products() {
  const char* value = std::getenv("SSANET_OPS_SCALE_ALIGN_PRODUCTS");
  if (value == nullptr || *value == '\0' || std::strcmp(value, "torch") == 0) {
    return false;
  }
  TORCH_CHECK(std::strcmp(value, "tiled") == 0,
              "SSANET_OPS_SCALE_ALIGN_PRODUCTS must be 'torch' or 'tiled', got '", value, "'");
  return true;
}

// Operands of the tiled kernels: element (b, m, k) of A at A + b*batch + m*row + k*column.
template <typename in_t>
struct Operand {
  const in_t* data;
  int64_t batch, row, column;

  __device__ in_t at(int64_t b, int64_t m, int64_t k) const {
    return data[b * batch + m * row + k * column];
  }
};

template <typename in_t>
Operand<in_t> operand_of(const at::Tensor& tensor) {
  return {tensor.const_data_ptr<in_t>(), tensor.stride(0), tensor.stride(1), tensor.stride(2)};
}

// out[b] (M x N, contiguous) = A[b] (M x K) . B[b] (K x N), FMA in acc_t: 64 x 64 tiles, 256
// threads with 4 x 4 outputs each. The tile loads walk the operand's unit-stride dimension with
// consecutive threads.
template <typename in_t, typename acc_t>
__global__ void __launch_bounds__(256)
    products_fma_kernel(Operand<in_t> A, Operand<in_t> B, acc_t* __restrict__ out,
                        int64_t batch_offset, int64_t M, int64_t N, int64_t K) {
  constexpr int BM = 64, BN = 64, BK = 16, TM = 4, TN = 4;
  __shared__ acc_t As[BK][BM + 4];
  __shared__ acc_t Bs[BK][BN + 4];
  const int64_t b = batch_offset + blockIdx.z;
  const int64_t m0 = int64_t{blockIdx.y} * BM, n0 = int64_t{blockIdx.x} * BN;
  const int tid = threadIdx.x, ty = tid / 16, tx = tid % 16;
  const bool a_along_k = A.column == 1;
  const bool b_along_n = B.column == 1;
  acc_t acc[TM][TN] = {};
  for (int64_t k0 = 0; k0 < K; k0 += BK) {
    for (int e = tid; e < BM * BK; e += 256) {
      const int mm = a_along_k ? e / BK : e % BM;
      const int kk = a_along_k ? e % BK : e / BM;
      const int64_t m = m0 + mm, k = k0 + kk;
      As[kk][mm] = m < M && k < K ? static_cast<acc_t>(A.at(b, m, k)) : acc_t(0);
    }
    for (int e = tid; e < BK * BN; e += 256) {
      const int nn = b_along_n ? e % BN : e / BK;
      const int kk = b_along_n ? e / BN : e % BK;
      const int64_t n = n0 + nn, k = k0 + kk;
      Bs[kk][nn] = n < N && k < K ? static_cast<acc_t>(B.at(b, k, n)) : acc_t(0);
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < BK; ++kk) {
      acc_t a[TM], v[TN];
#pragma unroll
      for (int i = 0; i < TM; ++i) {
        a[i] = As[kk][ty * TM + i];
      }
#pragma unroll
      for (int j = 0; j < TN; ++j) {
        v[j] = Bs[kk][tx * TN + j];
      }
#pragma unroll
      for (int i = 0; i < TM; ++i) {
#pragma unroll
        for (int j = 0; j < TN; ++j) {
          acc[i][j] += a[i] * v[j];
        }
      }
    }
    __syncthreads();
  }
  acc_t* target = out + b * M * N;
#pragma unroll
  for (int i = 0; i < TM; ++i) {
#pragma unroll
    for (int j = 0; j < TN; ++j) {
      const int64_t m = m0 + ty * TM + i, n = n0 + tx * TN + j;
      if (m < M && n < N) {
        target[m * N + n] = acc[i][j];
      }
    }
  }
}

// Element conversions into the shared-memory tiles of the tensor-core kernel.
__device__ __half to_tile(at::Half value, __half) { return static_cast<__half>(value); }
__device__ __nv_bfloat16 to_tile(at::BFloat16 value, __nv_bfloat16) {
  return static_cast<__nv_bfloat16>(value);
}
__device__ float to_tile(float value, float) { return value; }
__device__ __half zero_tile(__half) { return __float2half(0.0f); }
__device__ __nv_bfloat16 zero_tile(__nv_bfloat16) { return __float2bfloat16(0.0f); }
__device__ float zero_tile(float) { return 0.0f; }

// The same product on tensor cores through WMMA, float32 accumulation: 64 x 64 tiles, 4 warps
// with 32 x 32 (2 x 2 fragments of 16 x 16) each, k-tiles of 32. tile_t is the element type of
// the shared tiles (__half, __nv_bfloat16, or float for TF32) and fragment_t the WMMA type
// (the same, or wmma::precision::tf32 with k-steps of 8).
template <typename in_t, typename tile_t, typename fragment_t, int kStep>
__global__ void __launch_bounds__(128)
    products_wmma_kernel(Operand<in_t> A, Operand<in_t> B, float* __restrict__ out,
                         int64_t batch_offset, int64_t M, int64_t N, int64_t K) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  CUDA_KERNEL_ASSERT(false && "the tensor-core products need compute capability 8.0");
#else
  namespace wmma = nvcuda::wmma;
  constexpr int BM = 64, BN = 64, BK = 32;
  // Row pitches keep every fragment 32-byte aligned and its rows off one bank.
  constexpr int pad = sizeof(tile_t) == 2 ? 8 : 4;
  constexpr int A_LD = BK + pad, B_LD = BN + pad, C_LD = BN + 4;
  __shared__ __align__(32) tile_t As[BM * A_LD];
  __shared__ __align__(32) tile_t Bs[BK * B_LD];
  __shared__ __align__(32) float Cs[BM * C_LD];
  const int64_t b = batch_offset + blockIdx.z;
  const int64_t m0 = int64_t{blockIdx.y} * BM, n0 = int64_t{blockIdx.x} * BN;
  const int tid = threadIdx.x, warp = tid / 32, wy = warp / 2, wx = warp % 2;
  const bool a_along_k = A.column == 1;
  const bool b_along_n = B.column == 1;

  wmma::fragment<wmma::accumulator, 16, 16, kStep, float> acc[2][2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      wmma::fill_fragment(acc[i][j], 0.0f);
    }
  }
  for (int64_t k0 = 0; k0 < K; k0 += BK) {
    for (int e = tid; e < BM * BK; e += 128) {
      const int mm = a_along_k ? e / BK : e % BM;
      const int kk = a_along_k ? e % BK : e / BM;
      const int64_t m = m0 + mm, k = k0 + kk;
      As[mm * A_LD + kk] =
          m < M && k < K ? to_tile(A.at(b, m, k), tile_t{}) : zero_tile(tile_t{});
    }
    for (int e = tid; e < BK * BN; e += 128) {
      const int nn = b_along_n ? e % BN : e / BK;
      const int kk = b_along_n ? e / BN : e % BK;
      const int64_t n = n0 + nn, k = k0 + kk;
      Bs[kk * B_LD + nn] =
          n < N && k < K ? to_tile(B.at(b, k, n), tile_t{}) : zero_tile(tile_t{});
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < BK; kk += kStep) {
      wmma::fragment<wmma::matrix_a, 16, 16, kStep, fragment_t, wmma::row_major> a[2];
      wmma::fragment<wmma::matrix_b, 16, 16, kStep, fragment_t, wmma::row_major> v[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        wmma::load_matrix_sync(a[i], As + (wy * 32 + i * 16) * A_LD + kk, A_LD);
        wmma::load_matrix_sync(v[i], Bs + kk * B_LD + wx * 32 + i * 16, B_LD);
        if constexpr (std::is_same_v<fragment_t, wmma::precision::tf32>) {
          for (int t = 0; t < a[i].num_elements; ++t) {
            a[i].x[t] = wmma::__float_to_tf32(a[i].x[t]);
          }
          for (int t = 0; t < v[i].num_elements; ++t) {
            v[i].x[t] = wmma::__float_to_tf32(v[i].x[t]);
          }
        }
      }
#pragma unroll
      for (int i = 0; i < 2; ++i) {
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          wmma::mma_sync(acc[i][j], a[i], v[j], acc[i][j]);
        }
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 2; ++i) {
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      wmma::store_matrix_sync(Cs + (wy * 32 + i * 16) * C_LD + wx * 32 + j * 16, acc[i][j], C_LD,
                              wmma::mem_row_major);
    }
  }
  __syncthreads();
  float* target = out + b * M * N;
  for (int e = tid; e < BM * BN; e += 128) {
    const int mm = e / BN, nn = e % BN;
    const int64_t m = m0 + mm, n = n0 + nn;
    if (m < M && n < N) {
      target[m * N + n] = Cs[mm * C_LD + nn];
    }
  }
#endif
}

// The tiled product kernels for operands of scalar_t (see batched_products).
template <typename scalar_t>
void tiled_products(const at::Tensor& lhs, const at::Tensor& rhs, at::Tensor& out,
                    bool tensor_cores, cudaStream_t stream) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t batches = lhs.size(0), M = lhs.size(1), K = lhs.size(2), N = rhs.size(2);
  const Operand<scalar_t> A = operand_of<scalar_t>(lhs);
  const Operand<scalar_t> B = operand_of<scalar_t>(rhs);
  acc_t* target = out.mutable_data_ptr<acc_t>();
  constexpr int64_t kMaxGridZ = 65535;
  const dim3 tiles((N + 63) / 64, (M + 63) / 64, 1);
  for (int64_t first = 0; first < batches; first += kMaxGridZ) {
    dim3 grid = tiles;
    grid.z = static_cast<unsigned>(std::min(kMaxGridZ, batches - first));
    if constexpr (std::is_same_v<scalar_t, at::Half>) {
      products_wmma_kernel<scalar_t, __half, __half, 16>
          <<<grid, 128, 0, stream>>>(A, B, target, first, M, N, K);
    } else if constexpr (std::is_same_v<scalar_t, at::BFloat16>) {
      products_wmma_kernel<scalar_t, __nv_bfloat16, __nv_bfloat16, 16>
          <<<grid, 128, 0, stream>>>(A, B, target, first, M, N, K);
    } else if constexpr (std::is_same_v<scalar_t, float>) {
      if (tensor_cores) {
        products_wmma_kernel<float, float, nvcuda::wmma::precision::tf32, 8>
            <<<grid, 128, 0, stream>>>(A, B, target, first, M, N, K);
      } else {
        products_fma_kernel<float, float><<<grid, 256, 0, stream>>>(A, B, target, first, M, N, K);
      }
    } else {
      products_fma_kernel<scalar_t, acc_t><<<grid, 256, 0, stream>>>(A, B, target, first, M, N,
                                                                     K);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

bool has_tensor_cores(const at::Tensor& tensor) {
  int major = 0;
  C10_CUDA_CHECK(
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, tensor.get_device()));
  return major >= 8;
}

// out [batch, M, N] (float32, or float64 for float64 operands; contiguous) = lhs [batch, M, K]
// . rhs [batch, K, N], the operands of any strides with a unit stride in one of their last two
// dimensions.
void batched_products(const at::Tensor& lhs, const at::Tensor& rhs, at::Tensor& out,
                      cudaStream_t stream) {
  if (out.numel() == 0) {
    return;
  }
  const bool reduced = lhs.scalar_type() == at::kHalf || lhs.scalar_type() == at::kBFloat16;
  // TF32 exactly when torch.mm would use it (torch.backends.cuda.matmul.allow_tf32, or
  // fp32_precision = "tf32", or torch.set_float32_matmul_precision("high")).
  const bool tf32 = at::globalContext().float32Precision(at::Float32Backend::CUDA,
                                                         at::Float32Op::MATMUL) ==
                    at::Float32Precision::TF32;
  const bool tensor_cores = reduced || (lhs.scalar_type() == at::kFloat && tf32);
  if (!use_tiled_products() || (tensor_cores && !has_tensor_cores(lhs))) {
    if (reduced) {
      at::bmm_out(out, lhs, rhs, at::kFloat);  // cuBLAS, float32 accumulation and result
    } else {
      at::bmm_out(out, lhs, rhs);  // cuBLAS; TF32 as torch.backends.cuda.matmul.allow_tf32 says
    }
    return;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, lhs.scalar_type(),
                                  "scale_align_products", [&] {
    tiled_products<scalar_t>(lhs, rhs, out, tensor_cores, stream);
  });
}

// The accumulation dtype of the products for operands of `dtype`.
at::ScalarType products_dtype(at::ScalarType dtype) {
  return dtype == at::kDouble ? at::kDouble : at::kFloat;
}

// ---- 3. the forward epilogues ----

template <typename scalar_t>
__global__ void align_kernel(const at::opmath_type<scalar_t>* __restrict__ products,
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
    const acc_t offset =
        bias != nullptr ? static_cast<acc_t>(bias[g * bias_stride_g + c * bias_stride_c]) : 0;
    acc_t best;
    shift[index] = scale_dft::align_point(K, tw, offset, best);
    logits[index] = static_cast<scalar_t>(best);
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

void check_cuda_args(const at::Tensor& tensor, const char* name, int64_t S, const char* op) {
  TORCH_CHECK(tensor.is_cuda(), op, ": ", name, " must be a CUDA tensor");
  const at::ScalarType dtype = tensor.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf ||
                  dtype == at::kBFloat16,
              op, ": ", name, " must be float32, float64, float16 or bfloat16 on CUDA, got ",
              dtype);
  TORCH_CHECK(S <= kMaxCudaScales, op, ": the CUDA kernels take at most ", kMaxCudaScales,
              " scales, got S = ", S);
}

// The T plane products of the forward, [G*T, N, C] in the products dtype.
at::Tensor forward_products(const at::Tensor& phi4, const at::Tensor& weight4, const Shape& shape,
                            cudaStream_t stream) {
  const int64_t batches = shape.groups * shape.planes();
  const at::Tensor phi_planes = analysis(phi4, scale_dft::kPhiPacking, stream);
  const at::Tensor weight_planes = analysis(weight4, scale_dft::kWeightPacking, stream);
  at::Tensor products =
      at::empty({batches, shape.proposals, shape.classes},
                phi4.options().dtype(products_dtype(phi4.scalar_type())));
  if (shape.features == 0) {
    return products.zero_();  // sums over an empty feature axis
  }
  batched_products(phi_planes.view({batches, shape.proposals, shape.features}),
                   weight_planes.view({batches, shape.classes, shape.features}).transpose(1, 2),
                   products, stream);
  return products;
}

std::tuple<at::Tensor, at::Tensor> scale_align_cuda(const at::Tensor& phi,
                                                    const at::Tensor& weight,
                                                    const std::optional<at::Tensor>& bias) {
  constexpr const char* op = "scale_align";
  const Shape shape = check_inputs(phi, weight, op);
  check_bias(bias, weight, shape, op);
  check_cuda_args(phi, "phi", shape.scales, op);
  const c10::cuda::CUDAGuard device_guard(phi.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t G = shape.groups, N = shape.proposals, C = shape.classes, S = shape.scales;
  at::Tensor logits = at::empty({G, N, C}, phi.options());
  at::Tensor shift = at::empty({G, N, C}, phi.options().dtype(at::kLong));
  const int64_t points = logits.numel();
  if (points > 0) {
    const at::Tensor products =
        forward_products(as_grouped(phi), as_grouped(weight), shape, stream);
    const at::Tensor bias_grouped = bias.has_value() ? bias->reshape({G, C}) : at::Tensor();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, phi.scalar_type(),
                                    "scale_align_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      align_kernel<scalar_t><<<blocks_for(points), kThreads, twiddle_bytes<acc_t>(S), stream>>>(
          products.const_data_ptr<acc_t>(),
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
  check_cuda_args(phi, "phi", shape.scales, op);
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

// ---- the backward (docs/operators.md section 3, eq. 8) ----

// planes[g, p, n, c] of the gradient over shifts at (g, n, c): dense grad [G, N, C, S] (any
// strides), or grad [G, N, C] one-hot at shift[g, n, c] (contiguous) when `shift` is given.
// `strides` holds grad's strides of (g, n, c, shift) in the fields (g, r, s, d).
template <typename scalar_t>
__global__ void grad_planes_kernel(const scalar_t* __restrict__ grad, Strides4 strides,
                                   const int64_t* __restrict__ shift, int64_t N, int64_t C,
                                   int64_t S, int64_t points, scale_dft::Packing packing,
                                   bool conjugate, scalar_t* __restrict__ planes) {
  using acc_t = at::opmath_type<scalar_t>;
  const scale_dft::Twiddles<acc_t> tw = block_twiddles<acc_t>(S);
  const int64_t T = scale_dft::plane_count(S);
  for (int64_t index = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; index < points;
       index += int64_t{gridDim.x} * blockDim.x) {
    const int64_t c = index % C;
    const int64_t n = (index / C) % N;
    const int64_t g = index / (N * C);
    const scalar_t* point = grad + g * strides.g + n * strides.r + c * strides.s;
    scalar_t* target = planes + g * T * N * C + index % (N * C);
    const auto out = [&](int64_t p, acc_t value) {
      target[p * N * C] = static_cast<scalar_t>(value);
    };
    if (shift != nullptr) {
      const int64_t winner = shift[index];
      CUDA_KERNEL_ASSERT(winner >= 0 && winner < S);
      scale_dft::one_hot_planes<acc_t>(packing, conjugate, static_cast<acc_t>(*point), winner,
                                       tw, out);
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
  check_grad(grad, shift, other, /*other_is_weight=*/!for_weight, op);
  check_cuda_args(grad, "grad", other.size(-2), op);
  const c10::cuda::CUDAGuard device_guard(grad.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const bool grouped = other.dim() == 4;
  const at::Tensor grad4 = grouped ? grad : grad.unsqueeze(0);
  const at::Tensor shift4 =
      shift.has_value() ? (grouped ? *shift : shift->unsqueeze(0)).contiguous() : at::Tensor();
  const at::Tensor other4 = as_grouped(other);
  const int64_t G = grad4.size(0), N = grad4.size(1), C = grad4.size(2);
  const int64_t S = other4.size(2), D = other4.size(3), T = scale_dft::plane_count(S);
  const int64_t other_rows = for_weight ? N : C;
  const int64_t result_rows = for_weight ? C : N;
  at::Tensor result = at::empty({G, result_rows, S, D}, grad.options());
  if (result.numel() == 0) {
    return grouped ? result : result.squeeze(0);
  }
  const scale_dft::Packing grad_packing =
      for_weight ? scale_dft::kWeightPacking : scale_dft::kPhiPacking;
  at::Tensor planes = at::empty({G, T, N, C}, grad.options());
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
              grad_packing, /*conjugate=*/for_weight, planes.mutable_data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    const at::Tensor input_planes = analysis(
        other4, for_weight ? scale_dft::kPhiPacking : scale_dft::kWeightPacking, stream);
    const int64_t batches = G * T;
    const at::Tensor lhs = for_weight ? planes.view({batches, N, C}).transpose(1, 2)
                                      : planes.view({batches, N, C});
    at::Tensor products = at::empty({batches, result_rows, D},
                                    grad.options().dtype(products_dtype(grad.scalar_type())));
    if (other_rows == 0) {
      products.zero_();  // a sum over no proposals (d weight with N = 0) or classes
    } else {
      batched_products(lhs, input_planes.view({batches, other_rows, D}), products, stream);
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
