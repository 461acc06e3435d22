#pragma once
// scale_candidates and multiscale_roi_crop's CUDA kernels, running the shared geometry and
// sampling functions of common/scale_candidates.h, common/bilinear.h and common/roi_crop.h.
// Compiled by nvcc into cuda.cu and by the host compiler into sim.cpp (common/simulation.h);
// the entry points at the end do what both share.
//
// multiscale_roi_crop makes at most three launches per call, counting what torch runs for it
// (issue 24): one setup kernel (crop_setup_kernel: each image's default centre, summed once;
// for the deterministic backward with more than kThreads boxes the boxes grouped by image, a
// stable counting sort without torch's sort; for the atomic backward the zeroing of its
// accumulator), then the crop kernel,
// and for float16 / bfloat16 atomic backward torch's conversion of the float32 accumulator.
// With given centres the forward needs no setup. The crop kernels find each box's image
// themselves (image_key). Forward: a block crops one candidate n = k * S + s for a chunk of
// channels and output cells into a shared tile, then writes the tile, whose rows are runs of
// the output (coalesced stores); its threads run along the cells on an NCHW input (each
// thread reading kChannelsPerThread channels with one set of sample weights), along the
// channels on a channels-last one, so that each warp's loads are contiguous; NCHW blocks, and
// channels-last ones with fewer channels than a warp, sample their map region staged in
// shared memory. Backward: by
// default one thread per output cell and group of channels adds its gradients with atomics;
// with `deterministic` (which the Python layer sets from
// torch.are_deterministic_algorithms_enabled()), a block per tile of one image's input
// elements gathers what the candidates of that image send them, in a fixed order, without
// atomics, from their gradient rows staged in shared memory (one launch up to kThreads boxes).
// Float16 and bfloat16
// accumulate in float32 (opmath_t) in all kernels. scale_candidates still groups the boxes
// with torch's sort (image_segments; it is not a benchmarked path).
//
// Nothing here waits for the device (docs/operators.md section 4), so the ops can be captured in a CUDA
// graph: box values are not checked; a box whose image_key is kNoImage (a non-finite
// coordinate, a batch index out of range, a non-finite given centre of its image) has zero
// candidates and passes no gradient.
// ssanet_ops.check_boxes checks them on demand.

#include <algorithm>
#include <cstdint>
#include <optional>

#include "common/launch.h"
#include "common/simulation.h"
#include "common/strides.h"
#include "roi_crop/arguments.h"

