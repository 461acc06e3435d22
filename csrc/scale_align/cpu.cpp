// scale_correlation and scale_align on the CPU, in the Fourier form of common/scale_dft.h:
// a DFT over the scale axis into T planes, the T plane products as one batched real GEMM
// (ATen's CPU bmm, MKL underneath), then the inverse DFT fused with bias, max and argmax.
//
// The feature axis D is cut into chunks whose planes fit in a core's cache, and the chunks are
// shared out among the threads as tasks, each running the DFT and the GEMMs of its chunks on
// its own (ATen and MKL run serially inside a parallel region). So the planes never reach
// memory at full size, and a call has few parallel regions (each costs a wake-up of the thread
// pool): the tasks, and the epilogue. The forward's tasks keep partial products that the
// epilogue adds up; in the backward the chunks write disjoint columns of d phi or d weight.
// With fewer chunks than threads, one task runs and the DFT loops and MKL go parallel inside.
// No tensor of size N*C*S*D and no rolled copy is ever formed.
// The tasks run on torch's worker threads, which do not share the caller's thread-local state
// (inference mode, dispatch keys): they call no torch operator through the dispatcher, only
// the GEMM's backend C function (aoti_torch_cpu_bmm_out), which runs ATen's CPU kernel
// directly; the tensors and views they use are made before the loop, and an error they meet
// is raised after it (issue 11).
// float16 and bfloat16 run these float32 kernels (opmath_t, as on CUDA they accumulate in
// float32 and keep float32 planes): the inputs are converted once, the result at the end.
// Autocast is registered in Python (ssanet_ops/_autocast.py).

#include <torch/csrc/inductor/aoti_torch/generated/c_shim_cpu.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <exception>
#include <string>
#include <type_traits>
#include <vector>

#include "common/scale_dft.h"
#include "common/strides.h"
#include "scale_align/arguments.h"

