#pragma once
// Launch geometry shared by every CUDA kernel (and by their simulation, common/simulation.h):
// the block size, and the grid of a grid-stride loop with the index type it needs.

#include <algorithm>
#include <cstdint>

#include "common/simulation.h"

namespace ssanet_ops {

constexpr int kThreads = 256;
// Grid-stride loops cover the rest when the work exceeds this many blocks.
constexpr int64_t kMaxBlocks = int64_t{1} << 20;

inline int64_t blocks_for(int64_t work) {
  return std::min<int64_t>((work + kThreads - 1) / kThreads, kMaxBlocks);
}

// A grid-stride loop over `count` items:
//   for (index_t i = blockIdx.x * blockDim.x + threadIdx.x; i < count;
//        i += gridDim.x * blockDim.x)
// The last index it forms is the one that ends the loop, at most count - 1 + stride, with
// stride = blocks * threads: int32 is enough only when that fits. (Bounding count alone lets i
// wrap negative, pass `i < count` and index out of bounds: for 1,879,048,193 items and more
// the first step past 2^31 - 1 does.)
struct GridStride {
  int64_t blocks;
  int threads;
  bool int32_index;
};

inline GridStride grid_stride(int64_t count, int threads = kThreads) {
  const int64_t blocks = std::min<int64_t>((count + threads - 1) / threads, kMaxBlocks);
  const int64_t last_index = count - 1 + blocks * threads;
  return {blocks, threads, last_index <= gpu::int32_index_limit()};
}

// Calls f(int32_t{}) or f(int64_t{}): the index type of the launch. int32 whenever it is
// enough, as 64-bit division, which the index decompositions need, is several times slower on
// the GPU.
template <typename F>
void with_index_type(const GridStride& launch, F&& f) {
  if (launch.int32_index) {
    f(int32_t{});
  } else {
    f(int64_t{});
  }
}

}  // namespace ssanet_ops