namespace ssanet_ops::roi_crop {

// Channels per forward / atomic-backward thread: the sample weights are computed once for them.
constexpr int64_t kChannelsPerThread = 4;

// ---- device functions ----

// The scale factors travel by value, in T, rounded as the CPU rounds them.
template <typename T>
struct ScaleList {
  T values[kMaxScales];
};

// A forward / atomic-backward thread: output cell (ph, pw) of candidate n = k * S + s for the
// channels [c0, c0 + kChannelsPerThread) (those below C). index_t: the launch's index type;
// the fields are int64, as offsets into the tensors are formed from them.
struct CellWork {
  int64_t n, k, s, c0, ph, pw;
};

template <typename T, typename index_t>
__device__ __forceinline__ CellWork cell_work(const CropParams<T>& p, index_t channel_groups,
                                              index_t item) {
  const index_t out_w = p.out_w, out_h = p.out_h, scales = p.scales;
  const index_t n = item / (out_h * out_w * channel_groups);
  return {n,
          n / scales,
          n % scales,
          ((item / (out_h * out_w)) % channel_groups) * kChannelsPerThread,
          (item / out_w) % out_h,
          item % out_w};
}

// Adds value * wy * wx at target, skipping, not multiplying by, a zero weight on either axis:
// a NaN gradient then reaches exactly the elements the CPU and the gather kernel send it to
// (issue 9 defect 8).
template <typename T>
__device__ __forceinline__ void add_weighted(T* target, T value, T wy, T wx) {
  if (wy != T(0) && wx != T(0)) {
    atomicAdd(target, value * (wy * wx));
  }
}

// The sums of the setup kernel's block: value summed over its threads, returned to every
// thread. scratch: blockDim.x values of shared memory. Exact for integers, in any order.
template <typename V>
__device__ V block_sum(V value, V* scratch) {
  const unsigned int t = threadIdx.x;
  scratch[t] = value;
  __syncthreads();
  for (unsigned int half = blockDim.x / 2; half > 0; half /= 2) {
    if (t < half) {
      scratch[t] += scratch[t + half];
    }
    __syncthreads();
  }
  const V total = scratch[0];
  __syncthreads();
  return total;
}

// The least of each of values[0, kCount) over the block's threads, returned to every thread
// (scratch: kCount * blockDim.x values of shared memory, blockDim.x a power of 2). Exact, in
// any order. The scratch's previous readers must be done; ends with a barrier, so that the
// scratch may be written right after.
template <int kCount>
__device__ void block_min(int64_t (&values)[kCount], int64_t* scratch) {
  const unsigned int t = threadIdx.x;
  for (int j = 0; j < kCount; ++j) {
    scratch[j * blockDim.x + t] = values[j];
  }
  __syncthreads();
  for (unsigned int half = blockDim.x / 2; half > 0; half /= 2) {
    if (t < half) {
      for (int j = 0; j < kCount; ++j) {
        int64_t* mine = scratch + j * blockDim.x + t;
        if (mine[half] < mine[0]) {
          mine[0] = mine[half];
        }
      }
    }
    __syncthreads();
  }
  for (int j = 0; j < kCount; ++j) {
    values[j] = scratch[j * blockDim.x];
  }
  __syncthreads();
}

// ... of one value (scratch: blockDim.x values).
__device__ inline int64_t block_min(int64_t value, int64_t* scratch) {
  int64_t values[1] = {value};
  block_min(values, scratch);
  return values[0];
}

// The inclusive prefix sum of flag over the block's threads (blockDim.x a power of 2).
__device__ inline int64_t block_inclusive_scan(int64_t flag, int64_t* scratch) {
  const unsigned int t = threadIdx.x;
  scratch[t] = flag;
  __syncthreads();
  for (unsigned int step = 1; step < blockDim.x; step *= 2) {
    const int64_t before = t >= step ? scratch[t - step] : 0;
    __syncthreads();
    scratch[t] += before;
    __syncthreads();
  }
  return scratch[t];
}

// Image b of the crop, as block b of crop_setup_kernel finds it among the K boxes.
struct ImageRun {
  int64_t first;    // boxes of images before b: where image b's boxes start in `order`
  int64_t members;  // boxes of image b
};

// The image of box k (kNoImage: none) and its 2c: the given centre, or the setup kernel's
// default centre of the image (twice_centers: [B, 2]).
struct BoxImage {
  int64_t image;
  TwiceCenter center;
};

template <typename T>
__device__ __forceinline__ BoxImage box_image(const T* boxes, int64_t k, const T* centers,
                                                 const double* twice_centers, int64_t batch) {
  const int64_t b = image_key(boxes, centers, k, batch);
  if (b == kNoImage) {
    return {b, {0, 0}};
  }
  return {b, centers != nullptr ? twice_given_center(centers, b)
                                : TwiceCenter{twice_centers[2 * b], twice_centers[2 * b + 1]}};
}

// The forward's shared tile: T values, channel rows of an odd stride (no bank conflicts when
// the threads run along the channels).
constexpr int64_t kTileValues = 2048;

// Dynamic shared memory of crop_setup_kernel (not static __shared__, which the simulator's
// memory trace could not tell from global memory): a chunk of boxes and the block's scratch.
template <typename T>
struct SetupShared {
  T boxes[5 * kThreads];
  int64_t scratch[kThreads];
  int64_t members[kThreads];
};

// ... and of crop_forward_kernel: all boxes and their images (with the block's own centres),
// the candidate's box row, image and grid, the scratch of its tap extents (staged launches)
// and the output tile. On an NCHW input, and a channels-last one with few channels, the
// launch's dynamic shared memory continues past it with the stage, the staged input
// (kForwardSharedBytes in all).
template <typename T>
struct ForwardShared {
  RoiGrid<T> grid;
  int64_t image;
  T row[5];
  int64_t keys[kThreads];
  int64_t extent[2 * kThreads];
  T boxes[5 * kThreads];
  T tile[kTileValues];
};

// The deterministic backward's tiles (crop_backward_gather_kernel): a block's input elements
// are channels [c_begin, + channel_chunk) x rows [y_begin, + row_band) x columns [x_begin,
// + column_chunk) of one image, at most kGatherElements per thread (their sums stay in
// registers across the candidates).
constexpr int64_t kGatherElements = 8;
struct GatherTiles {
  int64_t channel_chunk, row_band, column_chunk;
  int64_t channel_chunks, row_bands, column_chunks;
  int64_t blocks;  // B x the three chunk counts
};

// Bytes of the gather's staging tile: with the rest of GatherShared under the 48 KiB of shared
// memory a launch gets without opting in (float64 included).
constexpr int64_t kGatherTileBytes = 32768;

// ... and of crop_backward_gather_kernel: the candidate's grid and n; its image's boxes and 2c;
// all boxes and their images when K <= kThreads (else the setup kernel's grouping is read);
// the staging tile of the candidate's output-gradient rows that reach the block's input rows.
template <typename T>
struct GatherShared {
  RoiGrid<T> grid;
  TwiceCenter center;
  int64_t first, last;  // the block's image's boxes: keys (own grouping) or order positions
  int64_t candidate;    // n
  int64_t keys[kThreads];
  int64_t scratch[kThreads];
  T boxes[5 * kThreads];
  T tile[kGatherTileBytes / sizeof(T)];
};

// Boxes [start, start + blockDim.x) of `count` read coalesced into chunk (5 * blockDim.x
// values); returns the image_key of the thread's box (kNoImage past the end). Starts with a
// barrier, so that the chunk's previous readers are done, and ends with one after the reads.
template <typename T>
__device__ int64_t chunk_key(const T* boxes, int64_t count, int64_t start, const T* centers,
                             int64_t batch, T* chunk) {
  const int64_t size = count - start < blockDim.x ? count - start : blockDim.x;
  __syncthreads();
  for (int64_t i = threadIdx.x; i < 5 * size; i += blockDim.x) {
    chunk[i] = boxes[5 * start + i];
  }
  __syncthreads();
  return threadIdx.x < size ? image_key(chunk, centers, threadIdx.x, batch) : kNoImage;
}

// The forward's dynamic shared memory on an NCHW input: the 48 KiB a launch gets without
// opting in to more.
constexpr int64_t kForwardSharedBytes = 48 * 1024;
static_assert(sizeof(ForwardShared<double>) < 40 * 1024, "the forward's stage needs room");

// The map rows [row0, row0 + rows) and columns [col0, col0 + cols) of one channel that a
// forward block stages, and so its stage's layout: [channel][row - row0][column - col0];
// [low, high]: the columns its taps read.
struct StageRegion {
  int64_t row0, rows, col0, cols, low, high;
};

// The least map index and the greatest that the taps of outputs [first, first + outputs) of
// one axis read (low > high: none), over every sample, as axis_tap computes them (their
// order along the axis is not assumed: rounding could break it by an ulp). All threads of the
// block call it; scratch: 2 * blockDim.x values whose previous readers are done (as after
// another tap_extent: it ends with a barrier).
template <typename T>
__device__ void tap_extent(const AxisGrid<T>& axis, int64_t first, int64_t outputs,
                           int64_t* scratch, int64_t& low, int64_t& high) {
  const unsigned int t = threadIdx.x;
  low = axis.size;
  high = -1;
  for (int64_t i = t; i < outputs * axis.grid; i += blockDim.x) {
    Tap<T> tap;
    if (axis_tap(axis.sample(first + i / axis.grid, i % axis.grid), axis.size, tap)) {
      low = tap.low < low ? tap.low : low;
      high = tap.high > high ? tap.high : high;
    }
  }
  // Both reductions in one (the greatest as the least of the negations: high >= -1, so -high
  // cannot overflow).
  int64_t bounds[2] = {low, -high};
  block_min(bounds, scratch);
  low = bounds[0];
  high = -bounds[1];
}

// Values of scalar_t per 32-byte sector (the unit in which the memory system moves data).
template <typename scalar_t>
constexpr int64_t kSectorValues = 32 / static_cast<int64_t>(sizeof(scalar_t));

// The region a block stages for output cells [cell, cell + cells) of candidate grid g (rows ==
// 0: its samples read nothing). All threads of the block call it. The columns are the taps'
// [low, high], widened, when the map's rows are contiguous (stride_w 1), by up to a sector
// less one value on each side (stage_columns then loads, per row, the whole sectors that hold
// the taps' columns, and no other).
template <typename scalar_t, typename T>
__device__ StageRegion stage_region(const RoiGrid<T>& g, int64_t out_w, int64_t cell,
                                    int64_t cells, bool unit_columns, int64_t* scratch) {
  const int64_t first_row = cell / out_w, last_row = (cell + cells - 1) / out_w;
  const int64_t first_column = first_row == last_row ? cell % out_w : 0;
  const int64_t last_column = first_row == last_row ? (cell + cells - 1) % out_w : out_w - 1;
  int64_t row_low, row_high, column_low, column_high;
  tap_extent(g.y, first_row, last_row - first_row + 1, scratch, row_low, row_high);
  tap_extent(g.x, first_column, last_column - first_column + 1, scratch, column_low,
             column_high);
  if (row_low > row_high || column_low > column_high) {
    return {0, 0, 0, 0, 0, -1};
  }
  int64_t col0 = column_low, col1 = column_high;
  if (unit_columns) {
    const int64_t pad = kSectorValues<scalar_t> - 1;
    col0 = column_low - pad > 0 ? column_low - pad : 0;
    col1 = column_high + pad < g.x.size - 1 ? column_high + pad : g.x.size - 1;
  }
  return {row_low, row_high - row_low + 1, col0, col1 - col0 + 1, column_low, column_high};
}

// Channels [0, channels) of `map` (strides: of the input) into stage, in the stage's layout,
// loaded in memory order, each warp's loads starting at a sector. Of each row only the columns
// that the taps read, with unit_columns extended to the whole sectors that hold them (within
// the region's columns); when those are whole rows of contiguous rows, each channel's region
// is one run of memory, loaded as such. A thread whose value lies outside what is to be read
// reads the nearest of it again (the same stage value, written twice), so that it moves no
// other sector and every thread of a warp loads in every round, as one request.
template <typename scalar_t>
__device__ void stage_columns(const scalar_t* map, const Strides4& strides, StageRegion r,
                              bool unit_columns, int64_t width, int64_t channels,
                              scalar_t* stage) {
  constexpr int64_t k = kSectorValues<scalar_t>;
  const auto sector_offset = [](const scalar_t* value) {
    return static_cast<int64_t>(reinterpret_cast<uintptr_t>(value) % 32) /
           static_cast<int64_t>(sizeof(scalar_t));
  };
  const int64_t plane = r.rows * r.cols;
  if (unit_columns && r.col0 == 0 && r.cols == width && strides.h == width) {
    const int64_t span = (plane + k - 1 + k - 1) / k * k;  // a run's sectors, at most
    for (int64_t i = threadIdx.x; i < channels * span; i += blockDim.x) {
      const int64_t c = i / span;
      const scalar_t* run = map + c * strides.c + r.row0 * width;
      const int64_t offset = sector_offset(run);
      int64_t e = i % span - offset;
      e = e > 0 ? e : 0;  // min and max: one load, not a branch per case
      e = e < plane - 1 ? e : plane - 1;
      // A sector of the run that holds no tapped column (on one of the rows it spans) is not
      // read: the thread reads its row's nearest tapped column instead.
      const int64_t first = e - (e + offset) % k, last = first + k - 1;
      bool tapped = false;
      for (int64_t y = (first > 0 ? first : 0) / width;
           y <= (last < plane - 1 ? last : plane - 1) / width; ++y) {
        tapped = tapped || (first - y * width <= r.high && last - y * width >= r.low);
      }
      if (!tapped) {
        const int64_t x = e % width;
        e += (x < r.low ? r.low : (x > r.high ? r.high : x)) - x;
      }
      stage[c * plane + e] = run[e];
    }
    return;
  }
  const int64_t taps = r.high - r.low + 1;
  const int64_t sectors = (taps + k - 1 + k - 1) / k * k;  // a row's sectors, at most
  const int64_t span = !unit_columns ? taps : (sectors < r.cols ? sectors : r.cols);
  for (int64_t i = threadIdx.x; i < channels * r.rows * span; i += blockDim.x) {
    const int64_t line = i / span;  // c * rows + (y - row0)
    const scalar_t* row = map + line / r.rows * strides.c + (r.row0 + line % r.rows) * strides.h;
    int64_t first = r.low, last = r.high;
    if (unit_columns) {  // the whole sectors of the taps' first and last columns
      first = r.low - sector_offset(row + r.low);
      first = first > r.col0 ? first : r.col0;
      last = r.high + k - 1 - sector_offset(row + r.high);
      last = last < r.col0 + r.cols - 1 ? last : r.col0 + r.cols - 1;
    }
    int64_t x = first + i % span;
    x = x < last ? x : last;
    stage[line * r.cols + x - r.col0] = row[x * strides.w];
  }
}

// Channels [0, channels) of `map` (a channels-last input: strides.c < strides.w) in region r
// into stage, in the input's own order: [row - row0][column - col0][channel]. Thread i loads
// stage value i, so on a dense channels-last map (strides.c 1, strides.w channels) each region
// row is one run of cols x channels values, loaded coalesced.
template <typename scalar_t>
__device__ void stage_pixels(const scalar_t* map, const Strides4& strides, StageRegion r,
                             int64_t channels, scalar_t* stage) {
  const int64_t line = r.cols * channels;
  for (int64_t i = threadIdx.x; i < r.rows * line; i += blockDim.x) {
    const int64_t y = i / line, x = i % line / channels, c = i % channels;
    stage[i] = map[(r.row0 + y) * strides.h + (r.col0 + x) * strides.w + c * strides.c];
  }
}

// The sums over the samples of cell (ph, pw) of channels [0, count) (count <= kVector) of
// `map`, whose value at row y, column x of channel j is map[j * stride_c + (y - row0) *
// stride_h + (x - col0) * stride_w]: the input itself (origin 0) or the stage. The same
// arithmetic in the same order either way (the CPU kernel's, docs/operators.md section 2).
template <int kVector, typename scalar_t, typename T>
__device__ __forceinline__ void sample_cell(const RoiGrid<T>& g, int64_t ph, int64_t pw,
                                            const scalar_t* map, int64_t stride_c,
                                            int64_t stride_h, int64_t stride_w, int64_t row0,
                                            int64_t col0, int64_t count, T (&total)[kVector]) {
  for (int64_t iy = 0; iy < g.y.grid; ++iy) {
    Tap<T> ty;
    if (!axis_tap(g.y.sample(ph, iy), g.y.size, ty)) {
      continue;
    }
    for (int64_t ix = 0; ix < g.x.grid; ++ix) {
      Tap<T> tx;
      if (!axis_tap(g.x.sample(pw, ix), g.x.size, tx)) {
        continue;
      }
      const T w1 = ty.w_low * tx.w_low, w2 = ty.w_low * tx.w_high;
      const T w3 = ty.w_high * tx.w_low, w4 = ty.w_high * tx.w_high;
      const int64_t o1 = (ty.low - row0) * stride_h + (tx.low - col0) * stride_w;
      const int64_t o2 = (ty.low - row0) * stride_h + (tx.high - col0) * stride_w;
      const int64_t o3 = (ty.high - row0) * stride_h + (tx.low - col0) * stride_w;
      const int64_t o4 = (ty.high - row0) * stride_h + (tx.high - col0) * stride_w;
      for (int64_t j = 0; j < kVector; ++j) {
        if (j < count) {
          const scalar_t* plane = map + j * stride_c;
          total[j] += w1 * static_cast<T>(plane[o1]) + w2 * static_cast<T>(plane[o2]) +
                      w3 * static_cast<T>(plane[o3]) + w4 * static_cast<T>(plane[o4]);
        }
      }
    }
  }
}

// src[0, count) into dst[0, count), converted to T, by the block's threads, each warp's loads
// starting on a 128-byte line (lanes before src idle), so that every sector a request touches
// is used but the run's first and last.
template <typename scalar_t, typename T>
__device__ void stage_run(const scalar_t* src, int64_t count, T* dst) {
  const int64_t lead = static_cast<int64_t>(reinterpret_cast<uintptr_t>(src) % 128) /
                       static_cast<int64_t>(sizeof(scalar_t));
  for (int64_t i = int64_t{threadIdx.x} - lead; i < count; i += blockDim.x) {
    if (i >= 0) {
      dst[i] = static_cast<T>(src[i]);
    }
  }
}

// What candidate grid g sends to element (y, x) of its channel (gather_gradient): from the
// staged rows [row_offset, last_staged] of the channel's gradient (tile; nullptr: none staged)
// when they hold every output row that reaches y, else from the gradient itself (global), the
// same values in the same order either way.
template <typename T, typename scalar_t>
__device__ __forceinline__ T candidate_gradient(const RoiGrid<T>& g, const T* tile,
                                                int64_t row_offset, int64_t last_staged,
                                                const scalar_t* global, int64_t out_w,
                                                int64_t y, int64_t x) {
  int64_t first, last;
  outputs_reaching(g.y, y, first, last);
  if (first > last || (tile != nullptr && first >= row_offset && last <= last_staged)) {
    return gather_gradient(g, tile, out_w, int64_t{1}, y, x, row_offset);
  }
  return gather_gradient(g, global, out_w, int64_t{1}, y, x);
}

// ---- kernels ----

// centers: the given centres, or nullptr.
template <typename T, typename index_t>
__global__ void image_keys_kernel(const T* __restrict__ boxes, const T* __restrict__ centers,
                                  index_t count, int64_t batch, int64_t* __restrict__ keys) {
  for (index_t k = blockIdx.x * blockDim.x + threadIdx.x; k < count;
       k += gridDim.x * blockDim.x) {
    keys[k] = image_key(boxes, centers, k, batch);
  }
}

// offsets[b] for b = 0, ..., B: where image b's boxes begin among the sorted keys.
template <typename index_t>
__global__ void image_offsets_kernel(const int64_t* __restrict__ sorted, int64_t count,
                                     index_t images, int64_t* __restrict__ offsets) {
  for (index_t b = blockIdx.x * blockDim.x + threadIdx.x; b < images;
       b += gridDim.x * blockDim.x) {
    offsets[b] = first_of_image(sorted, count, b);
  }
}

// Thread i: the given centre of box i's image, or, without centres, the default centre of the
// image whose boxes start at sorted position i (each image summed once).
template <typename T, typename index_t>
__global__ void box_centers_kernel(const T* __restrict__ boxes, index_t count,
                                   const T* __restrict__ centers,
                                   const int64_t* __restrict__ keys,
                                   const int64_t* __restrict__ order,
                                   const int64_t* __restrict__ sorted,
                                   double* __restrict__ twice_centers) {
  for (index_t i = blockIdx.x * blockDim.x + threadIdx.x; i < count;
       i += gridDim.x * blockDim.x) {
    if (centers != nullptr) {
      spread_given_center(centers, keys, i, twice_centers);
    } else {
      spread_image_center(boxes, order, sorted, count, i, twice_centers);
    }
  }
}

// Candidate item = k * S + s of box k; a box without an image gets (0, 0, 0, 0).
template <typename T, typename index_t>
__global__ void scale_candidates_kernel(const T* __restrict__ boxes,
                                        const int64_t* __restrict__ keys,
                                        const double* __restrict__ twice_centers,
                                        index_t candidates, ScaleList<T> scales, index_t S,
                                        bool clip, T image_height, T image_width,
                                        T* __restrict__ out) {
  for (index_t item = blockIdx.x * blockDim.x + threadIdx.x; item < candidates;
       item += gridDim.x * blockDim.x) {
    const index_t k = item / S;
    Box<T> candidate{0, 0, 0, 0};
    if (keys[k] != kNoImage) {
      const Box<T> box = box_at(boxes, k);
      candidate = candidate_box(box, anchor_corners(box, twice_center_of(twice_centers, k)),
                                scales.values[item % S], clip, image_height, image_width);
    }
    T* row = out + int64_t{item} * 4;
    row[0] = candidate.x1;
    row[1] = candidate.y1;
    row[2] = candidate.x2;
    row[3] = candidate.y2;
  }
}

// The setup of one multiscale_roi_crop call (issue 24: at most three launches per call), run
// by kThreads-thread blocks with SetupShared<T> as dynamic shared memory. Every block zeroes
// its share of zero[0, zero_count) (the atomic backward's accumulator; nullptr: none). Block
// b < batch does image b: over the boxes in index order, a chunk of kThreads boxes at a time
// (read coalesced into shared memory), it counts those of images before b (offsets[b], and
// offsets[B] by the last block), writes the indices of image b's boxes to
// order[offsets[b] + i] in index order, as a stable sort by image_key would (order, offsets:
// nullptr when not needed), and its default 2c to twice_centers[b] (nullptr with given
// centres), adding its boxes in index order (CenterSum) so that the CPU's twice_mean_center
// gets the same bits. A box without an image (image_key kNoImage) is in no run.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    crop_setup_kernel(const T* __restrict__ boxes, int64_t count, int64_t batch,
                      const T* __restrict__ centers, double* __restrict__ twice_centers,
                      int64_t* __restrict__ order, int64_t* __restrict__ offsets,
                      T* __restrict__ zero, int64_t zero_count) {
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  for (int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < zero_count;
       i += stride) {
    zero[i] = T(0);
  }
  const int64_t b = blockIdx.x;
  if (b >= batch || (twice_centers == nullptr && order == nullptr)) {
    return;  // the whole block: no barrier is left waiting
  }
  SetupShared<T>& shared = *gpu::dynamic_shared<SetupShared<T>>();
  const unsigned int t = threadIdx.x;
  // Pass 1: the boxes of images before b.
  int64_t below = 0;
  for (int64_t start = 0; start < count; start += blockDim.x) {
    const int64_t key = chunk_key(boxes, count, start, centers, batch, shared.boxes);
    below += key != kNoImage && key < b ? 1 : 0;
  }
  ImageRun run{block_sum(below, shared.scratch), 0};
  // Pass 2: image b's boxes, compacted in index order.
  CenterSum sum;  // thread 0's
  for (int64_t start = 0; start < count; start += blockDim.x) {
    const bool mine = chunk_key(boxes, count, start, centers, batch, shared.boxes) == b;
    const int64_t rank = block_inclusive_scan(mine ? 1 : 0, shared.scratch);
    const int64_t found = shared.scratch[blockDim.x - 1];
    if (mine) {
      shared.members[rank - 1] = t;
      if (order != nullptr) {
        order[run.first + run.members + rank - 1] = start + t;
      }
    }
    __syncthreads();
    if (t == 0 && twice_centers != nullptr) {
      for (int64_t i = 0; i < found; ++i) {
        sum.add(shared.boxes, shared.members[i]);
      }
    }
    run.members += found;
  }
  if (t == 0) {
    if (twice_centers != nullptr) {
      const TwiceCenter center = sum.mean();
      twice_centers[2 * b] = center.x;
      twice_centers[2 * b + 1] = center.y;
    }
    if (offsets != nullptr) {
      offsets[b] = run.first;
      if (b == batch - 1) {
        offsets[batch] = run.first + run.members;
      }
    }
  }
}

