#pragma once
// scale_correlation and scale_align's CUDA kernels, in the Fourier form of common/scale_dft.h.
// The forward is one launch where fused_products allows (S <= 9; float64: S <= 6, or 7 when
// N > 8): product_kernel, per tile of rows of phi and weight and four chunks of the feature
// axis, takes the DFT planes of the inputs, read once in their dtype, in shared memory, and
// their T products over those chunks, with the rows' sums of squares (the tie tolerance's
// norms); where the feature axis spans several blocks of a tile, each writes its partial sums
// [G, T, ceil(K / 4), N, C] in the accumulation type and the last to arrive adds them up
// (pairwise); the tile's last (or only) block finishes its points as align_kernel /
// correlation_kernel below would (the same device functions).
// Otherwise three launches:
//   1. analysis_kernel: the DFT over the scale axis of phi and weight in one launch (any
//      strides; float32, float64, float16, bfloat16), one block per slice of a row, writing the
//      T packed planes [G, T, K, R, W] in the accumulation type (float32 for float16/bfloat16:
//      the planes are sums of S inputs, which overflow float16 from about 65504 / S, and the
//      gradient planes carry the rounding of the result; docs/operators.md section 4 keeps
//      float32 intermediates) and, for scale_align, each row's sum of squares (the tie
//      tolerance's norm) from the same read of the input;
//   2. the T plane products as one batched GEMM in the accumulation type, through ATen's bmm
//      (cuBLAS on a GPU), called through the dispatcher on the calling thread, over K chunks of
//      the feature axis whose partial products the next kernel adds up (issue 20);
//   3. align_kernel / correlation_kernel: the sum over the chunks and the inverse DFT, fused
//      with max, argmax (within the tie tolerance) and bias (one thread per (n, c)).
// scale_align's backward (S <= 8) is the direct form of eq. 8 in one launch for d phi, d weight
// and d bias together: align_backward_kernel, per tile of result rows and slice of the feature
// axis, adds up each column's S * N * C products straight from the one-hot gradient (no
// intermediate tensor, no cuBLAS). scale_correlation's (and scale_align's at larger S)
// runs grad_planes_kernel (the gradient's planes), the DFT of the other input, the products
// and synthesis_kernel (the inverse DFT to d phi or d weight). Each DFT kernel computes the
// twiddles into shared memory once per block.
//
// Compiled by nvcc into cuda.cu and by the host compiler into sim.cpp (common/simulation.h),
// where the products run as the same ATen calls on CPU tensors. The loops index
// in int64 throughout: each thread's DFT (S*S/2 multiply-adds or more) outweighs the divisions
// that an int32 index would make cheaper.
//
// TF32 needs no op argument: this code reads no global setting; ATen's CUDA bmm, reached
// through the dispatcher, decides by itself from torch.backends.cuda.matmul.allow_tf32 /
// torch.set_float32_matmul_precision, as for any torch.bmm.

#include <algorithm>
#include <map>
#include <mutex>
#include <optional>
#include <tuple>
#include <utility>
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

// *address, a value in global memory that another block of the same launch may have written
// (before a __threadfence and an atomic that this block observed): loaded through L2
// (ld.global.cg), which every SM sees alike, never from this SM's L1.
template <typename T>
__device__ __forceinline__ T load_from_l2(const T* address) {
#if defined(__CUDACC__)
  return __ldcg(address);
#else
  return *address;
#endif
}

// Product p of one point from partial products over K chunks of the feature axis, the chunks
// `chunk_stride` apart and the planes K * chunk_stride apart, added up pairwise (the sum of
// chunks 2m and 2m + 1, then of those pairs, and so on: a rounding error that grows with log K,
// as the cascade sum of ATen's that these kernels replaced; added one after another, the K =
// 392 chunks of D = 100,352 doubled the float32 error, benchmarks/scale_align_accuracy.py).
// The chunks are read through L2 (load_from_l2): product_kernel's last block of a tile reads
// those that other blocks of its launch wrote.
template <typename acc_t>
__device__ acc_t chunk_sum(const acc_t* point, int64_t p, int64_t K, int64_t chunk_stride) {
  const acc_t* chunks = point + p * K * chunk_stride;
  // pending[l]: the sum of a run of 2^l chunks not yet paired (a binary counter of k).
  constexpr int kLevels = 48;  // K < 2^48: more chunks than bytes a GPU holds
  acc_t pending[kLevels];
  int top = 0;
  for (int64_t k = 0; k < K; ++k) {
    acc_t value = load_from_l2(chunks + k * chunk_stride);
    for (int64_t run = k + 1; run % 2 == 0; run /= 2) {
      value = pending[--top] + value;
    }
    pending[top++] = value;
  }
  acc_t total = pending[--top];
  while (top > 0) {
    total = pending[--top] + total;
  }
  return total;
}

// The norm of a row from its P sums of squares, `stride` apart (analysis_kernel's slices,
// product_kernel's block chunks), added up in order.
template <typename acc_t>
__device__ acc_t row_norm(const acc_t* squares, int64_t P, int64_t stride = 1) {
  acc_t total = 0;
  for (int64_t s = 0; s < P; ++s) {
    total += squares[s * stride];
  }
  return sqrt(total);
}

// scale_align's epilogue at one (n, c) (align_kernel, product_kernel): from its T sums K(p),
// the shift into *shift and the maximum response plus *bias (where not null) into *logit.
template <typename scalar_t, typename Products>
__device__ void store_alignment(const Products& K,
                                const scale_dft::Twiddles<opmath_t<scalar_t>>& tw,
                                opmath_t<scalar_t> tolerance, const scalar_t* bias,
                                scalar_t* logit, int64_t* shift) {
  using acc_t = opmath_t<scalar_t>;
  acc_t response;
  *shift = scale_dft::align_point(K, tw, tolerance, response);
  if (bias != nullptr) {
    response += static_cast<acc_t>(*bias);
  }
  *logit = static_cast<scalar_t>(response);
}

// scale_correlation's epilogue at one (n, c) (correlation_kernel, product_kernel): corr[:] (S
// consecutive values) from its T sums K(p).
template <typename scalar_t, typename Products>
__device__ void store_correlation(const Products& K,
                                  const scale_dft::Twiddles<opmath_t<scalar_t>>& tw,
                                  scalar_t* corr) {
  using acc_t = opmath_t<scalar_t>;
  const auto out = [&](int64_t r, acc_t value) { corr[r] = static_cast<scalar_t>(value); };
  scale_dft::synthesis<acc_t>(K, /*conjugate=*/false, tw, out);
}

// ---- kernels ----

// One input of analysis_kernel: x [G, R, S, D] of any strides, whose strides of (g, r, s, d)
// are those that common/strides.h names (n, c, h, w), its planes [G, T, K, R, W] and, where not
// null, the sums of squares [G, R, P] of its rows x[g, r] over P slices of their columns (for
// the tie tolerance's norms).
template <typename scalar_t>
struct AnalysisInput {
  const scalar_t* x;
  Strides4 strides;
  int64_t R;
  scale_dft::Packing packing;
  opmath_t<scalar_t>* planes;
  opmath_t<scalar_t>* squares;
};

// Columns per block of analysis_kernel: 4 per thread, so that a block's reads are in flight
// together and long rows (D = 100,352) still make thousands of blocks.
constexpr int64_t kSliceColumns = 4 * kThreads;

