// The Python module ssanet_ops._sim: the host simulator of the CUDA kernels (issue 9;
// common/simulation.h). Loading it registers the kernels of every csrc/<op>/sim.cpp as
// torch.ops.ssanet_ops_sim.*, whose schemas ssanet_ops/testing.py defines as copies of
// ssanet_ops's. Use it through ssanet_ops.testing.simulate_cuda(). The module's own functions
// expose the launch geometry of common/launch.h and run the simulator's self-tests.

#include <Python.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

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

std::vector<std::vector<int>> barrier_exchange(unsigned int blocks, unsigned int threads,
                                               bool divergent) {
  std::vector<int> out(size_t{blocks} * threads, -2), poison(out.size());
  gpu::launch(barrier_kernel, blocks, threads, threads * sizeof(int), gpu::Stream{}, out.data(),
              poison.data(), divergent);
  return {out, poison};
}

// The order in which the threads of the grid reached an atomicAdd.
__global__ void atomic_order_kernel(int* counter, int* order) {
  order[atomicAdd(counter, 1)] = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
}

std::vector<int> atomic_order(unsigned int blocks, unsigned int threads) {
  int counter = 0;
  std::vector<int> order(size_t{blocks} * threads, -1);
  gpu::launch(atomic_order_kernel, blocks, threads, 0, gpu::Stream{}, &counter, order.data());
  return order;
}

}  // namespace
}  // namespace ssanet_ops::simulator_checks

PYBIND11_MODULE(_sim, m) {
  namespace checks = ssanet_ops::simulator_checks;
  m.doc() = "The CUDA kernels compiled for the host simulator; see ssanet_ops.testing";
  m.def(
      "grid_stride",
      [](int64_t count) {
        const ssanet_ops::GridStride launch = ssanet_ops::grid_stride(count);
        return pybind11::make_tuple(launch.blocks, launch.threads,
                                    launch.int32_index ? 32 : 64);
      },
      pybind11::arg("count"),
      "The launch of a grid-stride loop over `count` items that every kernel uses "
      "(common/launch.h): (blocks, threads, index bits).");
  m.def(
      "set_int32_index_limit",
      [](int64_t limit) { return ssanet_ops::gpu::sim::index_limit.exchange(limit); },
      pybind11::arg("limit"),
      "Sets the largest index a simulated launch may form in int32 (2**31 - 1 on a GPU); "
      "returns the previous limit.");
  m.def("barrier_exchange", &checks::barrier_exchange, pybind11::arg("blocks"),
        pybind11::arg("threads"), pybind11::arg("divergent") = false,
        "Self-test of __syncthreads and shared memory: (values read from the neighbour, "
        "dynamic shared memory before the block wrote it).");
  m.def("atomic_order", &checks::atomic_order, pybind11::arg("blocks"), pybind11::arg("threads"),
        "Self-test of atomicAdd: the order in which the grid's threads reached it.");
}