// Candidate n = block / (channel chunks * cell chunks) of a block of the forward, run with
// ForwardShared<T> as dynamic shared memory (and the stage past it: stage_values values of
// scalar_t); a box without an image gives zeros. kVector: channels per thread,
// kChannelsPerThread on an NCHW input (threads along the cells, one set of sample weights for
// kVector channels), 1 on a channels-last one (threads along the channels: a warp reads 32
// consecutive channels of one sample). On an NCHW input the block first stages the map region
// its cells' samples read (stage_region), as many of its channels at a time as the stage
// holds, loaded in memory order (stage_columns), then samples the stage: a warp's taps, 32
// cells apart on the map, no longer each move sectors of their own. A region of which not one
// channel fits the stage is read from the input directly, as the channels-last path does. A
// channels-last launch with a stage (stage_values > 0: few channels, launch_crop_forward)
// stages the region with all the block's channels in the input's order (stage_pixels) when it
// fits, else reads directly.
// Each value goes to a shared tile [channel][cell], written out by rows: the rows are runs of
// the contiguous output [K, S, C, oh, ow], so the stores are coalesced. The default centres:
// the setup kernel's (twice_centers), or, with neither those nor given centres
// (K <= kThreads), the block's own: it reads all boxes into shared memory and adds those of
// its image in index order as crop_setup_kernel does.
template <typename scalar_t, typename T, int kVector>
__global__ void __launch_bounds__(kThreads)
    crop_forward_kernel(const scalar_t* __restrict__ input, Strides4 strides,
                        const T* __restrict__ boxes, const T* __restrict__ centers,
                        const double* __restrict__ twice_centers, ScaleList<T> scales,
                        CropParams<T> p, int64_t channel_chunk, int64_t cell_chunk,
                        int64_t blocks, int64_t stage_values, scalar_t* __restrict__ output) {
  ForwardShared<T>& shared = *gpu::dynamic_shared<ForwardShared<T>>();
  scalar_t* const stage = reinterpret_cast<scalar_t*>(&shared + 1);
  const int64_t channel_chunks = (p.channels + channel_chunk - 1) / channel_chunk;
  const int64_t cell_chunks = (p.cells() + cell_chunk - 1) / cell_chunk;
  const unsigned int t = threadIdx.x;
  const bool own_centers =
      centers == nullptr && twice_centers == nullptr && p.boxes <= blockDim.x;
  if (own_centers) {  // every box and its image, once for all the block's candidates
    const int64_t key = chunk_key(boxes, p.boxes, 0, centers, p.batch, shared.boxes);
    if (t < p.boxes) {
      shared.keys[t] = key;
    }
  }
  const bool unit_columns = strides.w == 1;
  for (int64_t block = blockIdx.x; block < blocks; block += gridDim.x) {
    const int64_t n = block / (channel_chunks * cell_chunks);
    const int64_t c_begin = (block / cell_chunks) % channel_chunks * channel_chunk;
    const int64_t p_begin = block % cell_chunks * cell_chunk;
    const int64_t channels = p.channels - c_begin < channel_chunk ? p.channels - c_begin
                                                                  : channel_chunk;
    const int64_t cells = p.cells() - p_begin < cell_chunk ? p.cells() - p_begin : cell_chunk;
    const int64_t tile_stride = cells | 1;
    // The candidate: its box row read by five threads, its grid computed by one.
    const int64_t k = n / p.scales;
    if (!own_centers && t < 5) {
      shared.row[t] = boxes[5 * k + t];
    }
    __syncthreads();
    if (t == 0) {
      BoxImage owner{kNoImage, {0, 0}};
      const T* row = own_centers ? shared.boxes + 5 * k : shared.row;
      if (!own_centers) {
        owner = box_image(row, 0, centers, twice_centers, p.batch);
      } else if (shared.keys[k] != kNoImage) {
        CenterSum sum;
        for (int64_t j = 0; j < p.boxes; ++j) {
          if (shared.keys[j] == shared.keys[k]) {
            sum.add(shared.boxes, j);
          }
        }
        owner = {shared.keys[k], sum.mean()};
      }
      shared.image = owner.image;
      if (owner.image != kNoImage) {
        shared.grid =
            candidate_grid(p, box_at(row, 0), owner.center, scales.values[n % p.scales]);
      }
    }
    __syncthreads();
    const int64_t b = shared.image;
    const RoiGrid<T> g = shared.grid;
    T* tile = shared.tile;
    const scalar_t* map =
        b != kNoImage ? input + b * strides.n + c_begin * strides.c : nullptr;
    // NCHW: the region to stage and how many channels of it fit at a time (none: read the
    // input directly, all channels at once). Channels-last with a stage (few channels): the
    // region with all the block's channels, or none of it.
    StageRegion region{0, 0, 0, 0, 0, -1};
    int64_t step = channels;
    bool staged = false;
    if ((kVector > 1 || stage_values > 0) && b != kNoImage) {
      region = stage_region<scalar_t>(g, p.out_w, p_begin, cells, unit_columns, shared.extent);
      const int64_t fit = region.rows > 0 ? stage_values / (region.rows * region.cols) : 0;
      staged = kVector > 1 ? fit > 0 : fit >= channels;
      if (kVector > 1 && staged && fit < channels) {
        step = fit >= kVector ? fit / kVector * kVector : fit;
      }
    }
    for (int64_t first = 0; first < channels; first += step) {
      const int64_t count = channels - first < step ? channels - first : step;
      if (staged) {
        __syncthreads();  // the stage's previous readers are done
        if (kVector > 1) {
          stage_columns(map + first * strides.c, strides, region, unit_columns, p.width, count,
                        stage);
        } else {
          stage_pixels(map, strides, region, count, stage);
        }
        __syncthreads();
      }
      const int64_t groups = (count + kVector - 1) / kVector;
      for (int64_t item = t; item < groups * cells; item += blockDim.x) {
        // NCHW: along the cells; channels-last (kVector 1): along the channels.
        const int64_t cell = kVector > 1 ? item % cells : item / groups;
        const int64_t c0 = (kVector > 1 ? item / cells : item % groups) * kVector;  // in count
        const int64_t ph = (p_begin + cell) / p.out_w, pw = (p_begin + cell) % p.out_w;
        const int64_t here = count - c0 < kVector ? count - c0 : kVector;
        T total[kVector] = {};
        if (staged && kVector == 1) {  // the stage in the input's order, all channels
          sample_cell<kVector>(g, ph, pw, stage + c0, int64_t{1}, region.cols * count, count,
                               region.row0, region.col0, here, total);
        } else if (staged) {
          sample_cell<kVector>(g, ph, pw, stage + c0 * region.rows * region.cols,
                               region.rows * region.cols, region.cols, int64_t{1}, region.row0,
                               region.col0, here, total);
        } else if (b != kNoImage) {
          sample_cell<kVector>(g, ph, pw, map + (first + c0) * strides.c, strides.c, strides.h,
                               strides.w, int64_t{0}, int64_t{0}, here, total);
        }
        for (int64_t j = 0; j < here; ++j) {
          tile[(first + c0 + j) * tile_stride + cell] = b != kNoImage ? total[j] / g.count : T(0);
        }
      }
    }
    __syncthreads();
    // Channel c_begin + j's cells [p_begin, p_begin + cells): one run of the output each, and
    // one run for the whole tile when it holds every cell.
    scalar_t* out = output + (n * p.channels + c_begin) * p.cells() + p_begin;
    for (int64_t i = t; i < channels * cells; i += blockDim.x) {
      const int64_t j = i / cells, cell = i % cells;
      out[j * p.cells() + cell] = static_cast<scalar_t>(tile[j * tile_stride + cell]);
    }
    __syncthreads();  // the tile, row and grid are rewritten by the next block
  }
}