// planes[g, p, k, r, e] of x[g, r, :, k * W + e] for one or two inputs (phi and weight: one
// launch), the feature axis cut into K chunks of W columns, zero past D (K = 1, W = D: planes
// [G, T, R, D]). One block per slice of kSliceColumns columns of a row (g, r), P = K * W /
// kSliceColumns (rounded up) per row, the first input's rows first; consecutive threads take
// consecutive columns (coalesced reads and writes) and add up the squares of their S values,
// which the block reduces in a fixed order into squares[g, r, slice] (deterministic, and no
// second read of the input). __launch_bounds__: 64 registers, four blocks (half the threads) per
// SM for this memory-bound loop; without it sm_90's ptxas takes 72 (every dtype) for three, and
// with it spills nothing.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads, 4)
    analysis_kernel(AnalysisInput<scalar_t> first, AnalysisInput<scalar_t> second, int64_t G,
                    int64_t S, int64_t D, int64_t K, int64_t W, int64_t P) {
  using acc_t = opmath_t<scalar_t>;
  const scale_dft::Twiddles<acc_t> tw = block_twiddles<acc_t>(S);
  acc_t* partial_sums = gpu::dynamic_shared<acc_t>() + 2 * S;  // blockDim.x of them
  const int64_t T = scale_dft::plane_count(S);
  const int64_t first_slices = G * first.R * P;
  const int64_t slices = first_slices + G * second.R * P;
  for (int64_t slice = blockIdx.x; slice < slices; slice += gridDim.x) {
    const bool is_first = slice < first_slices;
    const AnalysisInput<scalar_t> input = is_first ? first : second;  // a copy, in registers
    const int64_t local = is_first ? slice : slice - first_slices;  // (g * R + r) * P + s
    const int64_t row = local / P;
    const int64_t g = row / input.R, r = row % input.R;
    const scalar_t* source_row = input.x + g * input.strides.n + r * input.strides.c;
    const int64_t end = std::min((local % P + 1) * kSliceColumns, K * W);
    acc_t squares = 0;
    for (int64_t column = local % P * kSliceColumns + threadIdx.x; column < end;
         column += blockDim.x) {
      const int64_t k = column / W, e = column % W;
      const int64_t d = column;  // k * W + e
      const bool inside = d < D;
      const scalar_t* source = source_row + (inside ? d : 0) * input.strides.w;
      acc_t* target = input.planes + ((g * T * K + k) * input.R + r) * W + e;
      const auto value = [&](int64_t j) {
        return inside ? static_cast<acc_t>(source[j * input.strides.h]) : acc_t(0);
      };
      const auto out = [&](int64_t p, acc_t plane) { target[p * K * input.R * W] = plane; };
      scale_dft::planes<acc_t>(input.packing, /*conjugate=*/false, value, tw, out);
      if (input.squares != nullptr) {
        for (int64_t j = 0; j < S; ++j) {  // a second read of the column, from L1
          const acc_t x = value(j);
          squares += x * x;
        }
      }
    }
    if (input.squares != nullptr) {  // uniform over the block
      partial_sums[threadIdx.x] = squares;
      __syncthreads();
      for (unsigned half = blockDim.x / 2; half > 0; half /= 2) {  // blockDim.x: a power of two
        if (threadIdx.x < half) {
          partial_sums[threadIdx.x] += partial_sums[threadIdx.x + half];
        }
        __syncthreads();
      }
      if (threadIdx.x == 0) {
        input.squares[local] = partial_sums[0];
      }
      __syncthreads();  // partial_sums[0] read before the next slice overwrites it
    }
  }
}

// ---- the fused forward products (product_kernel) ----

// Unrolls a loop of a constant trip count under nvcc, so that the arrays it indexes stay in
// registers (the host compiler, which knows no `#pragma unroll`, is left to itself).
// SCALE_ALIGN_NO_UNROLL keeps a loop rolled (its array in local memory), where unrolling
// would hold every iteration's temporaries in registers at once.
#if defined(__CUDACC__)
#define SCALE_ALIGN_UNROLL _Pragma("unroll")
#define SCALE_ALIGN_NO_UNROLL _Pragma("unroll 1")
#else
#define SCALE_ALIGN_UNROLL
#define SCALE_ALIGN_NO_UNROLL
#endif

// The most planes product_kernel keeps per thread (T <= 13: S <= 9); larger S takes the
// analysis + bmm path.
constexpr int64_t kFusedPlanes = 13;
// Columns of one step of product_kernel: the planes of its rows at these columns are in shared
// memory at a time.
constexpr int64_t kStepColumns = 16;
// The product loop reads the planes 16 bytes at a time (4 float32 or 2 float64 columns: one
// shared-memory wavefront serves the whole warp's phi reads, a broadcast, for 4 columns
// instead of 1); rows are padded by 16 bytes, so that 8 threads reading 8 different weight
// rows (a quarter warp, one wavefront) hit 32 different banks: row r starts at bank 20r mod 32
// (float32) or 36r mod 32 (float64).
constexpr int64_t kVectorBytes = 16;
template <typename acc_t>
struct alignas(kVectorBytes) PlaneVector {
  acc_t values[kVectorBytes / sizeof(acc_t)];
};
// Values of a padded row, and values before the planes (the twiddles, rounded up to 16 bytes).
SSANET_HOST_DEVICE constexpr int64_t step_stride(int64_t value_bytes) {
  return kStepColumns + kVectorBytes / value_bytes;
}
SSANET_HOST_DEVICE constexpr int64_t planes_offset(int64_t S, int64_t value_bytes) {
  const int64_t per_vector = kVectorBytes / value_bytes;
  return (2 * S + per_vector - 1) / per_vector * per_vector;
}
// Chunks of the feature axis per block of product_kernel: their products are added pairwise in
// the block, the first two levels of align_kernel's pairwise sum (chunk_sum), so the partials
// are a quarter as many (at N=96 D=2048 C=200, 1.1 MB instead of 4.3 MB, beside 6.1 MB of
// bfloat16 inputs) and the sum is the same as over every chunk (see product_kernel).
constexpr int64_t kChunksPerBlock = 4;
// Loader slots per thread: (rows of phi + rows of weight) * kStepColumns / kThreads, at most
// (8 + 32) * 16 / 256 rounded up.
constexpr int64_t kLoadSlots = 3;

// One input of product_kernel: x [G, R, S, D] of any strides (those of (g, r, s, d) in the
// fields (n, c, h, w)).
template <typename scalar_t>
struct ProductInput {
  const scalar_t* x;
  Strides4 strides;
  int64_t R;
  scale_dft::Packing packing;
};

// What product_kernel makes of each (n, c)'s T sums, and its scratch memory. `logits` not null:
// scale_align's logits and shift [G, N, C] (contiguous), plus bias[g * bias_stride_g + c *
// bias_stride_c] where `bias` is not null; else scale_correlation's corr [G, N, C, S]
// (contiguous). Where a tile's feature axis spans B > 1 block chunks: `partials` [G, T, B, N, C]
// (the block chunks' products), `squares` [G * n_tiles * c_tiles, B, rows] (scale_align's: the
// sums of squares of each tile's rows over each block chunk) and `counters` [G * n_tiles *
// c_tiles], zero at the launch and left zero (see product_kernel); all null where B = 1.
template <typename scalar_t>
struct ProductOutputs {
  scalar_t* logits;
  int64_t* shift;
  const scalar_t* bias;
  int64_t bias_stride_g, bias_stride_c;
  scalar_t* corr;
  opmath_t<scalar_t>* partials;
  opmath_t<scalar_t>* squares;
  int* counters;
};

