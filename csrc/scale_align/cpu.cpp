// scale_correlation and scale_align on the CPU, in the Fourier form of common/scale_dft.h:
// a DFT over the scale axis into T planes, the T plane products as one batched real GEMM
// (at::bmm / at::baddbmm_, MKL underneath), then the inverse DFT fused with bias, max and argmax.
//
// The feature axis D is cut into chunks whose planes fit in a core's cache, and the chunks are
// shared out among the threads as tasks, each running the DFT and the GEMMs of its chunks on
// its own (ATen and MKL run serially inside a parallel region). So the planes never reach
// memory at full size, and a call has few parallel regions (each costs a wake-up of the thread
// pool): the tasks, and the epilogue. The forward's tasks keep partial products that the
// epilogue adds up; in the backward the chunks write disjoint columns of d phi or d weight.
// With fewer chunks than threads, one task runs and the DFT loops and MKL go parallel inside.
// No tensor of size N*C*S*D and no rolled copy is ever formed.
// float16 and bfloat16 run these float32 kernels (at::opmath_type, as on CUDA they accumulate
// in float32 and keep float32 planes): the inputs are converted once, the result at the end.

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <ATen/autocast_mode.h>
#include <ATen/ops/baddbmm.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "common/scale_dft.h"
#include "scale_align/arguments.h"

namespace ssanet_ops::scale_align {
namespace {

at::Tensor in_opmath(const at::Tensor& tensor) {
  return tensor.to(at::toOpMathType(tensor.scalar_type()));
}

// The twiddle tables, computed on the host: cos[k] and sin[k] = cos, sin(2*pi*k/S), one
// after the other in one buffer.
template <typename acc_t>
struct HostTwiddles {
  std::vector<acc_t> values;

  explicit HostTwiddles(int64_t S) : values(2 * S) {
    for (int64_t k = 0; k < S; ++k) {
      scale_dft::fill_twiddle(k, S, values.data(), values.data() + S);
    }
  }
  scale_dft::Twiddles<acc_t> view() const {
    const int64_t S = static_cast<int64_t>(values.size()) / 2;
    return {values.data(), values.data() + S, S};
  }
};

// Bytes of planes one chunk may hold (per task), about a core's L2 cache.
constexpr int64_t kChunkBytes = int64_t{2} << 20;
// Narrowest chunk: narrower GEMMs lose more to overhead than the cache saves.
constexpr int64_t kMinChunkWidth = 64;

// Rows per parallel work item, for rows of about `row_cost` multiply-adds each: enough that a
// thread's share outweighs the cost of waking it.
int64_t grain_for(int64_t row_cost) {
  return std::max<int64_t>(1, (int64_t{1} << 17) / std::max<int64_t>(1, row_cost));
}

// How the feature axis is cut: `count` chunks of `width` columns (the last may be narrower),
// run as `tasks` parallel tasks, task t taking chunks [t * count / tasks, (t+1) * count / tasks).
struct Chunking {
  int64_t width, count, tasks;