// grad_input: contiguous [B, C, H, W] in T (float32 for float16 / bfloat16 input), zeroed. A
// box without an image adds nothing.
template <typename scalar_t, typename T, typename index_t>
__global__ void crop_backward_atomic_kernel(const scalar_t* __restrict__ grad_output,
                                            const T* __restrict__ boxes,
                                            const T* __restrict__ centers,
                                            const double* __restrict__ twice_centers,
                                            ScaleList<T> scales, CropParams<T> p,
                                            index_t channel_groups, index_t items,
                                            T* __restrict__ grad_input) {
  for (index_t item = blockIdx.x * blockDim.x + threadIdx.x; item < items;
       item += gridDim.x * blockDim.x) {
    const CellWork w = cell_work(p, channel_groups, item);
    const BoxImage owner = box_image(boxes, w.k, centers, twice_centers, p.batch);
    const int64_t b = owner.image;
    if (b == kNoImage) {
      continue;
    }
    const RoiGrid<T> g = candidate_grid(p, box_at(boxes, w.k), owner.center, scales.values[w.s]);
    T grad[kChannelsPerThread];
    for (int64_t j = 0; j < kChannelsPerThread; ++j) {
      grad[j] = w.c0 + j < p.channels
                    ? static_cast<T>(grad_output[((w.n * p.channels + w.c0 + j) * p.out_h +
                                                  w.ph) * p.out_w + w.pw]) / g.count
                    : T(0);
    }
    T* map = grad_input + (b * p.channels + w.c0) * p.height * p.width;
    for (int64_t iy = 0; iy < g.y.grid; ++iy) {
      Tap<T> ty;
      if (!axis_tap(g.y.sample(w.ph, iy), p.height, ty)) {
        continue;
      }
      for (int64_t ix = 0; ix < g.x.grid; ++ix) {
        Tap<T> tx;
        if (!axis_tap(g.x.sample(w.pw, ix), p.width, tx)) {
          continue;
        }
        for (int64_t j = 0; j < kChannelsPerThread; ++j) {
          if (w.c0 + j < p.channels) {
            T* plane = map + j * p.height * p.width;
            add_weighted(plane + ty.low * p.width + tx.low, grad[j], ty.w_low, tx.w_low);
            add_weighted(plane + ty.low * p.width + tx.high, grad[j], ty.w_low, tx.w_high);
            add_weighted(plane + ty.high * p.width + tx.low, grad[j], ty.w_high, tx.w_low);
            add_weighted(plane + ty.high * p.width + tx.high, grad[j], ty.w_high, tx.w_high);
          }
        }
      }
    }
  }
}