// scale_align's or scale_correlation's whole forward (ProductOutputs) from phi [G, N, S, D] and
// weight [G, C, S, D], in one launch, the planes and their products never going through global
// memory. The feature axis is cut into K chunks of W columns (zero past D) as the analysis +
// bmm path cuts it; block chunk b is chunks 4b to 4b + 3 (those below K), B = ceil(K / 4) of
// them. One block per tile of tile_rows (8 or 16) rows of phi and kThreads / tile_rows rows of
// weight of one group and block chunk.
// - Products: per step of kStepColumns columns the block's threads read each row's S values at
//   those columns (consecutive threads, consecutive columns), write their T planes
//   (scale_dft::planes) into shared memory, and each thread then adds the T products of its
//   (n, c) over the step, in column order. The block adds its chunks' products as chunk_sum's
//   binary counter would, (c0 + c1) + (c2 + c3) and for a last block of three (c0 + c1) + c2;
//   chunk_sum then adds an earlier run onto a later sum (pending + value) both when a run
//   completes and at its end, so its pairwise sum over the B block chunks is the same sum,
//   operation for operation, as over the K chunks (the result is bitwise that of
//   align_kernel over the analysis path's chunks had their products been the same).
// - Norms (scale_align): each row's sum of squares over the block chunk comes from the same
//   reads (a fixed-order sum: deterministic), the tie tolerance's norm being the square root of
//   their sum over the B block chunks in order (row_norm, as align_kernel).
// - Epilogue: where B = 1 the block has its tile's whole sums and aligns (store_alignment) or
//   synthesises (store_correlation) its (n, c) points from registers. Otherwise each block
//   writes its block chunk's sums (partials, and squares), then __threadfence() and one
//   atomicAdd on the tile's counter; the block that finds B - 1 there arrived last: it resets
//   the counter to 0 (no other block of the launch touches it again), and after a
//   __threadfence() reads the tile's B partials (chunk_sum, through L2) and squares, and
//   finishes the tile's points as above. No block waits for another (no deadlock whatever
//   the blocks' scheduling), and the counters stay zero between launches.
// Registers (sm_90 ptxas, nvcc 13.0): __launch_bounds__ for two blocks per SM gives 128 for
// float32, float16 and bfloat16, with 72-132 bytes of spill stores at the tile and chunk level
// (none in the product loop; with the epilogue unfused, none at all); float64 takes 228 at one
// block, no spills (benchmarks/results/gpu_model_notes.md).
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads, sizeof(opmath_t<scalar_t>) == 8 ? 1 : 2)
    product_kernel(ProductInput<scalar_t> phi, ProductInput<scalar_t> weight, int64_t G,
                   int64_t S, int64_t D, int64_t K, int64_t W, int64_t B, int64_t tile_rows,
                   ProductOutputs<scalar_t> out) {
  using acc_t = opmath_t<scalar_t>;
  const scale_dft::Twiddles<acc_t> tw = block_twiddles<acc_t>(S);
  const int64_t T = scale_dft::plane_count(S);
  const int64_t N = phi.R, C = weight.R;
  const int64_t TN = tile_rows, TC = kThreads / tile_rows, rows = TN + TC;
  const bool aligning = out.logits != nullptr;  // else scale_correlation
  // Shared memory after the twiddles: phi's planes [T, TN, stride], then weight's
  // [T, TC, stride], 16-byte aligned; after a tile's products, where its planes were, the
  // loaders' sums of squares [rows, kStepColumns] and the rows' norms [rows] (within the
  // planes' T * rows * stride values for T >= 1, as stride > kStepColumns).
  constexpr int64_t stride = step_stride(sizeof(acc_t));
  constexpr int64_t vector = kVectorBytes / sizeof(acc_t);
  acc_t* phi_planes = gpu::dynamic_shared<acc_t>() + planes_offset(S, sizeof(acc_t));
  acc_t* weight_planes = phi_planes + T * TN * stride;
  acc_t* slot_squares = phi_planes;
  acc_t* norms = slot_squares + rows * kStepColumns;
  __shared__ bool last_arrival;  // the block arrived last at its tile (B > 1)
  const int64_t n_tiles = (N + TN - 1) / TN, c_tiles = (C + TC - 1) / TC;
  const int64_t tiles = G * B * n_tiles * c_tiles;
  const int64_t column = threadIdx.x % kStepColumns;  // the loader's column in a step
  const int64_t tn = threadIdx.x / TC, tc = threadIdx.x % TC;  // the product's (n, c)
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    // tile = ((g * B + b) * n_tiles + n_tile) * c_tiles + c_tile
    const int64_t c_tile = tile % c_tiles, n_tile = tile / c_tiles % n_tiles;
    const int64_t b = tile / (c_tiles * n_tiles) % B, g = tile / (c_tiles * n_tiles * B);
    const int64_t tile_gnc = (g * n_tiles + n_tile) * c_tiles + c_tile;  // the tile over b
    const int64_t n0 = n_tile * TN, c0 = c_tile * TC;
    acc_t squares[kLoadSlots] = {};
    // chunk_sum's pending runs: the last even chunk's products, and the first pair's sum.
    acc_t single[kFusedPlanes] = {};
    acc_t pair[kFusedPlanes] = {};
    const int64_t first_chunk = kChunksPerBlock * b;
    // Not std::min, which would bind a reference to kChunksPerBlock (no object in device code).
    const int64_t remaining = K - first_chunk;
    const int64_t chunks = remaining < kChunksPerBlock ? remaining : kChunksPerBlock;
    for (int64_t q = 0; q < chunks; ++q) {
      const int64_t chunk_start = (first_chunk + q) * W;
      acc_t sums[kFusedPlanes] = {};
      for (int64_t step = 0; step < W; step += kStepColumns) {
        const int64_t e = step + column;
        const int64_t d = chunk_start + e;
        const bool column_inside = e < W && d < D;
SCALE_ALIGN_NO_UNROLL
        for (int64_t slot = 0; slot < kLoadSlots; ++slot) {
          const int64_t row = threadIdx.x / kStepColumns + slot * (kThreads / kStepColumns);
          if (row < rows) {
            const bool is_phi = row < TN;
            const ProductInput<scalar_t> input = is_phi ? phi : weight;  // a copy, in registers
            const int64_t r = is_phi ? n0 + row : c0 + row - TN;
            const bool inside = column_inside && r < input.R;
            const scalar_t* source = input.x + g * input.strides.n +
                                     (inside ? r * input.strides.c + d * input.strides.w : 0);
            const auto value = [&](int64_t j) {
              return inside ? static_cast<acc_t>(source[j * input.strides.h]) : acc_t(0);
            };
            acc_t* target = is_phi ? phi_planes + row * stride + column
                                   : weight_planes + (row - TN) * stride + column;
            const int64_t plane_stride = (is_phi ? TN : TC) * stride;
            const auto planes_out = [&](int64_t p, acc_t plane) {
              target[p * plane_stride] = plane;
            };
            scale_dft::planes<acc_t>(input.packing, /*conjugate=*/false, value, tw, planes_out);
            if (aligning) {
              for (int64_t j = 0; j < S; ++j) {  // a second read of the column, from L1
                const acc_t x = value(j);
                squares[slot] += x * x;
              }
            }
          }
        }
        __syncthreads();
        const acc_t* phi_row = phi_planes + tn * stride;
        const acc_t* weight_row = weight_planes + tc * stride;
        for (int64_t k = 0; k < kStepColumns; k += vector) {  // in column order
SCALE_ALIGN_UNROLL
          for (int64_t p = 0; p < kFusedPlanes; ++p) {
            if (p < T) {
              using Vector = PlaneVector<acc_t>;
              const Vector x = *reinterpret_cast<const Vector*>(phi_row + p * TN * stride + k);
              const Vector y = *reinterpret_cast<const Vector*>(weight_row + p * TC * stride + k);
SCALE_ALIGN_UNROLL
              for (int64_t i = 0; i < vector; ++i) {
                sums[p] += x.values[i] * y.values[i];
              }
            }
          }
        }
        __syncthreads();  // the planes read before the next step overwrites them
      }
SCALE_ALIGN_UNROLL
      for (int64_t p = 0; p < kFusedPlanes; ++p) {  // chunk_sum's order, kChunksPerBlock = 4
        if (q % 2 == 0) {
          single[p] = sums[p];
        } else if (q == 1) {
          pair[p] = single[p] + sums[p];
        } else {
          pair[p] = pair[p] + (single[p] + sums[p]);
        }
      }
    }
    // The block chunk's sums, into single:
    // chunks: 1 -> c0, 2 -> c0 + c1, 3 -> (c0 + c1) + c2, 4 -> (c0 + c1) + (c2 + c3).
SCALE_ALIGN_UNROLL
    for (int64_t p = 0; p < kFusedPlanes; ++p) {
      single[p] = chunks == 1 ? single[p] : (chunks == 3 ? pair[p] + single[p] : pair[p]);
    }
    const int64_t n = n0 + tn, c = c0 + tc;
    const bool point_inside = n < N && c < C;
    const int64_t row = threadIdx.x;  // the norms' row, below `rows`
    if (aligning) {  // the rows' sums of squares over the block chunk (planes all read)
SCALE_ALIGN_NO_UNROLL
      for (int64_t slot = 0; slot < kLoadSlots; ++slot) {
        const int64_t loaded = threadIdx.x / kStepColumns + slot * (kThreads / kStepColumns);
        if (loaded < rows) {
          slot_squares[loaded * kStepColumns + column] = squares[slot];
        }
      }
      __syncthreads();
      if (row < rows) {
        acc_t total = 0;
        for (int64_t k = 0; k < kStepColumns; ++k) {
          total += slot_squares[row * kStepColumns + k];
        }
        if (B == 1) {
          norms[row] = row_norm(&total, 1);
        } else {
          out.squares[(tile_gnc * B + b) * rows + row] = total;
        }
      }
    }
    if (B > 1) {
      if (point_inside) {
        acc_t* target = out.partials + ((g * T * B + b) * N + n) * C + c;
SCALE_ALIGN_UNROLL
        for (int64_t p = 0; p < kFusedPlanes; ++p) {
          if (p < T) {
            target[p * B * N * C] = single[p];
          }
        }
      }
      __threadfence();  // this thread's partials and squares, before the block's arrival
      __syncthreads();
      if (threadIdx.x == 0) {
        last_arrival = atomicAdd(out.counters + tile_gnc, 1) == B - 1;
        if (last_arrival) {
          out.counters[tile_gnc] = 0;  // every block of the tile has arrived
        }
      }
      __syncthreads();
      if (!last_arrival) {  // uniform over the block
        continue;
      }
      __threadfence();  // the other blocks' partials and squares, after their arrival
      if (point_inside) {
        const acc_t* point = out.partials + g * T * B * N * C + n * C + c;
SCALE_ALIGN_UNROLL
        for (int64_t p = 0; p < kFusedPlanes; ++p) {
          if (p < T) {
            single[p] = chunk_sum(point, p, B, N * C);
          }
        }
      }
      if (aligning && row < rows) {
        const acc_t* row_squares = out.squares + tile_gnc * B * rows + row;
        acc_t total = 0;
        for (int64_t k = 0; k < B; ++k) {  // row_norm's order, through L2
          total += load_from_l2(row_squares + k * rows);
        }
        norms[row] = sqrt(total);
      }
    }
    __syncthreads();  // the norms written
    if (point_inside) {
      // align_point reads every product S times and more: the sums from local memory.
      acc_t sums[kFusedPlanes];
SCALE_ALIGN_UNROLL
      for (int64_t p = 0; p < kFusedPlanes; ++p) {
        sums[p] = single[p];
      }
      const auto summed = [&](int64_t p) { return sums[p]; };
      const int64_t index = (g * N + n) * C + c;
      if (aligning) {
        const acc_t tolerance = scale_dft::tie_tolerance(S, norms[tn], norms[TN + tc]);
        const scalar_t* bias = out.bias != nullptr
                                   ? out.bias + g * out.bias_stride_g + c * out.bias_stride_c
                                   : nullptr;
        store_alignment(summed, tw, tolerance, bias, out.logits + index, out.shift + index);
      } else {
        store_correlation(summed, tw, out.corr + index * S);
      }
    }
    __syncthreads();  // the norms read before the next tile's planes overwrite them
  }
}

