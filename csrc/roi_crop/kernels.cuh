#pragma once
// scale_candidates and multiscale_roi_crop's CUDA kernels, running the shared geometry and
// sampling functions of common/scale_candidates.h, common/bilinear.h and common/roi_crop.h.
// Compiled by nvcc into cuda.cu and by the host compiler into sim.cpp (common/simulation.h);
// the entry points at the end do what both share.
//
// The boxes are first grouped by image on the device (image_key, a stable sort by key), and
// each image's default centre is summed once. Forward: one launch for all K * S candidates; a
// thread computes its candidate box in the kernel and one output cell for a group of channels,
// so each sample's weights serve all of them. Backward: by default the same threads add their
// gradients with atomics; with `deterministic` (which the Python layer sets from
// torch.are_deterministic_algorithms_enabled()), one thread per input element gathers what the
// candidates of its image send it, in a fixed order, without atomics. Float16 and bfloat16
// accumulate in float32 (opmath_t) in all kernels.
//
// Nothing here waits for the device (docs/operators.md section 4), so the ops can be captured in a CUDA
// graph: box values are not checked; a box whose image_key is kNoImage (a non-finite
// coordinate, a batch index out of range, a non-finite given centre of its image) has zero
// candidates and passes no gradient.
// ssanet_ops.check_boxes checks them on demand.

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

// Candidate n = k * S + s reads image keys[k]; a box without an image gives zeros.
template <typename scalar_t, typename T, typename index_t>
__global__ void crop_forward_kernel(const scalar_t* __restrict__ input, Strides4 strides,
                                    const T* __restrict__ boxes,
                                    const int64_t* __restrict__ keys,
                                    const double* __restrict__ twice_centers,
                                    ScaleList<T> scales, CropParams<T> p, index_t channel_groups,
                                    index_t items, scalar_t* __restrict__ output) {
  for (index_t item = blockIdx.x * blockDim.x + threadIdx.x; item < items;
       item += gridDim.x * blockDim.x) {
    const CellWork w = cell_work(p, channel_groups, item);
    const int64_t b = keys[w.k];
    T total[kChannelsPerThread] = {};
    T count = T(1);
    if (b != kNoImage) {
      const RoiGrid<T> g = candidate_grid(p, box_at(boxes, w.k),
                                          twice_center_of(twice_centers, w.k), scales.values[w.s]);
      count = g.count;
      const scalar_t* map = input + b * strides.n + w.c0 * strides.c;
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
          const T w1 = ty.w_low * tx.w_low, w2 = ty.w_low * tx.w_high;
          const T w3 = ty.w_high * tx.w_low, w4 = ty.w_high * tx.w_high;
          const int64_t o1 = ty.low * strides.h + tx.low * strides.w;
          const int64_t o2 = ty.low * strides.h + tx.high * strides.w;
          const int64_t o3 = ty.high * strides.h + tx.low * strides.w;
          const int64_t o4 = ty.high * strides.h + tx.high * strides.w;
          for (int64_t j = 0; j < kChannelsPerThread; ++j) {
            if (w.c0 + j < p.channels) {
              const scalar_t* plane = map + j * strides.c;
              total[j] += w1 * static_cast<T>(plane[o1]) + w2 * static_cast<T>(plane[o2]) +
                          w3 * static_cast<T>(plane[o3]) + w4 * static_cast<T>(plane[o4]);
            }
          }
        }
      }
    }
    for (int64_t j = 0; j < kChannelsPerThread; ++j) {
      if (w.c0 + j < p.channels) {
        output[((w.n * p.channels + w.c0 + j) * p.out_h + w.ph) * p.out_w + w.pw] =
            static_cast<scalar_t>(total[j] / count);
      }
    }
  }
}

