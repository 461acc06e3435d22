// The simulator's op library (issue 9; common/simulation.h): loading it registers the kernels
// of every csrc/<op>/sim.cpp as torch.ops.ssanet_ops_sim.*, whose schemas ssanet_ops/testing.py
// defines as copies of ssanet_ops's. Use it through ssanet_ops.testing.simulate_cuda(). This
// file adds the ops that expose the launch geometry of common/launch.h and run the simulator's
// self-tests (ssanet_ops.testing.load_simulator() wraps them).

#include <tuple>
#include <vector>

#include "common/launch.h"
#include "common/simulation.h"

namespace ssanet_ops::simulator_checks {
namespace {

// Every thread writes its index to shared memory (static and dynamic), waits at the barrier,
// then reads its neighbour's: right only if no thread reads before every thread has written.
// `divergent`: thread 0 leaves before the barrier, which CUDA does not allow. `poison` gets
// what the dynamic shared memory held before the block wrote it.
__global__ void barrier_kernel(int* out, int* poison, bool divergent) {
  __shared__ int values[1024];
  int* dynamic = gpu::dynamic_shared<int>();
  const unsigned int t = threadIdx.x;
  const unsigned int global = blockIdx.x * blockDim.x + t;
  poison[global] = dynamic[t];
  values[t] = static_cast<int>(global);
  dynamic[t] = static_cast<int>(global);
  if (divergent && t == 0) {
    return;
  }
  __syncthreads();
  const unsigned int neighbour = (t + 1) % blockDim.x;
  out[global] = values[neighbour] == dynamic[neighbour] ? values[neighbour] : -1;
}

// An int32 CPU tensor holding `values`.
Tensor int_tensor(const std::vector<int>& values) {
  Tensor tensor = torch::stable::empty({static_cast<int64_t>(values.size())}, ScalarType::Int);
  std::copy(values.begin(), values.end(), tensor.mutable_data_ptr<int>());
  return tensor;
}

std::tuple<Tensor, Tensor> barrier_exchange(int64_t blocks, int64_t threads, bool divergent) {
  SSANET_CHECK(blocks >= 0 && threads >= 0 && blocks * threads <= (int64_t{1} << 24),
               "barrier_exchange: blocks and threads must be small non-negative ints");
  std::vector<int> out(blocks * threads, -2), poison(out.size());
  gpu::launch(barrier_kernel, static_cast<unsigned int>(blocks),
              static_cast<unsigned int>(threads), threads * sizeof(int), gpu::Stream{},
              out.data(), poison.data(), divergent);
  return {int_tensor(out), int_tensor(poison)};
}

// The order in which the threads of the grid reached an atomicAdd.
__global__ void atomic_order_kernel(int* counter, int* order) {
  order[atomicAdd(counter, 1)] = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
}

Tensor atomic_order(int64_t blocks, int64_t threads) {
  SSANET_CHECK(blocks >= 1 && threads >= 1 && blocks * threads <= (int64_t{1} << 24),
               "atomic_order: blocks and threads must be small positive ints");
  int counter = 0;
  std::vector<int> order(blocks * threads, -1);
  gpu::launch(atomic_order_kernel, static_cast<unsigned int>(blocks),
              static_cast<unsigned int>(threads), 0, gpu::Stream{}, &counter, order.data());
  return int_tensor(order);
}

// a * b + c in one statement: nvcc contracts it into an FMA (one rounding), and so must the
// simulator where the host has FMA instructions.
__global__ void multiply_add_kernel(float a, float b, float c, float* out) { *out = a * b + c; }

// In float32 (the schema's float is a double on both sides).
double multiply_add(double a, double b, double c) {
  float out = 0;
  gpu::launch(multiply_add_kernel, 1, 1, 0, gpu::Stream{}, static_cast<float>(a),
              static_cast<float>(b), static_cast<float>(c), &out);
  return out;
}

#if defined(__FMA__) || defined(__ARM_FEATURE_FMA)
constexpr bool kHostFma = true;
#else
constexpr bool kHostFma = false;
#endif

bool host_fma() { return kHostFma; }

std::tuple<int64_t, int64_t, int64_t> grid_stride_of(int64_t count) {
  const GridStride launch = grid_stride(count);
  return {launch.blocks, launch.threads, launch.int32_index ? 32 : 64};
}

int64_t set_int32_index_limit(int64_t limit) { return gpu::sim::index_limit.exchange(limit); }

}  // namespace

// The schemas of these ops are this library's own (the kernels' schemas come from Python).
STABLE_TORCH_LIBRARY_FRAGMENT(ssanet_ops_sim, m) {
  // The launch of a grid-stride loop over `count` items that every kernel uses
  // (common/launch.h): (blocks, threads, index bits).
  m.def("_grid_stride(int count) -> (int, int, int)");
  // Sets the largest index a simulated launch may form in int32 (2**31 - 1 on a GPU); returns
  // the previous limit.
  m.def("_set_int32_index_limit(int limit) -> int");
  // Self-test of __syncthreads and shared memory: (values read from the neighbour, dynamic
  // shared memory before the block wrote it).
  m.def("_barrier_exchange(int blocks, int threads, bool divergent) -> (Tensor, Tensor)");
  // Self-test of contraction: a * b + c in a kernel, in float32.
  m.def("_multiply_add(float a, float b, float c) -> float");
  // Whether the simulator was compiled with the host's FMA instructions.
  m.def("_host_fma() -> bool");
  // Self-test of atomicAdd: the order in which the grid's threads reached it.
  m.def("_atomic_order(int blocks, int threads) -> Tensor");
}

STABLE_TORCH_LIBRARY_IMPL(ssanet_ops_sim, CompositeExplicitAutograd, m) {
  m.impl("_grid_stride", TORCH_BOX(&grid_stride_of));
  m.impl("_set_int32_index_limit", TORCH_BOX(&set_int32_index_limit));
  m.impl("_barrier_exchange", TORCH_BOX(&barrier_exchange));
  m.impl("_multiply_add", TORCH_BOX(&multiply_add));
  m.impl("_host_fma", TORCH_BOX(&host_fma));
  m.impl("_atomic_order", TORCH_BOX(&atomic_order));
}

}  // namespace ssanet_ops::simulator_checks