// The most planes whose sums align_kernel keeps (T = 7 at S = 5, 13 at S = 9); beyond, it adds
// up the chunks at each use.
constexpr int64_t kSummedPlanes = 13;

// logits and shift at (g, n, c) from the partial products [G, T, K, N, C] of K chunks of the
// feature axis, which it adds up (pairwise). phi_squares [G, N, P] and weight_squares [G, C, P]
// (contiguous) are the sums of squares of the rows of phi and weight over P slices of their
// columns (analysis_kernel), whose square roots give the tie tolerance's norms.
template <typename scalar_t>
__global__ void align_kernel(const opmath_t<scalar_t>* __restrict__ products,
                             const opmath_t<scalar_t>* __restrict__ phi_squares,
                             const opmath_t<scalar_t>* __restrict__ weight_squares, int64_t P,
                             const scalar_t* __restrict__ bias, int64_t bias_stride_g,
                             int64_t bias_stride_c, int64_t N, int64_t C, int64_t S, int64_t K,
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
    const acc_t* point = products + g * T * K * N * C + index % (N * C);
    const auto sum = [&](int64_t p) { return chunk_sum(point, p, K, N * C); };
    const acc_t tolerance = scale_dft::tie_tolerance(S, row_norm(phi_squares + index / C * P, P),
                                                     row_norm(weight_squares + (g * C + c) * P, P));
    const scalar_t* bias_at =
        bias != nullptr ? bias + g * bias_stride_g + c * bias_stride_c : nullptr;
    if (T <= kSummedPlanes) {
      // The T sums once each (align_point reads every product S times and more).
      acc_t sums[kSummedPlanes];
      for (int64_t p = 0; p < T; ++p) {
        sums[p] = sum(p);
      }
      const auto summed = [&](int64_t p) { return sums[p]; };
      store_alignment(summed, tw, tolerance, bias_at, logits + index, shift + index);
    } else {
      store_alignment(sum, tw, tolerance, bias_at, logits + index, shift + index);
    }
  }
}