  int64_t first_chunk(int64_t task) const { return task * count / tasks; }
  int64_t begin(int64_t chunk) const { return chunk * width; }
};

// `bytes_per_column`: plane bytes per feature column; `partial_bytes`: memory each extra task
// needs for its own partial sums (the forward's products), which caps the task count.
Chunking plan_chunks(int64_t features, int64_t bytes_per_column, int64_t partial_bytes) {
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  int64_t width = std::min(
      std::max(kChunkBytes / std::max<int64_t>(bytes_per_column, 1), kMinChunkWidth),
      std::max<int64_t>(features, 1));
  int64_t count = (features + width - 1) / width;
  if (count > 1) {
    // Equal shares for the threads.
    count = (count + threads - 1) / threads * threads;
    width = (features + count - 1) / count;
    count = (features + width - 1) / width;
  }
  count = std::max<int64_t>(count, 1);
  int64_t tasks = std::min(threads, count);
  // Up to 256 MiB of partial sums, or as much as the inputs take anyway.
  const int64_t partial_budget =
      std::max<int64_t>(int64_t{256} << 20, bytes_per_column * features);
  if (tasks > 1 && partial_bytes > partial_budget / tasks) {
    tasks = 1;
  }
  return {std::max<int64_t>(width, 1), count, tasks};
}

// Runs body(task, first_column, width) for every chunk of `chunking`, the tasks in parallel;
// `task` indexes the task's own buffers.
// The body calls ATen ops (bmm) on worker threads, which do not inherit the caller's
// thread-local state: without it, under torch.inference_mode those ops would refuse to write
// the inference tensors the caller allocated.
template <typename Body>
void for_each_chunk(const Chunking& chunking, int64_t features, const Body& body) {
  const at::ThreadLocalState caller_state;
  at::parallel_for(0, chunking.tasks, 1, [&](int64_t task_begin, int64_t task_end) {
    const at::ThreadLocalStateGuard state_guard(caller_state);
    for (int64_t task = task_begin; task < task_end; ++task) {
      for (int64_t chunk = chunking.first_chunk(task); chunk < chunking.first_chunk(task + 1);
           ++chunk) {
        const int64_t first = chunking.begin(chunk);
        body(task, first, std::min(chunking.width, features - first));
      }
    }
  });
}

// Per-task buffers of `batches * rows` rows of the widest chunk.
at::Tensor task_buffers(const Chunking& chunking, int64_t batches, int64_t rows,
                        const at::Tensor& like) {
  return at::empty({chunking.tasks, batches * rows * chunking.width}, like.options());
}

// Task `task`'s buffer as [batches, rows, width] (width at most the chunk width).
at::Tensor planes_view(const at::Tensor& buffers, int64_t task, int64_t batches, int64_t rows,
                       int64_t width) {
  return buffers.select(0, task).narrow(0, 0, batches * rows * width).view({batches, rows, width});
}

// A short vector of neighbouring feature columns: the CPU's value type for the functions of
// common/scale_dft.h (GCC/Clang vector extension, 16 bytes: one SSE register).
template <typename scalar_t>
struct LanesOf;
template <>
struct LanesOf<float> {
  typedef float type __attribute__((vector_size(16)));
};
template <>
struct LanesOf<double> {
  typedef double type __attribute__((vector_size(16)));
};

// Lanes of `source` at element stride `stride` (a scalar when V is scalar_t).
template <typename V, typename scalar_t>
V load_lanes(const scalar_t* source, int64_t stride) {
  if constexpr (std::is_same_v<V, scalar_t>) {
    return *source;
  } else {
    V value;
    if (stride == 1) {
      std::memcpy(&value, source, sizeof(V));
    } else {
      for (int64_t lane = 0; lane < int64_t{sizeof(V) / sizeof(scalar_t)}; ++lane) {
        value[lane] = source[lane * stride];
      }
    }
    return value;
  }
}

template <typename scalar_t, typename V>
void store_lanes(scalar_t* target, const V& value) {
  std::memcpy(target, &value, sizeof(V));
}

// The sum of the lanes of `value` (itself when V is scalar_t).
template <typename scalar_t, typename V>
scalar_t sum_of_lanes(const V& value) {
  if constexpr (std::is_same_v<V, scalar_t>) {
    return value;
  } else {
    scalar_t total = 0;
    for (int64_t lane = 0; lane < int64_t{sizeof(V) / sizeof(scalar_t)}; ++lane) {
      total += value[lane];
    }
    return total;
  }
}

// Runs body.template operator()<V>(d) over the columns d of [0, width): in vectors of
// lanes while they last, then one by one (V = scalar_t).
template <typename scalar_t, typename Body>
void over_columns(int64_t width, const Body& body) {
  using V = typename LanesOf<scalar_t>::type;
  constexpr int64_t lanes = sizeof(V) / sizeof(scalar_t);
  int64_t d = 0;
  for (; d + lanes <= width; d += lanes) {
    body.template operator()<V>(d);
  }
  for (; d < width; ++d) {
    body.template operator()<scalar_t>(d);
  }
}

// planes[g, p, r, :width] for the columns first + :width of x [G, R, S, D] (any strides): the
// DFT over the scale axis, packed (scale_dft::planes), into a contiguous [G, T, R, width] buffer.
// With `squares`, also adds the sum of squares of those columns of x[g, r] to squares[g * R + r]
// (for the norms of scale_align's tie tolerance), while they are in cache.
template <typename scalar_t>
void analysis(const at::Tensor& x, int64_t first, int64_t width, scale_dft::Packing packing,
              const scale_dft::Twiddles<scalar_t>& tw, scalar_t* planes, scalar_t* squares) {
  const int64_t G = x.size(0), R = x.size(1), T = scale_dft::plane_count(tw.S);
  const int64_t stride_g = x.stride(0), stride_r = x.stride(1), stride_s = x.stride(2),
                stride_d = x.stride(3);
  const scalar_t* x_data = x.const_data_ptr<scalar_t>();
  at::parallel_for(0, G * R, grain_for(T * width), [&](int64_t row_begin, int64_t row_end) {
    for (int64_t row = row_begin; row < row_end; ++row) {
      const int64_t g = row / R, r = row % R;
      const scalar_t* source = x_data + g * stride_g + r * stride_r + first * stride_d;
      scalar_t* target = planes + (g * T * R + r) * width;
      const int64_t plane_stride = R * width;
      scalar_t row_squares = 0;
      over_columns<scalar_t>(width, [&]<typename V>(int64_t d) {
        // Captured by value: the stores cannot then be taken to change them.
        const scalar_t* column_start = source + d * stride_d;
        scalar_t* column_target = target + d;
        const auto column = [column_start, stride_s, stride_d](int64_t j) {
          return load_lanes<V>(column_start + j * stride_s, stride_d);
        };
        const auto out = [column_target, plane_stride](int64_t p, const V& value) {
          store_lanes(column_target + p * plane_stride, value);
        };
        scale_dft::planes<V>(packing, /*conjugate=*/false, column, tw, out);
        if (squares != nullptr) {
          V column_squares{};
          for (int64_t j = 0; j < tw.S; ++j) {
            const V value = column(j);
            column_squares += value * value;
          }
          row_squares += sum_of_lanes<scalar_t>(column_squares);
        }
      });
      if (squares != nullptr) {
        squares[row] += row_squares;
      }
    }
  });
}

// out[g, r, :, first + :width] = the inverse DFT (scale_dft::synthesis) of the T products
// products[g, :, r, :width] of a contiguous [G, T, R, width] buffer; `out` is a contiguous
// [G, R, S, D] tensor.
template <typename scalar_t>
void synthesis(const scalar_t* products, int64_t G, int64_t R, int64_t width, bool conjugate,
               const scale_dft::Twiddles<scalar_t>& tw, at::Tensor& out, int64_t first) {
  const int64_t S = tw.S, D = out.size(3), T = scale_dft::plane_count(S);
  scalar_t* out_data = out.mutable_data_ptr<scalar_t>();
  at::parallel_for(0, G * R, grain_for(T * width), [&](int64_t row_begin, int64_t row_end) {
    for (int64_t row = row_begin; row < row_end; ++row) {
      const int64_t g = row / R, r = row % R;
      const scalar_t* source = products + (g * T * R + r) * width;
      scalar_t* target = out_data + row * S * D + first;
      const int64_t plane_stride = R * width;
      over_columns<scalar_t>(width, [&]<typename V>(int64_t d) {
        const scalar_t* column_products = source + d;
        scalar_t* column_target = target + d;
        const auto K = [column_products, plane_stride](int64_t p) {
          return load_lanes<V>(column_products + p * plane_stride, 1);
        };
        const auto column = [column_target, D](int64_t j, const V& value) {
          store_lanes(column_target + j * D, value);
        };
        scale_dft::synthesis<V>(K, conjugate, tw, column);
      });
    }
  });
}

// The T plane products of the forward (phi planes times weight planes, summed over the feature
// axis) as partial sums per task, `partials` [tasks, G*T, N, C], which the epilogue adds up;
// with `with_squares`, also the sums of squares of the rows of phi and of weight, per task:
// `squares` [tasks, G*N + G*C] (phi's rows first).
struct ForwardProducts {
  at::Tensor partials, squares;
};

template <typename scalar_t>
ForwardProducts forward_products(const at::Tensor& phi, const at::Tensor& weight,
                                 const Shape& shape, const scale_dft::Twiddles<scalar_t>& tw,
                                 bool with_squares) {
  const int64_t G = shape.groups, N = shape.proposals, C = shape.classes;
  const int64_t D = shape.features, T = shape.planes();
  const int64_t batches = G * T;
  const auto squares_for = [&](int64_t tasks) {
    return with_squares ? at::zeros({tasks, G * (N + C)}, phi.options()) : at::Tensor();
  };
  if (D == 0) {
    // Sums over an empty feature axis.
    return {at::zeros({1, batches, N, C}, phi.options()), squares_for(1)};
  }
  const Chunking chunking = plan_chunks(D, batches * (N + C) * int64_t{sizeof(scalar_t)},
                                        batches * N * C * int64_t{sizeof(scalar_t)});
  at::Tensor partials = at::empty({chunking.tasks, batches, N, C}, phi.options());
  at::Tensor squares = squares_for(chunking.tasks);
  const at::Tensor phi_planes = task_buffers(chunking, batches, N, phi);
  const at::Tensor weight_planes = task_buffers(chunking, batches, C, phi);
  for_each_chunk(chunking, D, [&](int64_t task, int64_t first, int64_t width) {
    at::Tensor phi_view = planes_view(phi_planes, task, batches, N, width);
    at::Tensor weight_view = planes_view(weight_planes, task, batches, C, width);
    scalar_t* task_squares =
        with_squares ? squares.select(0, task).mutable_data_ptr<scalar_t>() : nullptr;
    analysis(phi, first, width, scale_dft::kPhiPacking, tw, phi_view.mutable_data_ptr<scalar_t>(),
             task_squares);
    analysis(weight, first, width, scale_dft::kWeightPacking, tw,
             weight_view.mutable_data_ptr<scalar_t>(),
             with_squares ? task_squares + G * N : nullptr);
    at::Tensor partial = partials.select(0, task);
    if (first == chunking.begin(chunking.first_chunk(task))) {
      at::bmm_out(partial, phi_view, weight_view.transpose(1, 2));  // the task's first chunk
    } else {
      partial.baddbmm_(phi_view, weight_view.transpose(1, 2));
    }
  });
  return {partials, squares};
}

// The gradient planes [G, T, N, C] of d phi (phi packing) or d weight (weight packing of the
// conjugate), from the gradient over shifts: grad [G, N, C, S] (dense, from scale_correlation)
// or grad [G, N, C] one-hot at `shift` [G, N, C] (scale_align).
template <typename scalar_t>
at::Tensor grad_planes(const at::Tensor& grad, const std::optional<at::Tensor>& shift,
                       const Shape& shape, bool for_weight,
                       const scale_dft::Twiddles<scalar_t>& tw) {
  const int64_t G = shape.groups, N = shape.proposals, C = shape.classes;
  const int64_t S = shape.scales, T = shape.planes();
  const scale_dft::Packing packing =
      for_weight ? scale_dft::kWeightPacking : scale_dft::kPhiPacking;
  at::Tensor planes = at::empty({G, T, N, C}, grad.options());
  scalar_t* planes_data = planes.mutable_data_ptr<scalar_t>();
  const scalar_t* grad_data = grad.const_data_ptr<scalar_t>();
  const at::Tensor shift_contiguous = shift.has_value() ? shift->contiguous() : at::Tensor();
  const int64_t* shift_data =
      shift.has_value() ? shift_contiguous.const_data_ptr<int64_t>() : nullptr;
  const int64_t grad_stride_g = grad.stride(0), grad_stride_n = grad.stride(1),
                grad_stride_c = grad.stride(2);
  const int64_t grad_stride_s = shift.has_value() ? 0 : grad.stride(3);
  at::parallel_for(0, G * N, grain_for(C * T),
                   [&](int64_t row_begin, int64_t row_end) {
    for (int64_t row = row_begin; row < row_end; ++row) {
      const int64_t g = row / N, n = row % N;
      for (int64_t c = 0; c < C; ++c) {
        const scalar_t* point = grad_data + g * grad_stride_g + n * grad_stride_n +
                                c * grad_stride_c;
        const auto out = [&](int64_t p, scalar_t value) {
          planes_data[((g * T + p) * N + n) * C + c] = value;
        };
        if (shift_data != nullptr) {
          const int64_t winner = shift_data[row * C + c];
          TORCH_CHECK(winner >= 0 && winner < S, "scale_align backward: shift values must be in "
                      "[0, ", S, "), got ", winner);
          scale_dft::one_hot_planes<scalar_t>(packing, for_weight, *point, winner, tw, out);
        } else {
          const auto column = [&](int64_t j) { return point[j * grad_stride_s]; };
          scale_dft::planes<scalar_t>(packing, for_weight, column, tw, out);
        }
      }
    }
  });
  return planes;
}

// ---- forward ops ----

// The sum of the tasks' partial products at `point` (forward_products).
template <typename scalar_t>
scalar_t sum_of_partials(const scalar_t* point, int64_t tasks, int64_t task_stride) {
  scalar_t total = point[0];
  for (int64_t task = 1; task < tasks; ++task) {
    total += point[task * task_stride];
  }
  return total;
}

// The epilogues read the partial products [tasks, G*T, N, C] of forward_products, and
// align_epilogue the norms of its `squares`.
template <typename scalar_t>
std::tuple<at::Tensor, at::Tensor> align_epilogue(const ForwardProducts& forward,
                                                  const Shape& shape,
                                                  const std::optional<at::Tensor>& bias,
                                                  const scale_dft::Twiddles<scalar_t>& tw,
                                                  const at::Tensor& like) {
  const int64_t G = shape.groups, N = shape.proposals, C = shape.classes;
  const int64_t S = shape.scales, T = shape.planes();
  const at::Tensor& products = forward.partials;
  // ||phi[g, n]|| at g * N + n, then ||weight[g, c]|| at G * N + g * C + c.
  const at::Tensor norms = forward.squares.sum(0).sqrt_();
  const scalar_t* phi_norms = norms.const_data_ptr<scalar_t>();
  const scalar_t* weight_norms = phi_norms + G * N;
  at::Tensor logits = at::empty({G, N, C}, like.options());
  at::Tensor shift = at::empty({G, N, C}, like.options().dtype(at::kLong));
  const scalar_t* products_data = products.const_data_ptr<scalar_t>();
  const int64_t tasks = products.size(0), task_stride = products.stride(0);
  const at::Tensor bias_grouped = bias.has_value() ? bias->reshape({G, C}) : at::Tensor();
  const scalar_t* bias_data =
      bias.has_value() ? bias_grouped.const_data_ptr<scalar_t>() : nullptr;
  const int64_t bias_stride_g = bias.has_value() ? bias_grouped.stride(0) : 0;
  const int64_t bias_stride_c = bias.has_value() ? bias_grouped.stride(1) : 0;
  scalar_t* logits_data = logits.mutable_data_ptr<scalar_t>();
  int64_t* shift_data = shift.mutable_data_ptr<int64_t>();
  at::parallel_for(0, G * N, grain_for(C * S * T),
                   [&](int64_t row_begin, int64_t row_end) {
    for (int64_t row = row_begin; row < row_end; ++row) {
      const int64_t g = row / N, n = row % N;
      for (int64_t c = 0; c < C; ++c) {
        const scalar_t* point = products_data + (g * T * N + n) * C + c;
        const auto K = [&](int64_t p) {
          return sum_of_partials(point + p * N * C, tasks, task_stride);
        };
        const scalar_t tolerance =
            scale_dft::tie_tolerance(S, phi_norms[row], weight_norms[g * C + c]);
        scalar_t response;
        shift_data[row * C + c] = scale_dft::align_point(K, tw, tolerance, response);
        logits_data[row * C + c] =
            bias_data != nullptr ? response + bias_data[g * bias_stride_g + c * bias_stride_c]
                                 : response;
      }
    }
  });
  return {logits, shift};
}

template <typename scalar_t>
at::Tensor correlation_epilogue(const ForwardProducts& forward, const Shape& shape,
                                const scale_dft::Twiddles<scalar_t>& tw, const at::Tensor& like) {
  const int64_t G = shape.groups, N = shape.proposals, C = shape.classes;
  const int64_t S = shape.scales, T = shape.planes();
  const at::Tensor& products = forward.partials;
  at::Tensor corr = at::empty({G, N, C, S}, like.options());
  const scalar_t* products_data = products.const_data_ptr<scalar_t>();
  const int64_t tasks = products.size(0), task_stride = products.stride(0);
  scalar_t* corr_data = corr.mutable_data_ptr<scalar_t>();
  at::parallel_for(0, G * N, grain_for(C * S * T),
                   [&](int64_t row_begin, int64_t row_end) {
    for (int64_t row = row_begin; row < row_end; ++row) {
      const int64_t g = row / N, n = row % N;
      for (int64_t c = 0; c < C; ++c) {
        const scalar_t* point = products_data + (g * T * N + n) * C + c;
        const auto K = [&](int64_t p) {
          return sum_of_partials(point + p * N * C, tasks, task_stride);
        };
        scalar_t* target = corr_data + (row * C + c) * S;
        const auto out = [&](int64_t r, scalar_t value) { target[r] = value; };
        scale_dft::synthesis<scalar_t>(K, /*conjugate=*/false, tw, out);
      }
    }
  });
  return corr;
}

std::tuple<at::Tensor, at::Tensor> scale_align_cpu(const at::Tensor& phi,
                                                   const at::Tensor& weight,
                                                   const std::optional<at::Tensor>& bias) {
  constexpr const char* op = "scale_align";
  const Shape shape = check_inputs(phi, weight, op);
  check_bias(bias, weight, shape, op);
  check_floating_dtype(phi, "phi", op);
  if (is_reduced_precision(phi.scalar_type())) {
    auto [logits, shift] = scale_align_cpu(
        in_opmath(phi), in_opmath(weight),
        bias.has_value() ? std::optional<at::Tensor>(in_opmath(*bias)) : std::nullopt);
    return {logits.to(phi.scalar_type()), shift};
  }
  at::Tensor logits, shift;
  AT_DISPATCH_FLOATING_TYPES(phi.scalar_type(), "scale_align_cpu", [&] {
    const HostTwiddles<scalar_t> twiddles(shape.scales);
    const ForwardProducts products = forward_products<scalar_t>(
        as_grouped(phi), as_grouped(weight), shape, twiddles.view(), /*with_squares=*/true);
    std::tie(logits, shift) =
        align_epilogue<scalar_t>(products, shape, bias, twiddles.view(), phi);
  });
  return {ungroup_like(logits, shape), ungroup_like(shift, shape)};
}

at::Tensor scale_correlation_cpu(const at::Tensor& phi, const at::Tensor& weight) {
  constexpr const char* op = "scale_correlation";
  const Shape shape = check_inputs(phi, weight, op);
  check_floating_dtype(phi, "phi", op);
  if (is_reduced_precision(phi.scalar_type())) {
    return scale_correlation_cpu(in_opmath(phi), in_opmath(weight)).to(phi.scalar_type());
  }
  at::Tensor corr;
  AT_DISPATCH_FLOATING_TYPES(phi.scalar_type(), "scale_correlation_cpu", [&] {
    const HostTwiddles<scalar_t> twiddles(shape.scales);
    const ForwardProducts products = forward_products<scalar_t>(
        as_grouped(phi), as_grouped(weight), shape, twiddles.view(), /*with_squares=*/false);
    corr = correlation_epilogue<scalar_t>(products, shape, twiddles.view(), phi);
  });
  return ungroup_like(corr, shape);
}

// ---- backward ops (docs/operators.md section 3, eq. 8) ----

// d phi [G?, N, S, D] (for_weight false: the gradient planes times the weight planes) or
// d weight [G?, C, S, D] (for_weight true: the gradient planes times the phi planes), chunk by
// chunk of the feature axis. `other` is the saved input: weight for d phi, phi for d weight.
at::Tensor backward_cpu(const at::Tensor& grad, const std::optional<at::Tensor>& shift,
                        const at::Tensor& other, bool for_weight, const char* op) {
  const Shape shape = check_grad(grad, shift, other, /*other_is_weight=*/!for_weight, op);
  check_floating_dtype(grad, "grad", op);
  if (is_reduced_precision(grad.scalar_type())) {
    return backward_cpu(in_opmath(grad), shift, in_opmath(other), for_weight, op)
        .to(grad.scalar_type());
  }
  const bool grouped = shape.grouped;
  const at::Tensor grad4 = grouped ? grad : grad.unsqueeze(0);
  const std::optional<at::Tensor> shift4 =
      shift.has_value() && !grouped ? std::optional<at::Tensor>(shift->unsqueeze(0)) : shift;
  const at::Tensor other4 = as_grouped(other);
  const int64_t G = shape.groups, N = shape.proposals, C = shape.classes;
  const int64_t S = shape.scales, D = shape.features, T = shape.planes();
  // Rows of the input planes (the other input) and of the result.
  const int64_t other_rows = for_weight ? N : C;
  const int64_t result_rows = for_weight ? C : N;
  at::Tensor result = at::empty({G, result_rows, S, D}, grad.options());
  if (result.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "scale_align_backward_cpu", [&] {
      const HostTwiddles<scalar_t> twiddles(S);
      const scale_dft::Twiddles<scalar_t> tw = twiddles.view();
      const at::Tensor planes = grad_planes<scalar_t>(grad4, shift4, shape, for_weight, tw);
      const int64_t batches = G * T;
      // [G*T, result_rows, other_rows]: the gradient planes as the GEMM's left operand.
      const at::Tensor lhs = for_weight ? planes.view({batches, N, C}).transpose(1, 2)
                                        : planes.view({batches, N, C});
      const Chunking chunking =
          plan_chunks(D, batches * (N + C) * int64_t{sizeof(scalar_t)}, 0);
      const at::Tensor input_planes = task_buffers(chunking, batches, other_rows, grad);
      const at::Tensor products = task_buffers(chunking, batches, result_rows, grad);
      for_each_chunk(chunking, D, [&](int64_t task, int64_t first, int64_t width) {
        at::Tensor input_view = planes_view(input_planes, task, batches, other_rows, width);
        at::Tensor products_view = planes_view(products, task, batches, result_rows, width);
        analysis<scalar_t>(other4, first, width,
                 for_weight ? scale_dft::kPhiPacking : scale_dft::kWeightPacking, tw,
                 input_view.mutable_data_ptr<scalar_t>(), /*squares=*/nullptr);
        at::bmm_out(products_view, lhs, input_view);
        synthesis(products_view.const_data_ptr<scalar_t>(), G, result_rows, width,
                  /*conjugate=*/for_weight, tw, result, first);
      });
    });
  }
  return grouped ? result : result.squeeze(0);
}

at::Tensor scale_correlation_backward_phi_cpu(const at::Tensor& grad, const at::Tensor& weight) {
  return backward_cpu(grad, std::nullopt, weight, false, "scale_correlation backward");
}

at::Tensor scale_correlation_backward_weight_cpu(const at::Tensor& grad, const at::Tensor& phi) {
  return backward_cpu(grad, std::nullopt, phi, true, "scale_correlation backward");
}

at::Tensor scale_align_backward_phi_cpu(const at::Tensor& grad, const at::Tensor& shift,
                                        const at::Tensor& weight) {
  return backward_cpu(grad, shift, weight, false, "scale_align backward");
}

at::Tensor scale_align_backward_weight_cpu(const at::Tensor& grad, const at::Tensor& shift,
                                           const at::Tensor& phi) {
  return backward_cpu(grad, shift, phi, true, "scale_align backward");
}

// ---- autocast (both device types; this file is compiled in every build) ----
//
// Like a linear layer: the floating inputs (float64 aside) are cast to the autocast dtype of
// their device type, float16 or bfloat16, which the kernels of both devices take.

template <c10::DeviceType device_type, c10::DispatchKey autocast_key>
at::Tensor scale_correlation_autocast(const at::Tensor& phi, const at::Tensor& weight) {
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(autocast_key);
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("ssanet_ops::scale_correlation", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&)>();
  const at::ScalarType dtype = at::autocast::get_autocast_dtype(device_type);
  return op.call(at::autocast::cached_cast(dtype, phi, device_type),
                 at::autocast::cached_cast(dtype, weight, device_type));
}

template <c10::DeviceType device_type, c10::DispatchKey autocast_key>
std::tuple<at::Tensor, at::Tensor> scale_align_autocast(const at::Tensor& phi,
                                                        const at::Tensor& weight,
                                                        const std::optional<at::Tensor>& bias) {
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(autocast_key);
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("ssanet_ops::scale_align", "")
          .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                    const std::optional<at::Tensor>&)>();
  const at::ScalarType dtype = at::autocast::get_autocast_dtype(device_type);
  return op.call(at::autocast::cached_cast(dtype, phi, device_type),
                 at::autocast::cached_cast(dtype, weight, device_type),
                 at::autocast::cached_cast(dtype, bias, device_type));
}

}  // namespace