// Deterministic, tiled (issue 24): a block takes the input elements of one image b in a tile
// of channels x rows x columns (GatherTiles), at most kGatherElements per thread. For each
// candidate of image b, in the order of boxes (index order) and then of scales, it stages the
// output-gradient rows that reach the tile's rows, for its channels, in shared memory with
// coalesced loads, and each thread adds to each of its elements what the candidate sends it
// (gather_gradient: rows, then columns), so every element's sum has the order of the
// untiled gather and no atomics. Rows too many for the tile are read from global memory
// (candidate_gradient), to the same result. The boxes of image b: with order == nullptr
// (K <= kThreads) the block reads all K box rows into shared memory, finds their images and
// sums its image's default centre as crop_setup_kernel does (no setup launch); otherwise
// order[offsets[b]:offsets[b + 1]] and twice_centers from crop_setup_kernel.
template <typename scalar_t, typename T>
__global__ void __launch_bounds__(kThreads)
    crop_backward_gather_kernel(const scalar_t* __restrict__ grad_output,
                                const T* __restrict__ boxes, const T* __restrict__ centers,
                                const double* __restrict__ twice_centers,
                                const int64_t* __restrict__ order,
                                const int64_t* __restrict__ offsets, ScaleList<T> scales,
                                CropParams<T> p, GatherTiles tiles,
                                scalar_t* __restrict__ grad_input) {
  GatherShared<T>& shared = *gpu::dynamic_shared<GatherShared<T>>();
  constexpr int64_t tile_values = kGatherTileBytes / static_cast<int64_t>(sizeof(T));
  const unsigned int t = threadIdx.x;
  const bool own = order == nullptr;
  if (own) {  // every box and its image, once for all the block's tiles
    const int64_t key = chunk_key(boxes, p.boxes, 0, centers, p.batch, shared.boxes);
    if (t < p.boxes) {
      shared.keys[t] = key;
    }
  }
  for (int64_t block = blockIdx.x; block < tiles.blocks; block += gridDim.x) {
    const int64_t x_begin = block % tiles.column_chunks * tiles.column_chunk;
    const int64_t y_begin = block / tiles.column_chunks % tiles.row_bands * tiles.row_band;
    const int64_t c_begin = block / (tiles.column_chunks * tiles.row_bands) %
                            tiles.channel_chunks * tiles.channel_chunk;
    const int64_t b = block / (tiles.column_chunks * tiles.row_bands * tiles.channel_chunks);
    const int64_t channels = p.channels - c_begin < tiles.channel_chunk ? p.channels - c_begin
                                                                          : tiles.channel_chunk;
    const int64_t rows =
        p.height - y_begin < tiles.row_band ? p.height - y_begin : tiles.row_band;
    const int64_t columns =
        p.width - x_begin < tiles.column_chunk ? p.width - x_begin : tiles.column_chunk;
    const int64_t elements = channels * rows * columns;
    __syncthreads();  // the keys are written; the previous tile's readers are done
    if (t == 0) {  // image b's boxes and its 2c
      if (own) {
        shared.first = 0;
        shared.last = p.boxes;
        CenterSum sum;
        for (int64_t j = 0; j < p.boxes && centers == nullptr; ++j) {
          if (shared.keys[j] == b) {
            sum.add(shared.boxes, j);
          }
        }
        shared.center = centers != nullptr ? twice_given_center(centers, b) : sum.mean();
      } else {
        shared.first = offsets[b];
        shared.last = offsets[b + 1];
        shared.center = centers != nullptr
                            ? twice_given_center(centers, b)
                            : TwiceCenter{twice_centers[2 * b], twice_centers[2 * b + 1]};
      }
    }
    __syncthreads();
    const int64_t first = shared.first, last = shared.last;
    T total[kGatherElements];
    for (int64_t e = 0; e < kGatherElements; ++e) {
      total[e] = T(0);
    }
    for (int64_t i = first; i < last; ++i) {
      if (own && shared.keys[i] != b) {
        continue;  // the same for every thread
      }
      for (int64_t s = 0; s < p.scales; ++s) {
        if (t == 0) {  // the candidate's grid, as the untiled gather computed it
          const int64_t k = own ? i : order[i];
          const T* row = own ? shared.boxes + 5 * k : boxes + 5 * k;
          const Box<T> box = box_at(row, 0);
          const Anchors anchors = anchor_corners(box, shared.center);
          shared.grid = candidate_grid(p, candidate_box(box, anchors, scales.values[s], p.clip,
                                                        p.image_height, p.image_width));
          shared.candidate = k * p.scales + s;
        }
        __syncthreads();
        const RoiGrid<T> g = shared.grid;
        const int64_t n = shared.candidate;
        // The output rows that reach the tile's rows, and a row more on each side (none: 0
        // staged rows).
        int64_t low = p.out_h, high = -1;
        for (int64_t r = t; r < rows; r += blockDim.x) {
          int64_t reach_first, reach_last;
          outputs_reaching(g.y, y_begin + r, reach_first, reach_last);
          if (reach_first <= reach_last) {
            low = reach_first < low ? reach_first : low;
            high = reach_last > high ? reach_last : high;
          }
        }
        low = block_min(low, shared.scratch);
        high = -block_min(-high, shared.scratch);
        const int64_t row_offset = low - 1 > 0 ? low - 1 : 0;
        const int64_t last_staged = high + 1 < p.out_h - 1 ? high + 1 : p.out_h - 1;
        const int64_t staged = low <= high ? last_staged - row_offset + 1 : 0;
        const bool fits = staged > 0 && channels * staged * p.out_w <= tile_values;
        const scalar_t* candidate_grad = grad_output + (n * p.channels + c_begin) * p.cells();
        if (fits && staged == p.out_h) {  // the chunk's channels: one run
          stage_run(candidate_grad, channels * p.cells(), shared.tile);
        } else if (fits) {
          for (int64_t j = 0; j < channels; ++j) {
            stage_run(candidate_grad + j * p.cells() + row_offset * p.out_w, staged * p.out_w,
                      shared.tile + j * staged * p.out_w);
          }
        }
        __syncthreads();
        for (int64_t e = 0; e < kGatherElements; ++e) {
          const int64_t local = t + e * int64_t{blockDim.x};
          if (local < elements) {
            const int64_t j = local / (rows * columns);
            const int64_t y = y_begin + local / columns % rows, x = x_begin + local % columns;
            total[e] += candidate_gradient(
                g, fits ? shared.tile + j * staged * p.out_w : nullptr, row_offset, last_staged,
                candidate_grad + j * p.cells(), p.out_w, y, x);
          }
        }
        __syncthreads();  // the tile and grid are rewritten by the next candidate
      }
    }
    for (int64_t e = 0; e < kGatherElements; ++e) {
      const int64_t local = t + e * int64_t{blockDim.x};
      if (local < elements) {
        const int64_t j = local / (rows * columns);
        const int64_t y = y_begin + local / columns % rows, x = x_begin + local % columns;
        grad_input[((b * p.channels + c_begin + j) * p.height + y) * p.width + x] =
            static_cast<scalar_t>(total[e]);
      }
    }
  }
}