namespace ssanet_ops::scale_align {
namespace {

// float16 and bfloat16 as float32 (opmath_t); float32 and float64 as they are.
Tensor in_opmath(const Tensor& tensor) {
  return is_reduced_precision(tensor.scalar_type())
             ? torch::stable::to(tensor, ScalarType::Float)
             : tensor;
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
// needs for its own partial sums (the forward's products and the latest one to add), which
// caps the task count.
Chunking plan_chunks(int64_t features, int64_t bytes_per_column, int64_t partial_bytes) {
  const int64_t threads = std::max<int64_t>(1, torch::stable::get_num_threads());
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
// `task` indexes the task's own buffers. An exception must not cross torch's C parallel-for
// function: the first one a body throws (a GEMM's C function that failed) ends the tasks, and
// is raised again after the loop, its message prefixed with `op`.
template <typename Body>
void for_each_chunk(const Chunking& chunking, int64_t features, const char* op,
                    const Body& body) {
  std::atomic<bool> failed{false};
  std::string failure;  // written by the one task that set `failed` first
  parallel_for(0, chunking.tasks, 1, [&](int64_t task_begin, int64_t task_end) {
    try {
      for (int64_t task = task_begin; task < task_end && !failed; ++task) {
        for (int64_t chunk = chunking.first_chunk(task); chunk < chunking.first_chunk(task + 1);
             ++chunk) {
          const int64_t first = chunking.begin(chunk);
          body(task, first, std::min(chunking.width, features - first));
        }
      }
    } catch (const std::exception& error) {
      if (!failed.exchange(true)) {
        failure = error.what();
      }
    }
  });
  SSANET_CHECK(!failed, op, ": ", failure);
}

// Per-task buffers of `batches * rows` rows of the widest chunk, and each task's buffer as the
// [batches, rows, width] operand of a chunk's GEMM (or its transpose [batches, width, rows]).
// The views are made on the calling thread (the tasks run no dispatcher call): every chunk of
// a task but the last chunk of all has the full width, so a task needs one view, and the last
// chunk, which may be narrower, its own.
template <typename scalar_t>
class TaskPlanes {
 public:
  TaskPlanes(const Chunking& chunking, int64_t features, int64_t batches, int64_t rows,
             bool transposed, const Tensor& like)
      : buffers_(empty_like_device(like, {chunking.tasks, batches * rows * chunking.width})),
        data_(buffers_.mutable_data_ptr<scalar_t>()),
        task_stride_(batches * rows * chunking.width),
        full_width_(chunking.width) {
    for (int64_t task = 0; task < chunking.tasks; ++task) {
      full_.push_back(make_view(task, batches, rows, chunking.width, transposed));
    }
    const int64_t last_width = features - chunking.begin(chunking.count - 1);
    last_ = make_view(chunking.tasks - 1, batches, rows, last_width, transposed);
  }

  scalar_t* data(int64_t task) const { return data_ + task * task_stride_; }

  // The operand of a chunk of `width` columns run by `task`.
  AtenTensorHandle operand(int64_t task, int64_t width) const {
    return (width == full_width_ ? full_[task] : last_).get();
  }

 private:
  Tensor make_view(int64_t task, int64_t batches, int64_t rows, int64_t width,
                   bool transposed) const {
    Tensor task_buffer = torch::stable::select(buffers_, 0, task);
    const Tensor view = torch::stable::view(
        torch::stable::narrow(task_buffer, 0, 0, batches * rows * width), {batches, rows, width});
    return transposed ? torch::stable::transpose(view, 1, 2) : view;
  }

  Tensor buffers_;
  scalar_t* data_;
  int64_t task_stride_, full_width_;
  std::vector<Tensor> full_;
  Tensor last_;
};

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

// A [G, R, S, D] input of any strides, read on the calling thread for the tasks (whose bodies
// ask torch nothing): its data, G, R, and its strides of (g, r, s, d) in the fields (n, c, h, w).
template <typename scalar_t>
struct Input4 {
  const scalar_t* data;
  int64_t G, R;
  Strides4 strides;

  explicit Input4(const Tensor& x)
      : data(x.const_data_ptr<scalar_t>()), G(x.size(0)), R(x.size(1)), strides(strides_of(x)) {}
};

// planes[g, p, r, :width] for the columns first + :width of x [G, R, S, D]: the DFT over the
// scale axis, packed (scale_dft::planes), into a contiguous [G, T, R, width] buffer.
// With `squares`, also adds the sum of squares of those columns of x[g, r] to squares[g * R + r]
// (for the norms of scale_align's tie tolerance), while they are in cache.
template <typename scalar_t>
void analysis(const Input4<scalar_t>& x, int64_t first, int64_t width,
              scale_dft::Packing packing, const scale_dft::Twiddles<scalar_t>& tw,
              scalar_t* planes, scalar_t* squares) {
  const int64_t G = x.G, R = x.R, T = scale_dft::plane_count(tw.S);
  const int64_t stride_g = x.strides.n, stride_r = x.strides.c, stride_s = x.strides.h,
                stride_d = x.strides.w;
  const scalar_t* x_data = x.data;
  parallel_for(0, G * R, grain_for(T * width), [&](int64_t row_begin, int64_t row_end) {
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
// products[g, :, r, :width] of a contiguous [G, T, R, width] buffer; `out_data` is a contiguous
// [G, R, S, D] tensor's.
template <typename scalar_t>
void synthesis(const scalar_t* products, int64_t G, int64_t R, int64_t width, bool conjugate,
               const scale_dft::Twiddles<scalar_t>& tw, scalar_t* out_data, int64_t D,
               int64_t first) {
  const int64_t S = tw.S, T = scale_dft::plane_count(S);
  parallel_for(0, G * R, grain_for(T * width), [&](int64_t row_begin, int64_t row_end) {
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
  Tensor partials, squares;
};

template <typename scalar_t>
ForwardProducts forward_products(const Tensor& phi, const Tensor& weight, const Shape& shape,
                                 const scale_dft::Twiddles<scalar_t>& tw, bool with_squares,
                                 const char* op) {
  const int64_t G = shape.groups, N = shape.proposals, C = shape.classes;
  const int64_t D = shape.features, T = shape.planes();
  const int64_t batches = G * T;
  const auto squares_for = [&](int64_t tasks) {
    return with_squares ? zeros_like_device(phi, {tasks, G * (N + C)}) : Tensor();
  };
  if (D == 0) {
    // Sums over an empty feature axis.
    return {zeros_like_device(phi, {1, batches, N, C}), squares_for(1)};
  }
  // Each task keeps its partial sums, and the product of its latest chunk to add to them.
  const int64_t products_size = batches * N * C;
  const Chunking chunking = plan_chunks(D, batches * (N + C) * int64_t{sizeof(scalar_t)},
                                        2 * products_size * int64_t{sizeof(scalar_t)});
  const Tensor partials = empty_like_device(phi, {chunking.tasks, batches, N, C});
  // Only a task of more than one chunk adds products to its partial sums.
  const bool adds = chunking.count > chunking.tasks;
  const Tensor latest = empty_like_device(phi, {adds ? chunking.tasks : 0, batches, N, C});
  std::vector<Tensor> task_partials, task_latest;
  for (int64_t task = 0; task < chunking.tasks; ++task) {
    task_partials.push_back(torch::stable::select(partials, 0, task));
    if (adds) {
      task_latest.push_back(torch::stable::select(latest, 0, task));
    }
  }
  scalar_t* partials_data = partials.mutable_data_ptr<scalar_t>();
  const scalar_t* latest_data = latest.const_data_ptr<scalar_t>();
  const Tensor squares = squares_for(chunking.tasks);
  scalar_t* squares_data = with_squares ? squares.mutable_data_ptr<scalar_t>() : nullptr;
  const TaskPlanes<scalar_t> phi_planes(chunking, D, batches, N, /*transposed=*/false, phi);
  const TaskPlanes<scalar_t> weight_planes(chunking, D, batches, C, /*transposed=*/true, phi);
  const Input4<scalar_t> phi_input(phi), weight_input(weight);
  for_each_chunk(chunking, D, op, [&](int64_t task, int64_t first, int64_t width) {
    scalar_t* task_squares = with_squares ? squares_data + task * G * (N + C) : nullptr;
    analysis(phi_input, first, width, scale_dft::kPhiPacking, tw, phi_planes.data(task),
             task_squares);
    analysis(weight_input, first, width, scale_dft::kWeightPacking, tw, weight_planes.data(task),
             with_squares ? task_squares + G * N : nullptr);
    const AtenTensorHandle lhs = phi_planes.operand(task, width);
    const AtenTensorHandle rhs = weight_planes.operand(task, width);  // [batches, width, C]
    if (first == chunking.begin(chunking.first_chunk(task))) {  // the task's first chunk
      SSANET_SHIM_CHECK(aoti_torch_cpu_bmm_out(task_partials[task].get(), lhs, rhs));
      return;
    }
    // Not baddbmm (beta = 1): its CPU function copies its input to its output through the
    // dispatcher, and on a worker thread, which is not in the caller's inference mode, that
    // copy refuses the inference tensors the caller allocated.
    SSANET_SHIM_CHECK(aoti_torch_cpu_bmm_out(task_latest[task].get(), lhs, rhs));
    scalar_t* __restrict sums = partials_data + task * products_size;
    const scalar_t* __restrict product = latest_data + task * products_size;
    for (int64_t i = 0; i < products_size; ++i) {
      sums[i] += product[i];
    }
  });
  return {partials, squares};
}

// The gradient planes [G, T, N, C] of d phi (phi packing) or d weight (weight packing of the
// conjugate), from the gradient over shifts: grad [G, N, C, S] (dense, from scale_correlation)
// or grad [G, N, C] one-hot at `shift` [G, N, C] (scale_align).
template <typename scalar_t>
Tensor grad_planes(const Tensor& grad, const std::optional<Tensor>& shift, const Shape& shape,
                   bool for_weight, const scale_dft::Twiddles<scalar_t>& tw) {
  const int64_t G = shape.groups, N = shape.proposals, C = shape.classes;
  const int64_t S = shape.scales, T = shape.planes();
  const scale_dft::Packing packing =
      for_weight ? scale_dft::kWeightPacking : scale_dft::kPhiPacking;
  Tensor planes = empty_like_device(grad, {G, T, N, C});
  scalar_t* planes_data = planes.mutable_data_ptr<scalar_t>();
  const scalar_t* grad_data = grad.const_data_ptr<scalar_t>();
  const Tensor shift_contiguous =
      shift.has_value() ? torch::stable::contiguous(*shift) : Tensor();
  const int64_t* shift_data =
      shift.has_value() ? shift_contiguous.const_data_ptr<int64_t>() : nullptr;
  if (shift_data != nullptr) {
    // Checked before the loop: an exception must not cross torch's C parallel-for function.
    const int64_t* end = shift_data + G * N * C;
    const int64_t* outside =
        std::find_if(shift_data, end, [S](int64_t winner) { return winner < 0 || winner >= S; });
    SSANET_CHECK(outside == end, "scale_align backward: shift values must be in [0, ", S,
                 "), got ", *outside);
  }
  const int64_t grad_stride_g = grad.stride(0), grad_stride_n = grad.stride(1),
                grad_stride_c = grad.stride(2);
  const int64_t grad_stride_s = shift.has_value() ? 0 : grad.stride(3);
  parallel_for(0, G * N, grain_for(C * T), [&](int64_t row_begin, int64_t row_end) {
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
std::tuple<Tensor, Tensor> align_epilogue(const ForwardProducts& forward, const Shape& shape,
                                          const std::optional<Tensor>& bias,
                                          const scale_dft::Twiddles<scalar_t>& tw,
                                          const Tensor& like) {
  const int64_t G = shape.groups, N = shape.proposals, C = shape.classes;
  const int64_t S = shape.scales, T = shape.planes();
  const Tensor& products = forward.partials;
  // ||phi[g, n]|| at g * N + n, then ||weight[g, c]|| at G * N + g * C + c: the square roots
  // of the tasks' sums of squares, added up.
  const int64_t rows = G * (N + C);
  const scalar_t* squares = forward.squares.const_data_ptr<scalar_t>();
  const int64_t square_tasks = forward.squares.size(0);
  std::vector<scalar_t> norms(rows);
  for (int64_t row = 0; row < rows; ++row) {
    norms[row] = std::sqrt(sum_of_partials(squares + row, square_tasks, rows));
  }
  const scalar_t* phi_norms = norms.data();
  const scalar_t* weight_norms = phi_norms + G * N;
  Tensor logits = empty_like_device(like, {G, N, C});
  Tensor shift = empty_like_device(like, {G, N, C}, ScalarType::Long);
  const scalar_t* products_data = products.const_data_ptr<scalar_t>();
  const int64_t tasks = products.size(0), task_stride = products.stride(0);
  const Tensor bias_grouped = bias.has_value() ? torch::stable::reshape(*bias, {G, C}) : Tensor();
  const scalar_t* bias_data =
      bias.has_value() ? bias_grouped.const_data_ptr<scalar_t>() : nullptr;
  const int64_t bias_stride_g = bias.has_value() ? bias_grouped.stride(0) : 0;
  const int64_t bias_stride_c = bias.has_value() ? bias_grouped.stride(1) : 0;
  scalar_t* logits_data = logits.mutable_data_ptr<scalar_t>();
  int64_t* shift_data = shift.mutable_data_ptr<int64_t>();
  parallel_for(0, G * N, grain_for(C * S * T), [&](int64_t row_begin, int64_t row_end) {
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
Tensor correlation_epilogue(const ForwardProducts& forward, const Shape& shape,
                            const scale_dft::Twiddles<scalar_t>& tw, const Tensor& like) {
  const int64_t G = shape.groups, N = shape.proposals, C = shape.classes;
  const int64_t S = shape.scales, T = shape.planes();
  const Tensor& products = forward.partials;
  Tensor corr = empty_like_device(like, {G, N, C, S});
  const scalar_t* products_data = products.const_data_ptr<scalar_t>();
  const int64_t tasks = products.size(0), task_stride = products.stride(0);
  scalar_t* corr_data = corr.mutable_data_ptr<scalar_t>();
  parallel_for(0, G * N, grain_for(C * S * T), [&](int64_t row_begin, int64_t row_end) {
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

// THO_DISPATCH_V2 over float32 and float64, the CPU kernels' own types.
#define DISPATCH_FLOAT_OR_DOUBLE(TYPE, NAME, ...) \
  THO_DISPATCH_V2(TYPE, NAME, AT_WRAP(__VA_ARGS__), AT_EXPAND(AT_FLOATING_TYPES))

std::tuple<Tensor, Tensor> scale_align_cpu(const Tensor& phi, const Tensor& weight,
                                           const std::optional<Tensor>& bias) {
  constexpr const char* op = "scale_align";
  const Shape shape = check_inputs(phi, weight, op);
  check_bias(bias, weight, shape, op);
  check_floating_dtype(phi, "phi", op);
  if (is_reduced_precision(phi.scalar_type())) {
    auto [logits, shift] = scale_align_cpu(
        in_opmath(phi), in_opmath(weight),
        bias.has_value() ? std::optional<Tensor>(in_opmath(*bias)) : std::nullopt);
    return {torch::stable::to(logits, phi.scalar_type()), shift};
  }
  Tensor logits, shift;
  DISPATCH_FLOAT_OR_DOUBLE(phi.scalar_type(), "scale_align_cpu", [&] {
    const HostTwiddles<scalar_t> twiddles(shape.scales);
    const ForwardProducts products = forward_products<scalar_t>(
        as_grouped(phi), as_grouped(weight), shape, twiddles.view(), /*with_squares=*/true, op);
    std::tie(logits, shift) =
        align_epilogue<scalar_t>(products, shape, bias, twiddles.view(), phi);
  });
  return {ungroup_like(logits, shape), ungroup_like(shift, shape)};
}

Tensor scale_correlation_cpu(const Tensor& phi, const Tensor& weight) {
  constexpr const char* op = "scale_correlation";
  const Shape shape = check_inputs(phi, weight, op);
  check_floating_dtype(phi, "phi", op);
  if (is_reduced_precision(phi.scalar_type())) {
    return torch::stable::to(scale_correlation_cpu(in_opmath(phi), in_opmath(weight)),
                             phi.scalar_type());
  }
  Tensor corr;
  DISPATCH_FLOAT_OR_DOUBLE(phi.scalar_type(), "scale_correlation_cpu", [&] {
    const HostTwiddles<scalar_t> twiddles(shape.scales);
    const ForwardProducts products = forward_products<scalar_t>(
        as_grouped(phi), as_grouped(weight), shape, twiddles.view(), /*with_squares=*/false, op);
    corr = correlation_epilogue<scalar_t>(products, shape, twiddles.view(), phi);
  });
  return ungroup_like(corr, shape);
}

// ---- backward ops (docs/operators.md section 3, eq. 8) ----

// d phi [G?, N, S, D] (for_weight false: the gradient planes times the weight planes) or
// d weight [G?, C, S, D] (for_weight true: the gradient planes times the phi planes), chunk by
// chunk of the feature axis. `other` is the saved input: weight for d phi, phi for d weight.
Tensor backward_cpu(const Tensor& grad, const std::optional<Tensor>& shift, const Tensor& other,
                    bool for_weight, const char* op) {
  const Shape shape = check_grad(grad, shift, other, /*other_is_weight=*/!for_weight, op);
  check_floating_dtype(grad, "grad", op);
  if (is_reduced_precision(grad.scalar_type())) {
    return torch::stable::to(
        backward_cpu(in_opmath(grad), shift, in_opmath(other), for_weight, op),
        grad.scalar_type());
  }
  const bool grouped = shape.grouped;
  const Tensor grad4 = grouped ? grad : torch::stable::unsqueeze(grad, 0);
  const std::optional<Tensor> shift4 =
      shift.has_value() && !grouped ? std::optional<Tensor>(torch::stable::unsqueeze(*shift, 0))
                                    : shift;
  const Tensor other4 = as_grouped(other);
  const int64_t G = shape.groups, N = shape.proposals, C = shape.classes;
  const int64_t S = shape.scales, D = shape.features, T = shape.planes();
  // Rows of the input planes (the other input) and of the result.
  const int64_t other_rows = for_weight ? N : C;
  const int64_t result_rows = for_weight ? C : N;
  Tensor result = empty_like_device(grad, {G, result_rows, S, D});
  if (result.numel() > 0) {
    DISPATCH_FLOAT_OR_DOUBLE(grad.scalar_type(), "scale_align_backward_cpu", [&] {
      const HostTwiddles<scalar_t> twiddles(S);
      const scale_dft::Twiddles<scalar_t> tw = twiddles.view();
      const Tensor planes = grad_planes<scalar_t>(grad4, shift4, shape, for_weight, tw);
      const int64_t batches = G * T;
      // [G*T, result_rows, other_rows]: the gradient planes as the GEMM's left operand.
      const Tensor planes3 = torch::stable::view(planes, {batches, N, C});
      const Tensor lhs = for_weight ? torch::stable::transpose(planes3, 1, 2) : planes3;
      const Chunking chunking =
          plan_chunks(D, batches * (N + C) * int64_t{sizeof(scalar_t)}, 0);
      const TaskPlanes<scalar_t> input_planes(chunking, D, batches, other_rows,
                                              /*transposed=*/false, grad);
      const TaskPlanes<scalar_t> products(chunking, D, batches, result_rows,
                                          /*transposed=*/false, grad);
      const Input4<scalar_t> other_input(other4);
      scalar_t* result_data = result.mutable_data_ptr<scalar_t>();
      for_each_chunk(chunking, D, op, [&](int64_t task, int64_t first, int64_t width) {
        analysis<scalar_t>(other_input, first, width,
                           for_weight ? scale_dft::kPhiPacking : scale_dft::kWeightPacking, tw,
                           input_planes.data(task), /*squares=*/nullptr);
        SSANET_SHIM_CHECK(aoti_torch_cpu_bmm_out(
            products.operand(task, width), lhs.get(), input_planes.operand(task, width)));
        synthesis(products.data(task), G, result_rows, width, /*conjugate=*/for_weight, tw,
                  result_data, D, first);
      });
    });
  }
  return grouped ? result : torch::stable::squeeze(result, 0);
}

Tensor scale_correlation_backward_phi_cpu(const Tensor& grad, const Tensor& weight) {
  return backward_cpu(grad, std::nullopt, weight, false, "scale_correlation backward");
}

Tensor scale_correlation_backward_weight_cpu(const Tensor& grad, const Tensor& phi) {
  return backward_cpu(grad, std::nullopt, phi, true, "scale_correlation backward");
}

// d bias [G, C] of scale_align: the sum over the proposals of grad [G, N, C] (any strides), in
// the order of n, in opmath_t (float16 and bfloat16 as float32, then rounded once).
Tensor bias_gradient_cpu(const Tensor& grad4) {
  if (is_reduced_precision(grad4.scalar_type())) {
    return torch::stable::to(bias_gradient_cpu(in_opmath(grad4)), grad4.scalar_type());
  }
  const int64_t G = grad4.size(0), N = grad4.size(1), C = grad4.size(2);
  Tensor result = empty_like_device(grad4, {G, C});
  if (result.numel() == 0) {
    return result;
  }
  torch::stable::zero_(result);
  const int64_t stride_g = grad4.stride(0), stride_n = grad4.stride(1), stride_c = grad4.stride(2);
  DISPATCH_FLOAT_OR_DOUBLE(grad4.scalar_type(), "scale_align_bias_gradient_cpu", [&] {
    const scalar_t* grad_data = grad4.const_data_ptr<scalar_t>();
    scalar_t* result_data = result.mutable_data_ptr<scalar_t>();
    parallel_for(0, G, 1, [&](int64_t g_begin, int64_t g_end) {
      for (int64_t g = g_begin; g < g_end; ++g) {
        scalar_t* sums = result_data + g * C;
        for (int64_t n = 0; n < N; ++n) {
          const scalar_t* row = grad_data + g * stride_g + n * stride_n;
          for (int64_t c = 0; c < C; ++c) {
            sums[c] += row[c * stride_c];
          }
        }
      }
    });
  });
  return result;
}

// scale_align's backward op: (d phi, d weight, d bias), each only where its flag asks for it
// (an empty [0] tensor otherwise, and nothing computed for it).
std::tuple<Tensor, Tensor, Tensor> scale_align_backward_cpu(const Tensor& grad,
                                                            const Tensor& shift, const Tensor& phi,
                                                            const Tensor& weight, bool phi_grad,
                                                            bool weight_grad, bool bias_grad) {
  constexpr const char* op = "scale_align backward";
  const Shape shape = check_align_grad(grad, shift, phi, weight, op);
  check_floating_dtype(grad, "grad", op);
  const auto empty = [&] { return empty_like_device(grad, {0}); };
  Tensor grad_phi = phi_grad ? backward_cpu(grad, shift, weight, false, op) : empty();
  Tensor grad_weight = weight_grad ? backward_cpu(grad, shift, phi, true, op) : empty();
  Tensor grad_bias =
      bias_grad ? ungroup_like(bias_gradient_cpu(as_grouped_grad(grad, shape)), shape) : empty();
  return {grad_phi, grad_weight, grad_bias};
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(ssanet_ops, CPU, m) {
  m.impl("scale_correlation", TORCH_BOX(&scale_correlation_cpu));
  m.impl("scale_align", TORCH_BOX(&scale_align_cpu));
  m.impl("_scale_correlation_backward_phi", TORCH_BOX(&scale_correlation_backward_phi_cpu));
  m.impl("_scale_correlation_backward_weight", TORCH_BOX(&scale_correlation_backward_weight_cpu));
  m.impl("_scale_align_backward", TORCH_BOX(&scale_align_backward_cpu));
}

}  // namespace ssanet_ops::scale_align