TORCH_LIBRARY_IMPL(ssanet_ops, CPU, m) {
  m.impl("scale_correlation", &scale_correlation_cpu);
  m.impl("scale_align", &scale_align_cpu);
  m.impl("_scale_correlation_backward_phi", &scale_correlation_backward_phi_cpu);
  m.impl("_scale_correlation_backward_weight", &scale_correlation_backward_weight_cpu);
  m.impl("_scale_align_backward_phi", &scale_align_backward_phi_cpu);
  m.impl("_scale_align_backward_weight", &scale_align_backward_weight_cpu);
}

TORCH_LIBRARY_IMPL(ssanet_ops, AutocastCPU, m) {
  m.impl("scale_correlation",
         &scale_correlation_autocast<c10::DeviceType::CPU, c10::DispatchKey::AutocastCPU>);
  m.impl("scale_align",
         &scale_align_autocast<c10::DeviceType::CPU, c10::DispatchKey::AutocastCPU>);
}

TORCH_LIBRARY_IMPL(ssanet_ops, AutocastCUDA, m) {
  m.impl("scale_correlation",
         &scale_correlation_autocast<c10::DeviceType::CUDA, c10::DispatchKey::AutocastCUDA>);
  m.impl("scale_align",
         &scale_align_autocast<c10::DeviceType::CUDA, c10::DispatchKey::AutocastCUDA>);
}

}  // namespace ssanet_ops::scale_align