// ---- launchers ----

template <typename T>
ScaleList<T> scale_list(DoubleArrayRef scales) {
  ScaleList<T> list{};
  for (size_t s = 0; s < scales.size(); ++s) {
    list.values[s] = static_cast<T>(scales[s]);
  }
  return list;
}

// The boxes grouped by image; batch < 0: B not known (scale_candidates without centres).
// centers: the given centres (undefined without): a box whose image's centre is not finite has
// no image.
template <typename T>
ImageSegments image_segments(const Tensor& boxes, const Tensor& centers, int64_t batch,
                             gpu::Stream stream) {
  const int64_t count = boxes.size(0);
  Tensor keys = empty_like_device(boxes, {count}, ScalarType::Long);
  const GridStride launch = grid_stride(count);
  with_index_type(launch, [&](auto index_type) {
    using index_t = decltype(index_type);
    gpu::launch(image_keys_kernel<T, index_t>, launch.blocks, launch.threads, 0, stream,
                boxes.const_data_ptr<T>(),
                centers.defined() ? centers.const_data_ptr<T>() : nullptr,
                static_cast<index_t>(count), batch, keys.mutable_data_ptr<int64_t>());
  });
  ImageSegments segments = sort_by_image(keys);
  if (batch >= 0) {
    segments.offsets = empty_like_device(keys, {batch + 1});
    const GridStride offsets_launch = grid_stride(batch + 1);
    with_index_type(offsets_launch, [&](auto index_type) {
      using index_t = decltype(index_type);
      gpu::launch(image_offsets_kernel<index_t>, offsets_launch.blocks, offsets_launch.threads,
                  0, stream, segments.sorted.const_data_ptr<int64_t>(), count,
                  static_cast<index_t>(batch + 1), segments.offsets.mutable_data_ptr<int64_t>());
    });
  }
  return segments;
}

// [K, 2] float64: 2c of every box's image (docs/operators.md section 2).
template <typename T>
Tensor box_centers(const Tensor& boxes, const ImageSegments& segments, const Tensor& centers,
                   gpu::Stream stream) {
  const int64_t count = boxes.size(0);
  Tensor result = zeros_like_device(boxes, {count, 2}, ScalarType::Double);
  const GridStride launch = grid_stride(count);
  with_index_type(launch, [&](auto index_type) {
    using index_t = decltype(index_type);
    gpu::launch(box_centers_kernel<T, index_t>, launch.blocks, launch.threads, 0, stream,
                boxes.const_data_ptr<T>(), static_cast<index_t>(count),
                centers.defined() ? centers.const_data_ptr<T>() : nullptr,
                segments.keys.const_data_ptr<int64_t>(), segments.order.const_data_ptr<int64_t>(),
                segments.sorted.const_data_ptr<int64_t>(), result.mutable_data_ptr<double>());
  });
  return result;
}

// out: [K, S, 4] in scalar_t.
template <typename scalar_t>
void launch_scale_candidates(const Tensor& boxes, const ImageSegments& segments,
                             const Tensor& twice_centers, DoubleArrayRef scales, bool clip,
                             double image_height, double image_width, Tensor& out,
                             gpu::Stream stream) {
  const int64_t S = static_cast<int64_t>(scales.size());
  const int64_t candidates = boxes.size(0) * S;
  const GridStride launch = grid_stride(candidates);
  with_index_type(launch, [&](auto index_type) {
    using index_t = decltype(index_type);
    gpu::launch(scale_candidates_kernel<scalar_t, index_t>, launch.blocks, launch.threads, 0,
                stream, boxes.const_data_ptr<scalar_t>(), segments.keys.const_data_ptr<int64_t>(),
                twice_centers.const_data_ptr<double>(), static_cast<index_t>(candidates),
                scale_list<scalar_t>(scales), static_cast<index_t>(S), clip,
                static_cast<scalar_t>(image_height), static_cast<scalar_t>(image_width),
                out.mutable_data_ptr<scalar_t>());
  });
}

