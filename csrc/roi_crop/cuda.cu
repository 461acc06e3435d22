// scale_candidates and multiscale_roi_crop on CUDA, running the shared geometry and sampling
// functions of common/scale_candidates.h, common/bilinear.h and common/roi_crop.h.
//
// The boxes are first grouped by image on the device (image_key, a stable sort by key), and
// each image's default centre is summed once. Forward: one launch for all K * S candidates; a
// thread computes its candidate box in the kernel and one output cell for a group of channels,
// so each sample's weights serve all of them. Backward: by default the same threads add their
// gradients with atomics; when torch.are_deterministic_algorithms_enabled(), one thread per
// input element gathers what the candidates of its image send it, in a fixed order, without
// atomics. Float16 and bfloat16 accumulate in float32 (at::opmath_type) in all kernels.
//
// No kernel or host function here waits for the device (SPEC.md section 4), so the ops can be
// captured in a CUDA graph: box values are not checked; a box whose image_key is kNoImage (a
// non-finite coordinate, a batch index out of range) has zero candidates and passes no
// gradient. ssanet_ops.check_boxes checks them on demand.

#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "roi_crop/arguments.h"

namespace ssanet_ops::roi_crop {
namespace {

constexpr int kThreads = 256;
// Channels per forward / atomic-backward thread: the sample weights are computed once for them.
constexpr int64_t kChannelsPerThread = 4;

int64_t blocks_for(int64_t work) {
  // Grid-stride loops cover the rest when the work exceeds this many blocks.
  return std::min<int64_t>((work + kThreads - 1) / kThreads, int64_t{1} << 20);
}

// The scale factors travel by value, in T, rounded as the CPU rounds them.
template <typename T>
struct ScaleList {
  T values[kMaxScales];
};

template <typename T>
ScaleList<T> scale_list(at::ArrayRef<double> scales) {
  ScaleList<T> list{};
  for (size_t s = 0; s < scales.size(); ++s) {
    list.values[s] = static_cast<T>(scales[s]);
  }
  return list;
}

// Element strides of the input map, so non-contiguous and channels-last input is read in place.
struct MapStrides {
  int64_t n, c, h, w;
};

template <typename T>
__global__ void image_keys_kernel(const T* __restrict__ boxes, int64_t count, int64_t batch,
                                  int64_t* __restrict__ keys) {
  for (int64_t k = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; k < count;
       k += int64_t{gridDim.x} * blockDim.x) {
    keys[k] = image_key(boxes, k, batch);
  }
}

// The boxes grouped by image; batch < 0: B not known (scale_candidates without centres).
template <typename T>
ImageSegments image_segments(const at::Tensor& boxes, int64_t batch, cudaStream_t stream) {
  const int64_t count = boxes.size(0);
  at::Tensor keys = at::empty({count}, boxes.options().dtype(at::kLong));
  image_keys_kernel<T><<<blocks_for(count), kThreads, 0, stream>>>(
      boxes.const_data_ptr<T>(), count, batch, keys.mutable_data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return group_by_image(keys, batch);
}

// Thread i: the given centre of box i's image, or, without centres, the default centre of the
// image whose boxes start at sorted position i (each image summed once).
template <typename T>
__global__ void box_centers_kernel(const T* __restrict__ boxes, int64_t count,
                                   const T* __restrict__ centers,
                                   const int64_t* __restrict__ keys,
                                   const int64_t* __restrict__ order,
                                   const int64_t* __restrict__ sorted,
                                   double* __restrict__ twice_centers) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < count;
       i += int64_t{gridDim.x} * blockDim.x) {
    if (centers != nullptr) {
      spread_given_center(centers, keys, i, twice_centers);
    } else {
      spread_image_center(boxes, order, sorted, count, i, twice_centers);
    }
  }
}

// [K, 2] float64: 2c of every box's image (SPEC.md section 2).
template <typename T>
at::Tensor box_centers(const at::Tensor& boxes, const ImageSegments& segments,
                       const at::Tensor& centers, cudaStream_t stream) {
  const int64_t count = boxes.size(0);
  at::Tensor result = at::zeros({count, 2}, boxes.options().dtype(at::kDouble));
  box_centers_kernel<T><<<blocks_for(count), kThreads, 0, stream>>>(
      boxes.const_data_ptr<T>(), count,
      centers.defined() ? centers.const_data_ptr<T>() : nullptr,
      segments.keys.const_data_ptr<int64_t>(), segments.order.const_data_ptr<int64_t>(),
      segments.sorted.const_data_ptr<int64_t>(), result.mutable_data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return result;
}

template <typename T>
__global__ void scale_candidates_kernel(const T* __restrict__ boxes,
                                        const int64_t* __restrict__ keys,
                                        const double* __restrict__ twice_centers, int64_t count,
                                        ScaleList<T> scales, int64_t S, bool clip,
                                        T image_height, T image_width, T* __restrict__ out) {
  for (int64_t item = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; item < count * S;
       item += int64_t{gridDim.x} * blockDim.x) {
    const int64_t k = item / S;
    const int64_t s = item % S;
    Box<T> candidate{0, 0, 0, 0};  // a box without an image (SPEC.md section 4)
    if (keys[k] != kNoImage) {
      const Box<T> box = box_at(boxes, k);
      candidate = candidate_box(box, anchor_corners(box, twice_center_of(twice_centers, k)),
                                scales.values[s], clip, image_height, image_width);
    }
    T* row = out + item * 4;
    row[0] = candidate.x1;
    row[1] = candidate.y1;
    row[2] = candidate.x2;
    row[3] = candidate.y2;
  }
}

at::Tensor scale_candidates_cuda(const at::Tensor& boxes, at::ArrayRef<double> scales,
                                 const std::optional<at::Tensor>& centers, double image_height,
                                 double image_width, bool clip) {
  check_candidates_args(boxes, scales, centers, image_height, image_width);
  const c10::cuda::CUDAGuard device_guard(boxes.device());
  const int64_t count = boxes.size(0);
  const int64_t S = static_cast<int64_t>(scales.size());
  at::Tensor out = at::empty({count, S, 4}, boxes.options());
  if (count == 0) {
    return out;
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor boxes_c = boxes.contiguous();
  const at::Tensor centers_c = centers.has_value() ? centers->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(boxes.scalar_type(), "scale_candidates_cuda", [&] {
    const ImageSegments segments =
        image_segments<scalar_t>(boxes_c, centers_c.defined() ? centers_c.size(0) : -1, stream);
    const at::Tensor twice_centers = box_centers<scalar_t>(boxes_c, segments, centers_c, stream);
    scale_candidates_kernel<scalar_t><<<blocks_for(count * S), kThreads, 0, stream>>>(
        boxes_c.const_data_ptr<scalar_t>(), segments.keys.const_data_ptr<int64_t>(),
        twice_centers.const_data_ptr<double>(), count, scale_list<scalar_t>(scales), S, clip,
        static_cast<scalar_t>(image_height), static_cast<scalar_t>(image_width),
        out.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

// A forward / atomic-backward thread: output cell (ph, pw) of candidate n for the channels
// [c0, c0 + kChannelsPerThread) (those below C).
struct CellWork {
  int64_t n, k, s, c0, ph, pw;
};

template <typename T>
__device__ CellWork cell_work(const CropParams<T>& p, int64_t channel_groups, int64_t item) {
  CellWork w;
  w.pw = item % p.out_w;
  w.ph = (item / p.out_w) % p.out_h;
  w.c0 = ((item / p.cells()) % channel_groups) * kChannelsPerThread;
  w.n = item / (p.cells() * channel_groups);
  w.k = w.n / p.scales;
  w.s = w.n % p.scales;
  return w;
}

// Candidate n = k * S + s reads image keys[k]; a box without an image (kNoImage) gives zeros.
template <typename scalar_t, typename T>
__global__ void crop_forward_kernel(const scalar_t* __restrict__ input, MapStrides strides,
                                    const T* __restrict__ boxes,
                                    const int64_t* __restrict__ keys,
                                    const double* __restrict__ twice_centers,
                                    ScaleList<T> scales, CropParams<T> p, int64_t channel_groups,
                                    int64_t items, scalar_t* __restrict__ output) {
  for (int64_t item = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; item < items;
       item += int64_t{gridDim.x} * blockDim.x) {
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
#pragma unroll
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
#pragma unroll
    for (int64_t j = 0; j < kChannelsPerThread; ++j) {
      if (w.c0 + j < p.channels) {
        output[((w.n * p.channels + w.c0 + j) * p.out_h + w.ph) * p.out_w + w.pw] =
            static_cast<scalar_t>(total[j] / count);
      }
    }
  }
}

// Adds value * wy * wx at target, skipping, not multiplying by, a zero weight on either axis:
// a NaN gradient then reaches exactly the elements the CPU and the gather kernel send it to
// (issue 9 defect 8).
template <typename T>
__device__ void add_weighted(T* target, T value, T wy, T wx) {
  if (wy != T(0) && wx != T(0)) {
    atomicAdd(target, value * (wy * wx));
  }
}

// grad_input: contiguous [B, C, H, W] in T (float32 for float16 / bfloat16 input), zeroed. A
// box without an image (kNoImage) adds nothing.
template <typename scalar_t, typename T>
__global__ void crop_backward_atomic_kernel(const scalar_t* __restrict__ grad_output,
                                            const T* __restrict__ boxes,
                                            const int64_t* __restrict__ keys,
                                            const double* __restrict__ twice_centers,
                                            ScaleList<T> scales, CropParams<T> p,
                                            int64_t channel_groups, int64_t items,
                                            T* __restrict__ grad_input) {
  for (int64_t item = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; item < items;
       item += int64_t{gridDim.x} * blockDim.x) {
    const CellWork w = cell_work(p, channel_groups, item);
    const int64_t b = keys[w.k];
    if (b == kNoImage) {
      continue;
    }
    const RoiGrid<T> g = candidate_grid(p, box_at(boxes, w.k),
                                        twice_center_of(twice_centers, w.k), scales.values[w.s]);
    T grad[kChannelsPerThread];
#pragma unroll
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
#pragma unroll
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
template <typename scalar_t, typename T>
__global__ void crop_backward_gather_kernel(const scalar_t* __restrict__ grad_output,
                                            const T* __restrict__ boxes,
                                            const int64_t* __restrict__ order,
                                            const int64_t* __restrict__ offsets,
                                            const double* __restrict__ twice_centers,
                                            ScaleList<T> scales, CropParams<T> p, int64_t items,
                                            scalar_t* __restrict__ grad_input) {
  for (int64_t item = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; item < items;
       item += int64_t{gridDim.x} * blockDim.x) {
    const int64_t x = item % p.width;
    const int64_t y = (item / p.width) % p.height;
    const int64_t c = (item / (p.width * p.height)) % p.channels;
    const int64_t b = item / (p.width * p.height * p.channels);
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

at::Tensor multiscale_roi_crop_cuda(const at::Tensor& input, const at::Tensor& boxes,
                                    at::ArrayRef<double> scales,
                                    const std::optional<at::Tensor>& centers,
                                    at::IntArrayRef output_size, double spatial_scale,
                                    int64_t sampling_ratio, bool aligned, bool clip) {
  const CropShape shape = check_crop_args(input, boxes, scales, centers, output_size,
                                          spatial_scale, sampling_ratio, kCropOp);
  check_cuda_dtype(input, "input", kCropOp);
  const c10::cuda::CUDAGuard device_guard(input.device());
  const int64_t K = boxes.size(0);
  const int64_t S = static_cast<int64_t>(scales.size());
  at::Tensor output =
      at::empty({K, S, input.size(1), shape.out_h, shape.out_w}, input.options());
  if (output.numel() == 0) {
    return output;
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor boxes_c = boxes.contiguous();
  const at::Tensor given_centers = centers.has_value() ? centers->contiguous() : at::Tensor();

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, input.scalar_type(), "multiscale_roi_crop_cuda", [&] {
        using T = at::opmath_type<scalar_t>;
        const auto p = crop_params<T>(K, S, input.size(0), input.size(1), input.size(2),
                                      input.size(3), shape, spatial_scale, sampling_ratio,
                                      aligned, clip);
        const ImageSegments segments = image_segments<T>(boxes_c, p.batch, stream);
        const at::Tensor twice_centers = box_centers<T>(boxes_c, segments, given_centers, stream);
        const int64_t channel_groups = (p.channels + kChannelsPerThread - 1) / kChannelsPerThread;
        const int64_t items = p.candidates() * channel_groups * p.cells();
        crop_forward_kernel<scalar_t, T><<<blocks_for(items), kThreads, 0, stream>>>(
            input.const_data_ptr<scalar_t>(),
            MapStrides{input.stride(0), input.stride(1), input.stride(2), input.stride(3)},
            boxes_c.const_data_ptr<T>(), segments.keys.const_data_ptr<int64_t>(),
            twice_centers.const_data_ptr<double>(), scale_list<T>(scales), p, channel_groups,
            items, output.mutable_data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return output;
}

at::Tensor multiscale_roi_crop_backward_cuda(const at::Tensor& grad_output,
                                             const at::Tensor& boxes, at::ArrayRef<double> scales,
                                             const std::optional<at::Tensor>& centers,
                                             at::IntArrayRef output_size, double spatial_scale,
                                             int64_t sampling_ratio, bool aligned, bool clip,
                                             int64_t batch, int64_t channels, int64_t height,
                                             int64_t width) {
  const CropShape shape =
      check_crop_backward_args(grad_output, boxes, scales, centers, output_size, spatial_scale,
                               sampling_ratio, batch, channels, height, width, kCropOp);
  check_cuda_dtype(grad_output, "grad_output", kCropOp);
  const c10::cuda::CUDAGuard device_guard(grad_output.device());
  const int64_t K = boxes.size(0);
  const int64_t S = static_cast<int64_t>(scales.size());
  const bool deterministic = at::globalContext().deterministicAlgorithms();
  const at::ScalarType type = grad_output.scalar_type();
  const at::ScalarType accumulate_type = compute_type(type);
  if (K == 0 || batch * channels * height * width == 0) {
    return at::zeros({batch, channels, height, width}, grad_output.options());
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor grad_c = grad_output.contiguous();
  const at::Tensor boxes_c = boxes.contiguous();
  const at::Tensor given_centers = centers.has_value() ? centers->contiguous() : at::Tensor();
  at::Tensor grad_input;

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, type, "multiscale_roi_crop_backward_cuda", [&] {
        using T = at::opmath_type<scalar_t>;
        const auto p = crop_params<T>(K, S, batch, channels, height, width, shape, spatial_scale,
                                      sampling_ratio, aligned, clip);
        const ImageSegments segments = image_segments<T>(boxes_c, p.batch, stream);
        const at::Tensor twice_centers = box_centers<T>(boxes_c, segments, given_centers, stream);
        if (deterministic) {
          grad_input = at::empty({batch, channels, height, width}, grad_output.options());
          const int64_t items = grad_input.numel();
          crop_backward_gather_kernel<scalar_t, T><<<blocks_for(items), kThreads, 0, stream>>>(
              grad_c.const_data_ptr<scalar_t>(), boxes_c.const_data_ptr<T>(),
              segments.order.const_data_ptr<int64_t>(),
              segments.offsets.const_data_ptr<int64_t>(), twice_centers.const_data_ptr<double>(),
              scale_list<T>(scales), p, items, grad_input.mutable_data_ptr<scalar_t>());
          C10_CUDA_KERNEL_LAUNCH_CHECK();
          return;
        }
        // Atomics add into T: the input's type, or a float32 buffer for float16 / bfloat16.
        at::Tensor accumulator = at::zeros({batch, channels, height, width},
                                           grad_output.options().dtype(accumulate_type));
        const int64_t channel_groups = (p.channels + kChannelsPerThread - 1) / kChannelsPerThread;
        const int64_t items = p.candidates() * channel_groups * p.cells();
        crop_backward_atomic_kernel<scalar_t, T><<<blocks_for(items), kThreads, 0, stream>>>(
            grad_c.const_data_ptr<scalar_t>(), boxes_c.const_data_ptr<T>(),
            segments.keys.const_data_ptr<int64_t>(), twice_centers.const_data_ptr<double>(),
            scale_list<T>(scales), p, channel_groups, items,
            accumulator.mutable_data_ptr<T>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        grad_input = accumulator.scalar_type() == type ? accumulator : accumulator.to(type);
      });
  return grad_input;
}

}  // namespace

TORCH_LIBRARY_IMPL(ssanet_ops, CUDA, m) {
  m.impl("scale_candidates", &scale_candidates_cuda);
  m.impl("multiscale_roi_crop", &multiscale_roi_crop_cuda);
  m.impl("_multiscale_roi_crop_backward", &multiscale_roi_crop_backward_cuda);
}

}  // namespace ssanet_ops::roi_crop