// corr[g, n, c, :] from the partial products [G, T, K, N, C] of K chunks of the feature axis.
template <typename scalar_t>
__global__ void correlation_kernel(const opmath_t<scalar_t>* __restrict__ products,
                                   int64_t N, int64_t C, int64_t S, int64_t K, int64_t points,
                                   scalar_t* __restrict__ corr) {
  using acc_t = opmath_t<scalar_t>;
  const scale_dft::Twiddles<acc_t> tw = block_twiddles<acc_t>(S);
  const int64_t T = scale_dft::plane_count(S);
  for (int64_t index = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; index < points;
       index += int64_t{gridDim.x} * blockDim.x) {
    const int64_t g = index / (N * C);
    const acc_t* point = products + g * T * K * N * C + index % (N * C);
    const auto sum = [&](int64_t p) { return chunk_sum(point, p, K, N * C); };
    store_correlation(sum, tw, corr + index * S);
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

// ---- scale_align's backward in the direct form (align_backward_kernel) ----

// The most scales at which scale_align's backward takes the direct form (align_backward_kernel)
// rather than the Fourier form: the kernel's accumulators are registers of a size fixed at
// compile time, one instantiation per S.
constexpr int64_t kDirectBackwardScales = 8;

// A block of align_backward_kernel: kRowGroups groups of blockDim.x / kRowGroups threads (whole
// warps), each group taking its own rows of the block's tile at every column of the block's
// slice, blockDim.x columns, kColumnsPerThread per thread a warp apart (each load and store of a
// warp on 32 consecutive columns). Two columns per thread share each staged entry and rotation
// branch between twice the multiply-adds; two groups keep the rows per block, so the other
// input's re-reads from L2 stay as few (the groups' reads of the same columns meet in L1).
constexpr int kRowGroups = 2;
constexpr int kColumnsPerThread = 2;

// Rows of d phi (or d weight) per row group of align_backward_kernel: each thread keeps
// rows * kColumnsPerThread * S accumulators, at most 64 float32 or 24 float64 (two registers
// each; 32 spilled at S = 1 and 8 within 128 registers), and at most 16 rows (a staged chunk
// holds blockDim.x / (kRowGroups * rows) rows of the other input, blockDim.x >= 64).
template <typename acc_t>
SSANET_HOST_DEVICE constexpr int backward_tile_rows(int S) {
  const int budget = (sizeof(acc_t) == 8 ? 24 : 64) / kColumnsPerThread;
  return budget / S < 16 ? budget / S : 16;
}

// What align_backward_kernel reads and writes: grad [G, N, C] (any strides), shift [G, N, C]
// (contiguous), phi [G, N, S, D] and weight [G, C, S, D] (any strides: those of (g, r, s, d) in
// the fields (n, c, h, w)); d phi [G, N, S, D], d weight [G, C, S, D] and d bias [G, C]
// (contiguous, grad's dtype), each null where not asked for.
template <typename scalar_t>
struct BackwardTensors {
  const scalar_t* grad;
  int64_t grad_stride_g, grad_stride_n, grad_stride_c;
  const int64_t* shift;
  const scalar_t* phi;
  Strides4 phi_strides;
  const scalar_t* weight;
  Strides4 weight_strides;
  scalar_t* grad_phi;
  scalar_t* grad_weight;
  scalar_t* grad_bias;
  int64_t G, N, C, D;
};

// A staged entry of backward_tile: grad at one (n, c) and the rotation of its shift.
template <typename acc_t>
struct alignas(2 * sizeof(acc_t)) StagedGrad {
  acc_t value;
  int rotation;
};

// acc[k][s] += value * x[k][(s + R) mod S] for every column k and s (nothing for R >= S): the
// products of one rotation, at register indices known at compile time.
template <int R, typename acc_t, int K, int S>
__device__ __forceinline__ void add_rotated(acc_t (&acc)[K][S], acc_t value,
                                            const acc_t (&x)[K][S]) {
  if constexpr (R < S) {
    SCALE_ALIGN_UNROLL
    for (int k = 0; k < K; ++k) {
      SCALE_ALIGN_UNROLL
      for (int s = 0; s < S; ++s) {
        acc[k][s] += value * x[k][(s + R) % S];
      }
    }
  }
}

// One tile of the direct backward (docs/operators.md section 3, eq. 8): rows r0 .. r0 + TB - 1
// of d phi (for_weight false: d phi[n, s, d] = sum over c of grad[n, c] * weight[c, (s + r*)
// mod S, d]) or of d weight (for_weight true: d weight[c, m, d] = sum over n of grad[n, c] *
// phi[n, (m - r*) mod S, d]) of group g, at the blockDim.x columns of one slice; each thread
// takes TR of the rows (its row group's) at kColumnsPerThread columns. Both are acc[i][s] +=
// grad * other[o, (s + rotation) mod S] over the other input's rows o in order (rotation r* for
// d phi, S - r* for d weight), so each result is one thread's sum in a fixed order
// (deterministic), in the accumulation type, rounded once.
// - The tile's grad and rotations, blockDim.x / TB rows o at a time, are staged in shared memory
//   by one thread each, consecutive threads on consecutive classes (grad's and shift's last
//   axis); a shift outside [0, S), which only a direct call of the private backward op can
//   pass, stages rotation -1 and contributes nothing, as in grad_planes_kernel.
// - Per row o, each thread reads other[o, :, d] at its columns d in their dtype (a warp's
//   loads on 32 consecutive columns), then adds its TR * kColumnsPerThread * S products with
//   constant register indices: the rotation, the same for the whole row group, picks one of S
//   unrolled branches (add_rotated).
template <typename scalar_t, int S>
__device__ void backward_tile(const BackwardTensors<scalar_t>& t, bool for_weight, int64_t g,
                              int64_t tile, int64_t slice,
                              StagedGrad<opmath_t<scalar_t>>* staged) {
  using acc_t = opmath_t<scalar_t>;
  constexpr int TR = backward_tile_rows<acc_t>(S);  // rows of a row group
  constexpr int TB = kRowGroups * TR;                // rows of the tile
  constexpr int K = kColumnsPerThread;
  static_assert(S <= kDirectBackwardScales, "add_rotated's cases: S <= 8");
  const int64_t R = for_weight ? t.C : t.N;  // rows of the result
  const int64_t O = for_weight ? t.N : t.C;  // rows of the other input, summed over
  const scalar_t* other = for_weight ? t.phi : t.weight;
  const Strides4 strides = for_weight ? t.phi_strides : t.weight_strides;
  const int64_t r0 = tile * TB;
  const int64_t rows = std::min<int64_t>(TB, R - r0);
  const int64_t chunk = blockDim.x / TB;  // rows o staged at a time
  const int64_t group_threads = blockDim.x / kRowGroups;
  const int64_t group = threadIdx.x / group_threads;  // rows group * TR .. of the tile
  const int64_t member = threadIdx.x % group_threads;
  // Column k of the thread: first + 32 * k (its warp's 32 * K columns, interleaved).
  const int64_t first = slice * blockDim.x + member / 32 * (32 * K) + member % 32;
  bool active[K];
  const scalar_t* columns[K];
  SCALE_ALIGN_UNROLL
  for (int k = 0; k < K; ++k) {
    active[k] = first + 32 * k < t.D;
    columns[k] = other + g * strides.n + (active[k] ? first + 32 * k : 0) * strides.w;
  }
  acc_t acc[TR][K][S] = {};
  for (int64_t o0 = 0; o0 < O; o0 += chunk) {
    const int64_t count = std::min(chunk, O - o0);
    if (threadIdx.x < TB * chunk) {
      // Entry (i, q): result row r0 + i, other row o0 + q; the class varies fastest.
      const int64_t i = for_weight ? threadIdx.x % TB : threadIdx.x / chunk;
      const int64_t q = for_weight ? threadIdx.x / TB : threadIdx.x % chunk;
      acc_t value = 0;
      int rotation = -1;
      if (i < rows && q < count) {
        const int64_t n = for_weight ? o0 + q : r0 + i;
        const int64_t c = for_weight ? r0 + i : o0 + q;
        const int64_t winner = t.shift[(g * t.N + n) * t.C + c];
        if (winner >= 0 && winner < S) {
          value = static_cast<acc_t>(
              t.grad[g * t.grad_stride_g + n * t.grad_stride_n + c * t.grad_stride_c]);
          rotation = static_cast<int>(for_weight ? (S - winner) % S : winner);
        }
      }
      staged[i * chunk + q] = {value, rotation};
    }
    __syncthreads();
    for (int64_t q = 0; q < count; ++q) {
      acc_t x[K][S];
      SCALE_ALIGN_UNROLL
      for (int k = 0; k < K; ++k) {
        SCALE_ALIGN_UNROLL
        for (int j = 0; j < S; ++j) {
          x[k][j] = active[k] ? static_cast<acc_t>(
                                    columns[k][(o0 + q) * strides.c + j * strides.h])
                              : acc_t(0);
        }
      }
      SCALE_ALIGN_UNROLL
      for (int i = 0; i < TR; ++i) {
        // One shared load, a broadcast to the row group.
        const StagedGrad<acc_t> entry = staged[(group * TR + i) * chunk + q];
        const acc_t value = entry.value;
        switch (entry.rotation) {  // the same in every thread of the row group
          case 0: add_rotated<0>(acc[i], value, x); break;
          case 1: add_rotated<1>(acc[i], value, x); break;
          case 2: add_rotated<2>(acc[i], value, x); break;
          case 3: add_rotated<3>(acc[i], value, x); break;
          case 4: add_rotated<4>(acc[i], value, x); break;
          case 5: add_rotated<5>(acc[i], value, x); break;
          case 6: add_rotated<6>(acc[i], value, x); break;
          case 7: add_rotated<7>(acc[i], value, x); break;
          default: break;  // -1: no row there, or its shift outside [0, S)
        }
      }
    }
    __syncthreads();  // the chunk read before the next one overwrites it
  }
  scalar_t* result = (for_weight ? t.grad_weight : t.grad_phi) + (g * R + r0) * S * t.D;
  SCALE_ALIGN_UNROLL
  for (int i = 0; i < TR; ++i) {
    const int64_t row = group * TR + i;  // of the tile
    SCALE_ALIGN_UNROLL
    for (int k = 0; k < K; ++k) {
      if (row < rows && active[k]) {
        SCALE_ALIGN_UNROLL
        for (int s = 0; s < S; ++s) {
          result[(row * S + s) * t.D + first + 32 * k] = static_cast<scalar_t>(acc[i][k][s]);
        }
      }
    }
  }
}

// scale_align's backward in the direct form, d phi, d weight and d bias in one launch (those
// asked for). Units of work, one block each: `phi_tiles` tiles of d phi per group and slice of
// blockDim.x columns, then `weight_tiles` of d weight (backward_tile; the tiles of one slice
// consecutive, so that blocks running together read the same columns of the other input, from
// L2 after the first), then the d bias columns, blockDim.x per unit: d bias[g, c] adds up
// grad[g, :, c] in the order of n, in the accumulation type (grad counts whatever the shift).
// __launch_bounds__: two blocks (16 warps) per SM, up to 128 registers for the 64 accumulators
// (see benchmarks/results/gpu_model_notes.md for ptxas's counts).
template <typename scalar_t, int S>
__global__ void __launch_bounds__(kThreads, 2)
    align_backward_kernel(BackwardTensors<scalar_t> t, int64_t phi_tiles, int64_t weight_tiles,
                          int64_t slices) {
  using acc_t = opmath_t<scalar_t>;
  __shared__ StagedGrad<acc_t> staged[kThreads];  // blockDim.x of them, at most kThreads
  const int64_t phi_units = t.G * slices * phi_tiles;
  const int64_t tile_units = phi_units + t.G * slices * weight_tiles;
  const int64_t columns = t.grad_bias != nullptr ? t.G * t.C : 0;
  const int64_t units = tile_units + (columns + blockDim.x - 1) / blockDim.x;
  for (int64_t unit = blockIdx.x; unit < units; unit += gridDim.x) {  // uniform over the block
    if (unit < tile_units) {
      const bool for_weight = unit >= phi_units;
      const int64_t local = for_weight ? unit - phi_units : unit;  // (g * slices + slice) * tiles
      const int64_t tiles = for_weight ? weight_tiles : phi_tiles;
      backward_tile<scalar_t, S>(t, for_weight, local / tiles / slices, local % tiles,
                                 local / tiles % slices, staged);
      continue;
    }
    const int64_t column = (unit - tile_units) * blockDim.x + threadIdx.x;  // g * C + c
    if (column < columns) {
      const scalar_t* point = t.grad + column / t.C * t.grad_stride_g +
                              column % t.C * t.grad_stride_c;
      acc_t total = 0;
      for (int64_t n = 0; n < t.N; ++n) {
        total += static_cast<acc_t>(point[n * t.grad_stride_n]);
      }
      t.grad_bias[column] = static_cast<scalar_t>(total);
    }
  }
}

// ---- launchers: one grid-stride launch each, on tensors of the kernels' device ----

// The dynamic shared memory of every kernel here: the twiddles of S scales (block_twiddles).
template <typename acc_t>
size_t twiddle_bytes(int64_t S) {
  return static_cast<size_t>(2 * S) * sizeof(acc_t);
}

// The dynamic shared memory of analysis_kernel: the twiddles, then one partial sum per thread.
template <typename acc_t>
size_t analysis_shared_bytes(int64_t S) {
  return twiddle_bytes<acc_t>(S) + static_cast<size_t>(kThreads) * sizeof(acc_t);
}

// An input of launch_analysis: x [G, R, S, D] (any strides), its planes [G * T * K, R, W] and,
// if defined, its rows' sums of squares [G, R, P] over P slices, all in the accumulation type.
struct AnalysisTensors {
  const Tensor& x;
  scale_dft::Packing packing;
  Tensor& planes;
  Tensor* squares;
};

template <typename scalar_t>
AnalysisInput<scalar_t> analysis_input(const AnalysisTensors& input) {
  using acc_t = opmath_t<scalar_t>;
  return {input.x.const_data_ptr<scalar_t>(), strides_of(input.x), input.x.size(1),
          input.packing, input.planes.mutable_data_ptr<acc_t>(),
          input.squares != nullptr ? input.squares->mutable_data_ptr<acc_t>() : nullptr};
}

// The number of slices P of a row of K * W columns in analysis_kernel.
inline int64_t analysis_slices(int64_t K, int64_t W) {
  return (K * W + kSliceColumns - 1) / kSliceColumns;
}

// The planes (and sums of squares) of one input, or of two of the same G, S and D in one launch
// (second with R = 0 when absent), in K chunks of W columns: one block per slice of a row.
template <typename scalar_t>
void launch_analysis(const AnalysisTensors& first, const std::optional<AnalysisTensors>& second,
                     int64_t K, int64_t W, gpu::Stream stream) {
  using acc_t = opmath_t<scalar_t>;
  const int64_t G = first.x.size(0), S = first.x.size(2), D = first.x.size(3);
  AnalysisInput<scalar_t> second_input{};
  if (second.has_value()) {
    second_input = analysis_input<scalar_t>(*second);
  }
  const int64_t P = analysis_slices(K, W);
  const int64_t slices = G * (first.x.size(1) + second_input.R) * P;
  gpu::launch(analysis_kernel<scalar_t>, std::min(slices, kMaxBlocks), kThreads,
              analysis_shared_bytes<acc_t>(S), stream, analysis_input<scalar_t>(first),
              second_input, G, S, D, K, W, P);
}

// Shared memory a kernel may take without opting in: 48 KiB on every CUDA GPU, static and
// dynamic together.
constexpr size_t kDefaultSharedBytes = 48 * 1024;
// product_kernel's static shared memory: its arrival flag, as sm_90's ptxas reports it.
constexpr size_t kProductStaticSharedBytes = 16;

// Rows of phi per tile of product_kernel: 8 for N <= 8 (the flattened maps' N = 8, with 32
// classes a tile), else 16 (and 16 classes).
inline int64_t product_tile_rows(int64_t N) { return N <= 8 ? 8 : 16; }

// The dynamic shared memory of product_kernel: the twiddles, then the T planes of one step of
// its rows, values of `value_bytes` each (the accumulation type's).
inline size_t product_shared_bytes(int64_t S, int64_t tile_rows, size_t value_bytes) {
  const int64_t bytes = static_cast<int64_t>(value_bytes);
  const int64_t values = planes_offset(S, bytes) + scale_dft::plane_count(S) *
                                                       (tile_rows + kThreads / tile_rows) *
                                                       step_stride(bytes);
  return static_cast<size_t>(values) * value_bytes;
}

// The arrival counters of product_kernel's tiles where they span B > 1 block chunks: `count`
// int32 zeros on `like`'s device, for a launch on `stream`. The kernel's last blocks leave them
// zero, so a buffer per (device, stream), zeroed when allocated (or grown), serves every call
// without a zeroing launch: launches on one stream run one after another, never sharing a
// counter while both run, and launches on different streams get different buffers. A stream
// being captured into a CUDA graph takes counters of its own for the call (zeroed by a memset
// node the graph repeats at every replay), since the graph may replay beside eager calls on
// any stream. The buffers are never freed (they would outlive the CUDA context at exit).
// Not covered: a stream destroyed with work pending whose handle CUDA gives to a new stream
// (PyTorch's streams come from its pool and are never destroyed). The simulator runs each
// launch to its end on the calling OS thread: one buffer per OS thread.
inline Tensor arrival_counters(const Tensor& like, int64_t count, gpu::Stream stream) {
#if defined(__CUDACC__)
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  const cudaError_t error = cudaStreamIsCapturing(stream, &capture);
  SSANET_CHECK(error == cudaSuccess, "scale_align: cudaStreamIsCapturing failed: ",
               cudaGetErrorString(error));
  if (capture != cudaStreamCaptureStatusNone) {
    return zeros_like_device(like, {count}, ScalarType::Int);
  }
  static std::mutex mutex;
  static auto* buffers = new std::map<std::pair<int32_t, cudaStream_t>, Tensor>();
  const std::lock_guard<std::mutex> lock(mutex);
  Tensor& buffer = (*buffers)[{like.get_device_index(), stream}];
#else
  (void)stream;
  thread_local auto* buffers = new Tensor();
  Tensor& buffer = *buffers;
#endif
  if (!buffer.defined() || buffer.numel() < count) {
    // Grown at least twofold; the old buffer returns to the caching allocator, on this stream.
    const int64_t size = std::max(count, buffer.defined() ? 2 * buffer.numel() : count);
    buffer = zeros_like_device(like, {size}, ScalarType::Int);
  }
  return buffer;
}

// scale_align's logits and shift [G, N, C] (bias [G, C] or undefined), or scale_correlation's
// corr [G, N, C, S] (`logits` undefined), from phi [G, N, S, D] and weight [G, C, S, D] (any
// strides, D > 0) in one product_kernel launch, over K chunks of W columns added up in
// B = ceil(K / kChunksPerBlock) block chunks.
template <typename scalar_t>
void launch_fused_forward(const Tensor& phi4, const Tensor& weight4, int64_t K, int64_t W,
                          const Tensor& bias, Tensor& logits, Tensor& shift, Tensor& corr,
                          gpu::Stream stream) {
  using acc_t = opmath_t<scalar_t>;
  const int64_t G = phi4.size(0), N = phi4.size(1), C = weight4.size(1);
  const int64_t S = phi4.size(2), D = phi4.size(3);
  const int64_t T = scale_dft::plane_count(S);
  const int64_t B = (K + kChunksPerBlock - 1) / kChunksPerBlock;
  const int64_t tile_rows = product_tile_rows(N);
  const int64_t TC = kThreads / tile_rows;
  const int64_t tiles_gnc = G * ((N + tile_rows - 1) / tile_rows) * ((C + TC - 1) / TC);
  const bool aligning = logits.defined(), has_bias = bias.defined();
  const ScalarType accumulation =
      sizeof(acc_t) == sizeof(double) ? ScalarType::Double : ScalarType::Float;
  ProductOutputs<scalar_t> out{};
  Tensor partials, squares, counters;  // held until the launch is enqueued
  if (aligning) {
    out.logits = logits.mutable_data_ptr<scalar_t>();
    out.shift = shift.mutable_data_ptr<int64_t>();
    out.bias = has_bias ? bias.const_data_ptr<scalar_t>() : nullptr;
    out.bias_stride_g = has_bias ? bias.stride(0) : 0;
    out.bias_stride_c = has_bias ? bias.stride(1) : 0;
  } else {
    out.corr = corr.mutable_data_ptr<scalar_t>();
  }
  if (B > 1) {
    partials = empty_like_device(phi4, {G * T * B, N, C}, accumulation);
    out.partials = partials.mutable_data_ptr<acc_t>();
    if (aligning) {
      squares = empty_like_device(phi4, {tiles_gnc, B, tile_rows + TC}, accumulation);
      out.squares = squares.mutable_data_ptr<acc_t>();
    }
    counters = arrival_counters(phi4, tiles_gnc, stream);
    out.counters = counters.mutable_data_ptr<int32_t>();
  }
  const auto input = [&](const Tensor& x, scale_dft::Packing packing) {
    return ProductInput<scalar_t>{x.const_data_ptr<scalar_t>(), strides_of(x), x.size(1),
                                  packing};
  };
  gpu::launch(product_kernel<scalar_t>, std::min(tiles_gnc * B, kMaxBlocks), kThreads,
              product_shared_bytes(S, tile_rows, sizeof(acc_t)), stream,
              input(phi4, scale_dft::kPhiPacking), input(weight4, scale_dft::kWeightPacking), G,
              S, D, K, W, B, tile_rows, out);
}

// logits and shift [G, N, C] from the partial products [G*T*K, N, C] and the rows' sums of
// squares [G, N, P], [G, C, P]; bias [G, C] or undefined.
template <typename scalar_t>
void launch_align(const Tensor& products, int64_t K, const Tensor& phi_squares,
                  const Tensor& weight_squares, const Tensor& bias, const Shape& shape,
                  Tensor& logits, Tensor& shift, gpu::Stream stream) {
  using acc_t = opmath_t<scalar_t>;
  const int64_t points = logits.numel();
  const bool has_bias = bias.defined();
  const GridStride launch = grid_stride(points);
  gpu::launch(align_kernel<scalar_t>, launch.blocks, launch.threads,
              twiddle_bytes<acc_t>(shape.scales), stream, products.const_data_ptr<acc_t>(),
              phi_squares.const_data_ptr<acc_t>(), weight_squares.const_data_ptr<acc_t>(),
              phi_squares.size(-1),
              has_bias ? bias.const_data_ptr<scalar_t>() : nullptr,
              has_bias ? bias.stride(0) : 0, has_bias ? bias.stride(1) : 0, shape.proposals,
              shape.classes, shape.scales, K, points, logits.mutable_data_ptr<scalar_t>(),
              shift.mutable_data_ptr<int64_t>());
}

// corr [G, N, C, S] from the partial products [G*T*K, N, C].
template <typename scalar_t>
void launch_correlation(const Tensor& products, int64_t K, const Shape& shape, Tensor& corr,
                        gpu::Stream stream) {
  using acc_t = opmath_t<scalar_t>;
  const int64_t points = shape.groups * shape.proposals * shape.classes;
  const GridStride launch = grid_stride(points);
  gpu::launch(correlation_kernel<scalar_t>, launch.blocks, launch.threads,
              twiddle_bytes<acc_t>(shape.scales), stream, products.const_data_ptr<acc_t>(),
              shape.proposals, shape.classes, shape.scales, K, points,
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

// scale_align's direct backward, align_backward_kernel: d phi [G, N, S, D] and d weight
// [G, C, S, D] from grad [G, N, C] (any strides), shift [G, N, C] (contiguous), phi and weight
// (any strides), and d bias [G, C], each where defined, in one launch. `scales` picks the
// instantiation (S <= kDirectBackwardScales); with neither d phi nor d weight, any. Blocks of
// blockDim.x columns: D rounded up to two warps, at most kThreads.
template <typename scalar_t, int S = 1>
void launch_align_backward(const Tensor& grad, const Tensor& shift, const Tensor& phi,
                           const Tensor& weight, int64_t scales, Tensor& grad_phi,
                           Tensor& grad_weight, Tensor& grad_bias, gpu::Stream stream) {
  if constexpr (S < kDirectBackwardScales) {
    if (scales != S) {
      launch_align_backward<scalar_t, S + 1>(grad, shift, phi, weight, scales, grad_phi,
                                             grad_weight, grad_bias, stream);
      return;
    }
  }
  using acc_t = opmath_t<scalar_t>;
  constexpr int TB = kRowGroups * backward_tile_rows<acc_t>(S);  // rows of a tile
  const int64_t G = grad.size(0), N = grad.size(1), C = grad.size(2), D = phi.size(3);
  const int64_t threads = std::clamp<int64_t>((D + 63) / 64 * 64, 64, kThreads);
  const int64_t slices = (D + threads - 1) / threads;
  const int64_t phi_tiles = grad_phi.defined() ? (N + TB - 1) / TB : 0;
  const int64_t weight_tiles = grad_weight.defined() ? (C + TB - 1) / TB : 0;
  const int64_t units = G * slices * (phi_tiles + weight_tiles) +
                        (grad_bias.defined() ? (G * C + threads - 1) / threads : 0);
  if (units == 0) {
    return;
  }
  const auto output = [](Tensor& x) {
    return x.defined() ? x.mutable_data_ptr<scalar_t>() : nullptr;
  };
  const bool tiles = phi_tiles + weight_tiles > 0;
  const BackwardTensors<scalar_t> t{grad.const_data_ptr<scalar_t>(),
                                    grad.stride(0),
                                    grad.stride(1),
                                    grad.stride(2),
                                    tiles ? shift.const_data_ptr<int64_t>() : nullptr,
                                    phi.const_data_ptr<scalar_t>(),
                                    strides_of(phi),
                                    weight.const_data_ptr<scalar_t>(),
                                    strides_of(weight),
                                    output(grad_phi),
                                    output(grad_weight),
                                    output(grad_bias),
                                    G,
                                    N,
                                    C,
                                    D};
  gpu::launch(align_backward_kernel<scalar_t, S>, std::min(units, kMaxBlocks),
              static_cast<int>(threads), 0, stream, t, phi_tiles, weight_tiles, slices);
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

// The planes of x [G, R, S, D] in the accumulation dtype as [G * T, R, D] (the backward's).
inline Tensor analysis(const Tensor& x, scale_dft::Packing packing, gpu::Stream stream) {
  const int64_t T = scale_dft::plane_count(x.size(2)), D = x.size(3);
  Tensor planes = empty_like_device(x, {x.size(0) * T, x.size(1), D},
                                    accumulation_dtype(x.scalar_type()));
  if (planes.numel() > 0) {
    SSANET_DISPATCH_FLOATING_TYPES(x.scalar_type(), "scale_align_dft", [&] {
      launch_analysis<scalar_t>({x, packing, planes, nullptr}, std::nullopt, /*K=*/1, D, stream);
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

// The chunks {K, W} of the forward's feature axis (D > 0): K chunks of W columns, none wholly
// past D.
inline std::pair<int64_t, int64_t> product_chunking(const Shape& shape) {
  const int64_t D = shape.features;
  const int64_t wanted_chunks = product_chunks(shape);
  const int64_t W = (D + wanted_chunks - 1) / wanted_chunks;
  return {(D + W - 1) / W, W};
}

// The forward's T plane products in K chunks of the feature axis, partials [G*T*K, N, C] in
// the accumulation dtype (the kernel that reads them adds up the K chunks pairwise), and the
// sums of squares of the rows of phi [G, N, P] and weight [G, C, P] over P slices of their
// columns, for the tie tolerance's norms (the path that fused_products does not take).
struct ForwardProducts {
  Tensor partials;
  int64_t K;
  Tensor phi_squares, weight_squares;
};

// Whether the forward takes product_kernel (one launch, launch_fused_forward): D > 0, T planes
// at most kFusedPlanes (S <= 9) and its shared memory within the default 48 KiB (float64
// exceeds it at S = 8 and 9, and at S = 7 with N <= 8). Otherwise the planes go through memory
// and cuBLAS (forward_products) before align_kernel or correlation_kernel.
inline bool fused_products(const Shape& shape, ScalarType accumulation) {
  const size_t value_bytes = accumulation == ScalarType::Double ? sizeof(double) : sizeof(float);
  return shape.features > 0 && shape.planes() <= kFusedPlanes &&
         product_shared_bytes(shape.scales, product_tile_rows(shape.proposals), value_bytes) +
                 kProductStaticSharedBytes <=
             kDefaultSharedBytes;
}

// ForwardProducts in two launches: the planes and sums of squares of phi and weight
// (analysis_kernel, one launch), and their products through ATen's bmm (on a GPU, cuBLAS: TF32
// for float32 as torch.backends.cuda.matmul.allow_tf32 says) over the K chunks at once.
inline ForwardProducts forward_products(const Tensor& phi4, const Tensor& weight4,
                                        const Shape& shape, bool with_norms,
                                        gpu::Stream stream) {
  const int64_t G = shape.groups, N = shape.proposals, C = shape.classes, D = shape.features;
  const int64_t batches = G * shape.planes();
  const ScalarType accumulation = accumulation_dtype(phi4.scalar_type());
  ForwardProducts result{Tensor(), 1, Tensor(), Tensor()};
  if (D == 0) {  // sums over an empty feature axis
    result.partials = empty_like_device(phi4, {batches, N, C}, accumulation);
    torch::stable::zero_(result.partials);
    if (with_norms) {
      result.phi_squares = empty_like_device(phi4, {G, N, 1}, accumulation);
      result.weight_squares = empty_like_device(phi4, {G, C, 1}, accumulation);
      torch::stable::zero_(result.phi_squares);
      torch::stable::zero_(result.weight_squares);
    }
    return result;
  }
  const std::pair<int64_t, int64_t> chunking = product_chunking(shape);
  const int64_t K = chunking.first, W = chunking.second;
  if (with_norms) {
    const int64_t P = analysis_slices(K, W);
    result.phi_squares = empty_like_device(phi4, {G, N, P}, accumulation);
    result.weight_squares = empty_like_device(phi4, {G, C, P}, accumulation);
  }
  Tensor phi_planes = empty_like_device(phi4, {batches * K, N, W}, accumulation);
  Tensor weight_planes = empty_like_device(phi4, {batches * K, C, W}, accumulation);
  SSANET_DISPATCH_FLOATING_TYPES(phi4.scalar_type(), "scale_align_dft", [&] {
    launch_analysis<scalar_t>(
        {phi4, scale_dft::kPhiPacking, phi_planes, with_norms ? &result.phi_squares : nullptr},
        AnalysisTensors{weight4, scale_dft::kWeightPacking, weight_planes,
                        with_norms ? &result.weight_squares : nullptr},
        K, W, stream);
  });
  result.partials = empty_like_device(phi4, {batches * K, N, C}, accumulation);
  result.K = K;
  bmm_out(result.partials, phi_planes, torch::stable::transpose(weight_planes, 1, 2));
  return result;
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
    const Tensor bias_grouped =
        bias.has_value() ? torch::stable::reshape(*bias, {G, C}) : Tensor();
    if (fused_products(shape, accumulation_dtype(phi.scalar_type()))) {
      const std::pair<int64_t, int64_t> chunking = product_chunking(shape);
      const int64_t K = chunking.first, W = chunking.second;
      Tensor no_corr;
      SSANET_DISPATCH_FLOATING_TYPES(phi.scalar_type(), "scale_align", [&] {
        launch_fused_forward<scalar_t>(phi4, weight4, K, W, bias_grouped, logits, shift, no_corr,
                                       stream);
      });
    } else {
      const ForwardProducts products =
          forward_products(phi4, weight4, shape, /*with_norms=*/true, stream);
      SSANET_DISPATCH_FLOATING_TYPES(phi.scalar_type(), "scale_align", [&] {
        launch_align<scalar_t>(products.partials, products.K, products.phi_squares,
                               products.weight_squares, bias_grouped, shape, logits, shift,
                               stream);
      });
    }
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
    const Tensor phi4 = as_grouped(phi), weight4 = as_grouped(weight);
    if (fused_products(shape, accumulation_dtype(phi.scalar_type()))) {
      const std::pair<int64_t, int64_t> chunking = product_chunking(shape);
      const int64_t K = chunking.first, W = chunking.second;
      Tensor no_logits, no_shift;
      SSANET_DISPATCH_FLOATING_TYPES(phi.scalar_type(), "scale_correlation", [&] {
        launch_fused_forward<scalar_t>(phi4, weight4, K, W, Tensor(), no_logits, no_shift, corr,
                                       stream);
      });
    } else {
      const ForwardProducts products =
          forward_products(phi4, weight4, shape, /*with_norms=*/false, stream);
      SSANET_DISPATCH_FLOATING_TYPES(phi.scalar_type(), "scale_correlation", [&] {
        launch_correlation<scalar_t>(products.partials, products.K, shape, corr, stream);
      });
    }
  }
  return ungroup_like(corr, shape);
}

// d phi (for_weight false) or d weight (for_weight true) of either op in the Fourier form
// (docs/operators.md section 3, eq. 8), as on the CPU (cpu.cpp, backward_cpu) but over the whole
// feature axis at once: `shift` for scale_align (align_backward, where the direct form does not
// apply), none for scale_correlation; `other` is the saved input, weight for d phi and phi for
// d weight.
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
               stream);
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

// scale_align's backward op (docs/operators.md section 3, eq. 8): d phi [G?, N, S, D], d weight
// [G?, C, S, D] and d bias [G?, C] from the logits' gradient grad [G?, N, C], the forward's shift
// and the saved phi and weight, each only where its flag asks for it (an empty [0] tensor
// otherwise, and nothing computed for it). For S <= kDirectBackwardScales the direct form, all
// three in one launch of align_backward_kernel (no intermediate tensor, no cuBLAS); otherwise
// d phi and d weight take the Fourier form (backward, four launches each), and d bias the same
// kernel without tiles.
inline std::tuple<Tensor, Tensor, Tensor> align_backward(const Tensor& grad, const Tensor& shift,
                                                         const Tensor& phi, const Tensor& weight,
                                                         bool phi_grad, bool weight_grad,
                                                         bool bias_grad, gpu::Stream stream) {
  constexpr const char* op = "scale_align backward";
  const Shape shape = check_align_grad(grad, shift, phi, weight, op);
  check_floating_dtype(grad, "grad", op);
  const int64_t G = shape.groups, N = shape.proposals, C = shape.classes;
  const int64_t S = shape.scales, D = shape.features;
  const bool direct = S <= kDirectBackwardScales;
  Tensor grad_phi, grad_weight;
  if (!direct) {
    if (phi_grad) {
      grad_phi = backward(grad, shift, weight, /*for_weight=*/false, op, stream);
    }
    if (weight_grad) {
      grad_weight = backward(grad, shift, phi, /*for_weight=*/true, op, stream);
    }
  }
  // The direct form's outputs, [G, R, S, D]; in the Fourier form none (d bias alone).
  Tensor tiled_phi = direct && phi_grad ? empty_like_device(grad, {G, N, S, D}) : Tensor();
  Tensor tiled_weight = direct && weight_grad ? empty_like_device(grad, {G, C, S, D}) : Tensor();
  Tensor bias = bias_grad ? empty_like_device(grad, {G, C}) : Tensor();
  if (tiled_phi.defined() || tiled_weight.defined() || bias.defined()) {
    const Tensor grad4 = as_grouped_grad(grad, shape);
    const Tensor shift4 = torch::stable::contiguous(as_grouped_grad(shift, shape));
    SSANET_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "scale_align_backward", [&] {
      launch_align_backward<scalar_t>(grad4, shift4, as_grouped(phi), as_grouped(weight),
                                      direct ? S : 1, tiled_phi, tiled_weight, bias, stream);
    });
  }
  if (direct) {
    grad_phi = tiled_phi.defined() ? ungroup_like(tiled_phi, shape) : Tensor();
    grad_weight = tiled_weight.defined() ? ungroup_like(tiled_weight, shape) : Tensor();
  }
  const auto or_empty = [&](const Tensor& result) {
    return result.defined() ? result : empty_like_device(grad, {0});
  };
  return {or_empty(grad_phi), or_empty(grad_weight),
          bias.defined() ? ungroup_like(bias, shape) : or_empty(bias)};
}

}  // namespace ssanet_ops::scale_align