// What crop_setup_kernel leaves for the crop kernels.
struct CropSetup {
  Tensor twice_centers;    // [B, 2] float64, the default centres; undefined with given centres
  Tensor order, offsets;   // the boxes grouped by image; undefined unless asked for
};

// One launch of crop_setup_kernel, or none when there is nothing to do. centers: the given
// centres (undefined without); grouping: fill order and offsets; zero: zero_count values of T
// to zero (nullptr: none).
template <typename T>
CropSetup launch_crop_setup(const Tensor& boxes, const Tensor& centers, int64_t batch,
                            bool grouping, T* zero, int64_t zero_count, gpu::Stream stream) {
  CropSetup setup;
  const int64_t count = boxes.size(0);
  const bool default_centers = !centers.defined();
  if (default_centers) {
    setup.twice_centers = empty_like_device(boxes, {batch, 2}, ScalarType::Double);
  }
  if (grouping) {
    setup.order = empty_like_device(boxes, {count}, ScalarType::Long);
    setup.offsets = empty_like_device(boxes, {batch + 1}, ScalarType::Long);
  }
  const int64_t blocks =
      std::max(default_centers || grouping ? batch : int64_t{0}, blocks_for(zero_count));
  if (blocks == 0) {
    return setup;
  }
  SSANET_CHECK(blocks <= gpu::int32_index_limit(), kCropOp, ": ", batch,
               " images exceed the setup kernel's grid");
  gpu::launch(crop_setup_kernel<T>, static_cast<unsigned int>(blocks), kThreads,
              sizeof(SetupShared<T>), stream,
              boxes.const_data_ptr<T>(), count, batch,
              centers.defined() ? centers.const_data_ptr<T>() : nullptr,
              default_centers ? setup.twice_centers.mutable_data_ptr<double>() : nullptr,
              grouping ? setup.order.mutable_data_ptr<int64_t>() : nullptr,
              grouping ? setup.offsets.mutable_data_ptr<int64_t>() : nullptr, zero, zero_count);
  return setup;
}

// The given centres' data, or nullptr.
template <typename T>
const T* centers_data(const Tensor& centers) {
  return centers.defined() ? centers.const_data_ptr<T>() : nullptr;
}

template <typename T>
const double* twice_centers_data(const CropSetup& setup) {
  return setup.twice_centers.defined() ? setup.twice_centers.const_data_ptr<double>() : nullptr;
}

// The forward's tiles (crop_forward_kernel): on a channels-last input 32 channels (a warp) by
// as many cells as the tile holds; on an NCHW one whole output rows, up to kThreads cells (so
// that a block's samples span few map rows), by as many channels, in groups of
// kChannelsPerThread, as the tile holds, and, on a map whose whole plane the stage holds in
// such groups, as the stage holds (one stage per block); channels-last with few channels: all
// of them by whole output rows, as NCHW, within the tile. Each tile row is padded to an odd
// length. The stage (NCHW, channels-last with few channels) takes the rest of
// kForwardSharedBytes.
template <typename scalar_t, typename T>
void launch_crop_forward(const Tensor& input, const Tensor& boxes, const Tensor& centers,
                         const CropSetup& setup, DoubleArrayRef scales, const CropParams<T>& p,
                         Tensor& output, gpu::Stream stream) {
  const Strides4 strides = strides_of(input);
  const bool channels_last = strides.c < strides.w;
  int64_t channel_chunk, cell_chunk, stage_values = 0;
  const int64_t rows = std::max<int64_t>(1, kThreads / p.out_w);
  const int64_t row_cells =
      std::min<int64_t>(p.cells(), p.out_w <= kThreads ? rows * p.out_w : kThreads);
  // Channels-last with fewer channels than a warp and a pixel under a 128-byte line: a warp
  // along the channels would span several pixels whose taps scatter, so the block stages its
  // region (stage_pixels), over whole output rows as on NCHW.
  const bool few_channels =
      p.channels < 32 && p.channels * static_cast<int64_t>(sizeof(scalar_t)) < 128;
  if (channels_last) {
    channel_chunk = std::min<int64_t>(p.channels, 32);
    cell_chunk = std::min<int64_t>(p.cells(), kTileValues / channel_chunk - 1);
    if (few_channels) {
      cell_chunk = std::min(cell_chunk, row_cells);
      stage_values = (kForwardSharedBytes - static_cast<int64_t>(sizeof(ForwardShared<T>))) /
                     static_cast<int64_t>(sizeof(scalar_t));
    }
  } else {
    cell_chunk = row_cells;
    const int64_t fit = kTileValues / (cell_chunk + 1) / kChannelsPerThread * kChannelsPerThread;
    channel_chunk = std::min<int64_t>(p.channels, std::max(kChannelsPerThread, fit));
    stage_values = (kForwardSharedBytes - static_cast<int64_t>(sizeof(ForwardShared<T>))) /
                   static_cast<int64_t>(sizeof(scalar_t));
    const int64_t plane = p.height * p.width;
    const int64_t planes = plane > 0 ? stage_values / plane / kChannelsPerThread : 0;
    if (planes > 0) {
      channel_chunk = std::min(channel_chunk, planes * kChannelsPerThread);
    }
  }
  const int64_t blocks = p.candidates() * ((p.channels + channel_chunk - 1) / channel_chunk) *
                         ((p.cells() + cell_chunk - 1) / cell_chunk);
  const auto kernel = channels_last ? crop_forward_kernel<scalar_t, T, 1>
                                    : crop_forward_kernel<scalar_t, T, kChannelsPerThread>;
  const int64_t shared_bytes = static_cast<int64_t>(sizeof(ForwardShared<T>)) +
                               stage_values * static_cast<int64_t>(sizeof(scalar_t));
  gpu::launch(kernel, static_cast<unsigned int>(std::min(blocks, kMaxBlocks)), kThreads,
              static_cast<size_t>(shared_bytes), stream, input.const_data_ptr<scalar_t>(),
              strides, boxes.const_data_ptr<T>(), centers_data<T>(centers),
              twice_centers_data<T>(setup), scale_list<T>(scales), p, channel_chunk, cell_chunk,
              blocks, stage_values, output.mutable_data_ptr<scalar_t>());
}

// The gather's tiles: whole rows of as many rows, and then whole planes of as many channels, as
// a block's kThreads x kGatherElements elements hold, as many channels as the staging tile
// holds whole candidates of (so that small maps stage every candidate whole, in one run).
template <typename T>
GatherTiles gather_tiles(const CropParams<T>& p) {
  const int64_t capacity = kGatherElements * kThreads;
  GatherTiles tiles;
  tiles.column_chunk = std::min(p.width, capacity);
  tiles.row_band = std::min(p.height, std::max<int64_t>(1, capacity / tiles.column_chunk));
  tiles.channel_chunk = 1;
  if (tiles.row_band == p.height) {
    const int64_t whole = kGatherTileBytes / static_cast<int64_t>(sizeof(T)) / p.cells();
    tiles.channel_chunk = std::min(
        {p.channels, std::max<int64_t>(1, capacity / (p.height * tiles.column_chunk)),
         std::max<int64_t>(1, whole)});
  }
  tiles.channel_chunks = (p.channels + tiles.channel_chunk - 1) / tiles.channel_chunk;
  tiles.row_bands = (p.height + tiles.row_band - 1) / tiles.row_band;
  tiles.column_chunks = (p.width + tiles.column_chunk - 1) / tiles.column_chunk;
  tiles.blocks = p.batch * tiles.channel_chunks * tiles.row_bands * tiles.column_chunks;
  return tiles;
}