// grad_input: contiguous [B, C, H, W] in T (float32 for float16 / bfloat16 input), zeroed. A
// box without an image adds nothing.
template <typename scalar_t, typename T, typename index_t>
__global__ void crop_backward_atomic_kernel(const scalar_t* __restrict__ grad_output,
                                            const T* __restrict__ boxes,
                                            const int64_t* __restrict__ keys,
                                            const double* __restrict__ twice_centers,
                                            ScaleList<T> scales, CropParams<T> p,
                                            index_t channel_groups, index_t items,
                                            T* __restrict__ grad_input) {
  for (index_t item = blockIdx.x * blockDim.x + threadIdx.x; item < items;
       item += gridDim.x * blockDim.x) {
    const CellWork w = cell_work(p, channel_groups, item);
    const int64_t b = keys[w.k];
    if (b == kNoImage) {
      continue;
    }
    const RoiGrid<T> g = candidate_grid(p, box_at(boxes, w.k),
                                        twice_center_of(twice_centers, w.k), scales.values[w.s]);
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

// Deterministic: one thread per input element (b, c, y, x) sums, in the order of candidates
// and then of output cells, what each candidate of image b sends it (gather_gradient). The
// boxes of image b are order[offsets[b]:offsets[b + 1]], in index order.
template <typename scalar_t, typename T, typename index_t>
__global__ void crop_backward_gather_kernel(const scalar_t* __restrict__ grad_output,
                                            const T* __restrict__ boxes,
                                            const int64_t* __restrict__ order,
                                            const int64_t* __restrict__ offsets,
                                            const double* __restrict__ twice_centers,
                                            ScaleList<T> scales, CropParams<T> p, index_t items,
                                            scalar_t* __restrict__ grad_input) {
  const index_t width = p.width, height = p.height, channels = p.channels;
  for (index_t item = blockIdx.x * blockDim.x + threadIdx.x; item < items;
       item += gridDim.x * blockDim.x) {
    const index_t x = item % width;
    const index_t y = (item / width) % height;
    const index_t c = (item / (width * height)) % channels;
    const index_t b = item / (width * height * channels);
    T total = 0;
    for (int64_t i = offsets[b]; i < offsets[b + 1]; ++i) {
      const int64_t k = order[i];
      const Box<T> box = box_at(boxes, k);
      const Anchors anchors = anchor_corners(box, twice_center_of(twice_centers, k));
      for (int64_t s = 0; s < p.scales; ++s) {
        const RoiGrid<T> g = candidate_grid(
            p, candidate_box(box, anchors, scales.values[s], p.clip, p.image_height,
                             p.image_width));
        const int64_t n = k * p.scales + s;
        total += gather_gradient(g, grad_output + (n * p.channels + c) * p.cells(), p.out_w,
                                 int64_t{1}, y, x);
      }
    }
    grad_input[item] = static_cast<scalar_t>(total);
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

template <typename scalar_t, typename T>
void launch_crop_forward(const Tensor& input, const Tensor& boxes, const ImageSegments& segments,
                         const Tensor& twice_centers, DoubleArrayRef scales,
                         const CropParams<T>& p, Tensor& output, gpu::Stream stream) {
  const int64_t channel_groups = (p.channels + kChannelsPerThread - 1) / kChannelsPerThread;
  const int64_t items = p.candidates() * channel_groups * p.cells();
  const GridStride launch = grid_stride(items);
  with_index_type(launch, [&](auto index_type) {
    using index_t = decltype(index_type);
    gpu::launch(crop_forward_kernel<scalar_t, T, index_t>, launch.blocks, launch.threads, 0,
                stream, input.const_data_ptr<scalar_t>(), strides_of(input),
                boxes.const_data_ptr<T>(), segments.keys.const_data_ptr<int64_t>(),
                twice_centers.const_data_ptr<double>(), scale_list<T>(scales), p,
                static_cast<index_t>(channel_groups), static_cast<index_t>(items),
                output.mutable_data_ptr<scalar_t>());
  });
}

template <typename scalar_t, typename T>
void launch_crop_backward_gather(const Tensor& grad_output, const Tensor& boxes,
                                 const ImageSegments& segments, const Tensor& twice_centers,
                                 DoubleArrayRef scales, const CropParams<T>& p,
                                 Tensor& grad_input, gpu::Stream stream) {
  const int64_t items = grad_input.numel();
  const GridStride launch = grid_stride(items);
  with_index_type(launch, [&](auto index_type) {
    using index_t = decltype(index_type);
    gpu::launch(crop_backward_gather_kernel<scalar_t, T, index_t>, launch.blocks,
                launch.threads, 0, stream, grad_output.const_data_ptr<scalar_t>(),
                boxes.const_data_ptr<T>(), segments.order.const_data_ptr<int64_t>(),
                segments.offsets.const_data_ptr<int64_t>(),
                twice_centers.const_data_ptr<double>(), scale_list<T>(scales), p,
                static_cast<index_t>(items), grad_input.mutable_data_ptr<scalar_t>());
  });
}

// accumulator: zeroed [B, C, H, W] in T.
template <typename scalar_t, typename T>
void launch_crop_backward_atomic(const Tensor& grad_output, const Tensor& boxes,
                                 const ImageSegments& segments, const Tensor& twice_centers,
                                 DoubleArrayRef scales, const CropParams<T>& p,
                                 Tensor& accumulator, gpu::Stream stream) {
  const int64_t channel_groups = (p.channels + kChannelsPerThread - 1) / kChannelsPerThread;
  const int64_t items = p.candidates() * channel_groups * p.cells();
  const GridStride launch = grid_stride(items);
  with_index_type(launch, [&](auto index_type) {
    using index_t = decltype(index_type);
    gpu::launch(crop_backward_atomic_kernel<scalar_t, T, index_t>, launch.blocks,
                launch.threads, 0, stream, grad_output.const_data_ptr<scalar_t>(),
                boxes.const_data_ptr<T>(), segments.keys.const_data_ptr<int64_t>(),
                twice_centers.const_data_ptr<double>(), scale_list<T>(scales), p,
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
    const ImageSegments segments =
        image_segments<T>(boxes_c, given_centers, p.batch, stream);
    const Tensor twice_centers = box_centers<T>(boxes_c, segments, given_centers, stream);
    launch_crop_forward<scalar_t>(input, boxes_c, segments, twice_centers, scales, p, output,
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
    const ImageSegments segments =
        image_segments<T>(boxes_c, given_centers, p.batch, stream);
    const Tensor twice_centers = box_centers<T>(boxes_c, segments, given_centers, stream);
    if (deterministic) {
      grad_input = empty_like_device(grad_output, {batch, channels, height, width});
      launch_crop_backward_gather<scalar_t>(grad_c, boxes_c, segments, twice_centers, scales, p,
                                            grad_input, stream);
      return;
    }
    // Atomics add into T: the input's type, or a float32 buffer for float16 / bfloat16.
    Tensor accumulator =
        zeros_like_device(grad_output, {batch, channels, height, width}, compute_type(type));
    launch_crop_backward_atomic<scalar_t>(grad_c, boxes_c, segments, twice_centers, scales, p,
                                          accumulator, stream);
    grad_input = accumulator.scalar_type() == type ? accumulator
                                                   : torch::stable::to(accumulator, type);
  });
  return grad_input;
}

}  // namespace ssanet_ops::roi_crop