// setup: crop_setup_kernel's grouping when K > kThreads; without it (K <= kThreads) the
// gather's blocks group the boxes themselves.
template <typename scalar_t, typename T>
void launch_crop_backward_gather(const Tensor& grad_output, const Tensor& boxes,
                                 const Tensor& centers, const CropSetup& setup,
                                 DoubleArrayRef scales, const CropParams<T>& p,
                                 Tensor& grad_input, gpu::Stream stream) {
  const GatherTiles tiles = gather_tiles(p);
  const bool grouped = setup.order.defined();
  gpu::launch(crop_backward_gather_kernel<scalar_t, T>,
              static_cast<unsigned int>(std::min(tiles.blocks, kMaxBlocks)), kThreads,
              sizeof(GatherShared<T>), stream, grad_output.const_data_ptr<scalar_t>(),
              boxes.const_data_ptr<T>(), centers_data<T>(centers), twice_centers_data<T>(setup),
              grouped ? setup.order.const_data_ptr<int64_t>() : nullptr,
              grouped ? setup.offsets.const_data_ptr<int64_t>() : nullptr, scale_list<T>(scales),
              p, tiles, grad_input.mutable_data_ptr<scalar_t>());
}

// accumulator: [B, C, H, W] in T, zeroed by the setup.
template <typename scalar_t, typename T>
void launch_crop_backward_atomic(const Tensor& grad_output, const Tensor& boxes,
                                 const Tensor& centers, const CropSetup& setup,
                                 DoubleArrayRef scales, const CropParams<T>& p,
                                 Tensor& accumulator, gpu::Stream stream) {
  const int64_t channel_groups = (p.channels + kChannelsPerThread - 1) / kChannelsPerThread;
  const int64_t items = p.candidates() * channel_groups * p.cells();
  const GridStride launch = grid_stride(items);
  with_index_type(launch, [&](auto index_type) {
    using index_t = decltype(index_type);
    gpu::launch(crop_backward_atomic_kernel<scalar_t, T, index_t>, launch.blocks,
                launch.threads, 0, stream, grad_output.const_data_ptr<scalar_t>(),
                boxes.const_data_ptr<T>(), centers_data<T>(centers),
                twice_centers_data<T>(setup), scale_list<T>(scales), p,
                static_cast<index_t>(channel_groups), static_cast<index_t>(items),
                accumulator.mutable_data_ptr<T>());
  });
}

// ---- entry points: the ops' schemas, on tensors of the kernels' device ----

inline Tensor scale_candidates(const Tensor& boxes, DoubleArrayRef scales,
                               const std::optional<Tensor>& centers, double image_height,
                               double image_width, bool clip, gpu::Stream stream) {
  auto [out, boxes_c, centers_c, batch] =
      prepare_candidates(boxes, scales, centers, image_height, image_width);
  if (boxes.size(0) == 0) {
    return out;
  }
  // boxes are float32 or float64 (check_candidates_args).
  THO_DISPATCH_V2(boxes.scalar_type(), "scale_candidates", AT_WRAP([&] {
                    const ImageSegments segments =
                        image_segments<scalar_t>(boxes_c, centers_c, batch, stream);
                    const Tensor twice_centers =
                        box_centers<scalar_t>(boxes_c, segments, centers_c, stream);
                    launch_scale_candidates<scalar_t>(boxes_c, segments, twice_centers, scales,
                                                      clip, image_height, image_width, out,
                                                      stream);
                  }),
                  AT_EXPAND(AT_FLOATING_TYPES));
  return out;
}

inline Tensor crop_forward(const Tensor& input, const Tensor& boxes, DoubleArrayRef scales,
                           const std::optional<Tensor>& centers, IntArrayRef output_size,
                           double spatial_scale, int64_t sampling_ratio, bool aligned, bool clip,
                           gpu::Stream stream) {
  const CropShape shape = check_crop_args(input, boxes, scales, centers, output_size,
                                          spatial_scale, sampling_ratio, kCropOp);
  check_floating_dtype(input, "input", kCropOp);
  const int64_t K = boxes.size(0);
  const int64_t S = static_cast<int64_t>(scales.size());
  Tensor output = empty_like_device(input, {K, S, input.size(1), shape.out_h, shape.out_w});
  if (output.numel() == 0) {
    return output;
  }
  const Tensor boxes_c = torch::stable::contiguous(boxes);
  const Tensor given_centers =
      centers.has_value() ? torch::stable::contiguous(*centers) : Tensor();
  SSANET_DISPATCH_FLOATING_TYPES(input.scalar_type(), "multiscale_roi_crop", [&] {
    using T = opmath_t<scalar_t>;
    const auto p = crop_params<T>(K, S, input.size(0), input.size(1), input.size(2),
                                  input.size(3), shape, spatial_scale, sampling_ratio, aligned,
                                  clip);
    // Without given centres, up to kThreads boxes: the crop kernel's blocks find their
    // images' centres themselves (one launch in all); more: the setup kernel sums them once.
    CropSetup setup;
    if (!given_centers.defined() && K > kThreads) {
      setup = launch_crop_setup<T>(boxes_c, given_centers, p.batch, false, nullptr, 0, stream);
    }
    launch_crop_forward<scalar_t>(input, boxes_c, given_centers, setup, scales, p, output,
                                  stream);
  });
  return output;
}

// deterministic: the gather kernel (a fixed summation order, no atomics) instead of the atomic
// one; the Python layer passes torch.are_deterministic_algorithms_enabled().
inline Tensor crop_backward(const Tensor& grad_output, const Tensor& boxes, DoubleArrayRef scales,
                            const std::optional<Tensor>& centers, IntArrayRef output_size,
                            double spatial_scale, int64_t sampling_ratio, bool aligned,
                            bool clip, int64_t batch, int64_t channels, int64_t height,
                            int64_t width, bool deterministic, gpu::Stream stream) {
  const CropShape shape =
      check_crop_backward_args(grad_output, boxes, scales, centers, output_size, spatial_scale,
                               sampling_ratio, batch, channels, height, width, kCropOp);
  check_floating_dtype(grad_output, "grad_output", kCropOp);
  const int64_t K = boxes.size(0);
  const int64_t S = static_cast<int64_t>(scales.size());
  const ScalarType type = grad_output.scalar_type();
  if (K == 0 || batch * channels * height * width == 0) {
    return zeros_like_device(grad_output, {batch, channels, height, width});
  }
  const Tensor grad_c = torch::stable::contiguous(grad_output);
  const Tensor boxes_c = torch::stable::contiguous(boxes);
  const Tensor given_centers =
      centers.has_value() ? torch::stable::contiguous(*centers) : Tensor();
  Tensor grad_input;
  SSANET_DISPATCH_FLOATING_TYPES(type, "multiscale_roi_crop_backward", [&] {
    using T = opmath_t<scalar_t>;
    const auto p = crop_params<T>(K, S, batch, channels, height, width, shape, spatial_scale,
                                  sampling_ratio, aligned, clip);
    if (deterministic) {
      // Up to kThreads boxes: the gather's blocks group them by image themselves (one launch).
      const CropSetup setup =
          K > kThreads ? launch_crop_setup<T>(boxes_c, given_centers, p.batch, true, nullptr, 0,
                                              stream)
                       : CropSetup{};
      grad_input = empty_like_device(grad_output, {batch, channels, height, width});
      launch_crop_backward_gather<scalar_t>(grad_c, boxes_c, given_centers, setup, scales, p,
                                            grad_input, stream);
      return;
    }
    // Atomics add into T: the input's type, or a float32 buffer for float16 / bfloat16,
    // zeroed by the setup kernel (one launch less than torch's zeros).
    Tensor accumulator =
        empty_like_device(grad_output, {batch, channels, height, width}, compute_type(type));
    const CropSetup setup =
        launch_crop_setup<T>(boxes_c, given_centers, p.batch, false,
                             accumulator.mutable_data_ptr<T>(), accumulator.numel(), stream);
    launch_crop_backward_atomic<scalar_t>(grad_c, boxes_c, given_centers, setup, scales, p,
                                          accumulator, stream);
    grad_input = accumulator.scalar_type() == type ? accumulator
                                                   : torch::stable::to(accumulator, type);
  });
  return grad_input;
}

}  // namespace ssanet_ops::roi_crop
