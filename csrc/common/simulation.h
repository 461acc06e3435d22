#pragma once
// The CUDA kernels, compiled twice (issue 9): by nvcc into <op>/cuda.cu, and by the host
// compiler into <op>/sim.cpp, so that CI runs the kernels' own code on every run. Each op's
// kernels.cuh includes this header and is written in plain CUDA (__global__, threadIdx,
// __shared__, __syncthreads, atomicAdd), launching every kernel through gpu::launch instead of
// <<<...>>>. Under nvcc everything below is the real thing. Under the host compiler with
// SSANET_OPS_SIMULATION defined (the sim*.cpp sources, built into ssanet_ops._sim), it is a
// small CUDA runtime on the host:
//   - gpu::launch checks the launch configuration as CUDA does, then runs the grid's blocks one
//     after another, in a shuffled order, and each block's threads as fibers (ucontext), in a
//     shuffled order. One fiber runs threads back to back until one of them reaches
//     __syncthreads(); that thread's fiber is parked and a new fiber takes the next thread.
//   - __syncthreads() returns only when every thread of the block has reached it. A thread that
//     exits while others wait at a barrier is an error (compute-sanitizer's synccheck).
//   - __shared__ variables are static (thread_local): one per kernel, shared by the fibers of
//     the block that runs. gpu::dynamic_shared<T>() is the launch's dynamic shared memory,
//     poisoned (all bytes 0xFF: NaN in floating types) before every block.
//   - atomicAdd / atomicOr are plain read-modify-writes (one OS thread runs the fibers); the
//     shuffled orders make order-dependent sums differ from launch to launch, as on a GPU.
//     __threadfence() is nothing (a block sees the stores of the blocks run before it); since
//     the blocks' order is shuffled, a kernel's "last block to arrive" is a different block
//     from launch to launch.
//     SSANET_OPS_SIM_SEED=<n> fixes the shuffles.
//   - Floating point: sim*.cpp is compiled with -ffp-contract=fast (and -mfma where the host has
//     FMA), as nvcc contracts a*b + c into an FMA by default. cos/sin come from the host's libm,
//     which may differ from CUDA's in the last bit.
//   Not simulated: warp-level operations (shuffles, votes, WMMA), streams (a launch runs to the
//   end before it returns), device asserts. Add an intrinsic below when a kernel needs it.
//
// Moving an op onto the simulator (oriented_pool/ is the example):
//   1. csrc/<op>/kernels.cuh, read top-down: device functions, __global__ kernels, launchers.
//      Loops are grid-stride loops sized by grid_stride() from common/launch.h, their index type
//      chosen by with_index_type(); kernels launch through gpu::launch(kernel, grid, block,
//      shared_bytes, stream, args...). The host entry points take a gpu::Stream and do what the
//      CUDA and simulated ops share: argument checks, allocation, dtype dispatch (float, double,
//      Half, BFloat16), the deterministic/atomic choice. Everything in the header is a template
//      or inline (it is compiled into two translation units).
//   2. csrc/<op>/cuda.cu: includes kernels.cuh, adds the device guard and the current stream,
//      registers STABLE_TORCH_LIBRARY_IMPL(ssanet_ops, CUDA, m) (the CUDA op library).
//   3. csrc/<op>/sim.cpp: includes kernels.cuh, registers the same entry points with
//      gpu::Stream{} as STABLE_TORCH_LIBRARY_IMPL(ssanet_ops_sim, CPU, m), one per op of the
//      op's schemas (ssanet_ops/testing.py defines ssanet_ops_sim's schemas as copies of
//      ssanet_ops's). CMake picks up csrc/*/sim*.cpp into the simulator's op library.
//   4. Tests: use the `device` fixture (cpu, cuda, sim) or `cuda_device` (cuda, sim) of
//      tests/conftest.py; a test that needs CPU and CUDA results side by side uses
//      `cuda_target` (a context: `with cuda_target: ...` runs the CUDA kernels).
//   5. `python benchmarks/sim_coverage.py` rewrites benchmarks/results/sim_coverage.md: which
//      lines, kernel instantiations (dtype, index type) and launches of every kernels.cuh ran.
//
// Memory traces (issue 24, benchmarks/gpu_model.py): the build with SSANET_OPS_SIM_TRACE defined
// compiles the kernels with every load and store instrumented, and the hooks below tell
// csrc/ssanet_ops_sim_trace.cpp which launch, block and thread each access belongs to. In every
// other build the hooks are nothing.

#include <cstdint>
#include <limits>
#include <utility>

#include "common/stable.h"

#if defined(__CUDACC__)

#include <cuda_runtime.h>

namespace ssanet_ops::gpu {

using Stream = cudaStream_t;

// The launch's dynamic shared memory (its shared_bytes argument).
template <typename T>
__device__ __forceinline__ T* dynamic_shared() {
  extern __shared__ __align__(16) unsigned char dynamic_shared_memory[];
  return reinterpret_cast<T*>(dynamic_shared_memory);
}

// Every kernel launch goes through here: the launch, then the launch check.
template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes, Stream stream,
            Args&&... args) {
  kernel<<<grid, block, shared_bytes, stream>>>(std::forward<Args>(args)...);
  const cudaError_t error = cudaGetLastError();
  SSANET_CHECK(error == cudaSuccess, "CUDA kernel launch failed: ", cudaGetErrorString(error));
}

// The largest index an int32-indexed launch may form (common/launch.h).
constexpr int64_t int32_index_limit() { return std::numeric_limits<int32_t>::max(); }

}  // namespace ssanet_ops::gpu

#elif defined(SSANET_OPS_SIMULATION)

#include <sys/mman.h>
#include <ucontext.h>

// The user-space AddressSanitizer (sim_coverage.py's build), not the trace build's calls-only
// kernel one, which has no runtime to tell of fibers.
#if defined(__SANITIZE_ADDRESS__) && !defined(SSANET_OPS_SIM_TRACE)
#define SSANET_OPS_SIM_ASAN_FIBERS 1
#include <sanitizer/common_interface_defs.h>
#endif

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <numeric>
#include <random>
#include <tuple>
#include <type_traits>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ static thread_local

struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int x = 1, unsigned int y = 1, unsigned int z = 1) : x(x), y(y), z(z) {}
};
using uint3 = dim3;

// Set by the simulator before it runs or resumes a thread.
inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;

namespace ssanet_ops::gpu {

struct Stream {};  // launches run on the calling thread, in order

namespace sim {

#if defined(SSANET_OPS_SIM_TRACE)
// Defined in csrc/ssanet_ops_sim_trace.cpp, which is compiled without instrumentation.
namespace trace {
void launch_begin(const void* kernel, dim3 grid, dim3 block);
void launch_end();
void block_begin(uint64_t linear, const void* shared, size_t shared_bytes);
void thread_enter(unsigned int linear, const void* stack, size_t stack_bytes);
void thread_leave();
void atomic(const void* address, size_t bytes);
}  // namespace trace
#define SSANET_OPS_SIM_TRACE_HOOK(call) ::ssanet_ops::gpu::sim::trace::call
// Not instrumented: the atomics, which report themselves as such.
#define SSANET_OPS_SIM_NOT_TRACED __attribute__((no_sanitize_address))
#else
#define SSANET_OPS_SIM_TRACE_HOOK(call) ((void)0)
#define SSANET_OPS_SIM_NOT_TRACED
#endif

// A fiber runs threads of the block being simulated, one after another; a thread that reaches
// __syncthreads() keeps its fiber until the barrier opens.
struct Fiber {
  static constexpr size_t kStackBytes = size_t{1} << 20;  // mapped lazily by the kernel
  ucontext_t context{};
  void* stack = nullptr;
  unsigned int thread = 0;  // linear index of the thread it runs
  bool at_barrier = false;

  Fiber();
  ~Fiber() { munmap(stack, kStackBytes); }
};

struct BlockRun {
  const std::function<void()>* body;
  std::vector<unsigned int> order;  // threads in the order they start
  size_t started = 0;
  size_t finished = 0;
  std::exception_ptr error;
};

// The simulator's state on one OS thread.
struct Runtime {
  ucontext_t scheduler{};
  std::vector<std::unique_ptr<Fiber>> idle;
  Fiber* running = nullptr;
  BlockRun* block = nullptr;
  std::vector<unsigned char> dynamic_shared;
  std::mt19937_64 random{seed()};
  const void* scheduler_stack = nullptr;  // for AddressSanitizer, see switch_stack
  size_t scheduler_stack_bytes = 0;

  static uint64_t seed() {
    const char* fixed = std::getenv("SSANET_OPS_SIM_SEED");
    return fixed != nullptr ? std::strtoull(fixed, nullptr, 10) : std::random_device{}();
  }
};
inline thread_local Runtime runtime;

// The int32 index limit of common/launch.h; tests lower it to run the int64 kernels on small
// tensors (ssanet_ops.testing.simulate_cuda(int32_index_limit=...)).
inline std::atomic<int64_t> index_limit{std::numeric_limits<int32_t>::max()};

inline void set_thread_index(unsigned int linear) {
  threadIdx = uint3(linear % blockDim.x, linear / blockDim.x % blockDim.y,
                    linear / (blockDim.x * blockDim.y));
}

// AddressSanitizer builds (benchmarks/sim_coverage.py) must be told which stack runs after a
// context switch, or they take frames on the other stack for overflows. Call before_switch with
// the stack switched to, and after_switch once back, with where to store the bounds of the
// stack that switched back (the scheduler's, when a fiber resumes).
inline void before_switch(void** fake_stack, const void* stack, size_t bytes) {
#if defined(SSANET_OPS_SIM_ASAN_FIBERS)
  __sanitizer_start_switch_fiber(fake_stack, stack, bytes);
#endif
}

inline void after_switch(void* fake_stack, const void** from_stack, size_t* from_bytes) {
#if defined(SSANET_OPS_SIM_ASAN_FIBERS)
  __sanitizer_finish_switch_fiber(fake_stack, from_stack, from_bytes);
#endif
}

// From a fiber back to the scheduler; returns when the scheduler resumes the fiber.
inline void to_scheduler(Fiber& self) {
  void* fake_stack = nullptr;
  before_switch(&fake_stack, runtime.scheduler_stack, runtime.scheduler_stack_bytes);
  swapcontext(&self.context, &runtime.scheduler);
  after_switch(fake_stack, &runtime.scheduler_stack, &runtime.scheduler_stack_bytes);
}

[[noreturn]] inline void fiber_main() {
  after_switch(nullptr, &runtime.scheduler_stack, &runtime.scheduler_stack_bytes);
  for (;;) {
    Fiber& self = *runtime.running;
    BlockRun& block = *runtime.block;
    while (block.started < block.order.size() && !block.error) {
      self.thread = block.order[block.started++];
      set_thread_index(self.thread);
      SSANET_OPS_SIM_TRACE_HOOK(thread_enter(self.thread, self.stack, Fiber::kStackBytes));
      try {
        (*block.body)();
      } catch (...) {
        if (!block.error) {
          block.error = std::current_exception();
        }
      }
      SSANET_OPS_SIM_TRACE_HOOK(thread_leave());
      ++block.finished;
    }
    self.at_barrier = false;
    to_scheduler(self);  // idle until the next block
  }
}

inline Fiber::Fiber() {
  stack = mmap(nullptr, kStackBytes, PROT_READ | PROT_WRITE,
               MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  SSANET_CHECK(stack != MAP_FAILED, "CUDA simulator: cannot map a fiber stack");
  mprotect(stack, 4096, PROT_NONE);  // a guard page: a kernel that overflows the stack faults
  getcontext(&context);
  context.uc_stack.ss_sp = stack;
  context.uc_stack.ss_size = kStackBytes;
  context.uc_link = nullptr;
  makecontext(&context, fiber_main, 0);
}

// Not traced: its store to the heap-allocated Fiber is the simulator's, not the kernel's.
SSANET_OPS_SIM_NOT_TRACED inline void syncthreads() {
  Fiber* self = runtime.running;
  SSANET_CHECK(self != nullptr, "CUDA simulator: __syncthreads() outside a kernel");
  self->at_barrier = true;
  SSANET_OPS_SIM_TRACE_HOOK(thread_leave());
  to_scheduler(*self);
  SSANET_OPS_SIM_TRACE_HOOK(thread_enter(self->thread, self->stack, Fiber::kStackBytes));
}

// Runs `fiber` until its thread reaches a barrier (true) or it has no thread left (false).
inline bool resume(Fiber& fiber) {
  runtime.running = &fiber;
  set_thread_index(fiber.thread);
  void* fake_stack = nullptr;
  before_switch(&fake_stack, fiber.stack, Fiber::kStackBytes);
  swapcontext(&runtime.scheduler, &fiber.context);
  after_switch(fake_stack, nullptr, nullptr);
  runtime.running = nullptr;
  return fiber.at_barrier;
}

inline void run_block(BlockRun& block) {
  std::vector<std::unique_ptr<Fiber>> waiting;  // fibers whose thread is at the barrier
  auto run = [&](std::unique_ptr<Fiber> fiber) {
    if (resume(*fiber)) {
      waiting.push_back(std::move(fiber));
    } else {
      runtime.idle.push_back(std::move(fiber));
    }
  };
  for (;;) {
    while (block.started < block.order.size() && !block.error) {
      std::unique_ptr<Fiber> fiber;
      if (runtime.idle.empty()) {
        fiber = std::make_unique<Fiber>();
      } else {
        fiber = std::move(runtime.idle.back());
        runtime.idle.pop_back();
      }
      run(std::move(fiber));
    }
    if (block.error) {
      std::rethrow_exception(block.error);  // the waiting fibers are dropped with their threads
    }
    if (waiting.empty()) {
      return;
    }
    SSANET_CHECK(block.finished == 0, "CUDA simulator: ", block.finished, " of ",
                 block.order.size(), " threads of block (", blockIdx.x, ", ", blockIdx.y, ", ",
                 blockIdx.z, ") exited while the others wait at __syncthreads()");
    // Every thread is at the barrier: open it, resuming them in a new order.
    std::vector<std::unique_ptr<Fiber>> released = std::move(waiting);
    waiting.clear();
    std::shuffle(released.begin(), released.end(), runtime.random);
    for (auto& fiber : released) {
      run(std::move(fiber));
    }
  }
}

inline void check_launch(dim3 grid, dim3 block, size_t shared_bytes) {
  const uint64_t threads = uint64_t{block.x} * block.y * block.z;
  SSANET_CHECK(grid.x >= 1 && grid.x <= 2147483647u && grid.y >= 1 && grid.y <= 65535 &&
                   grid.z >= 1 && grid.z <= 65535,
               "CUDA simulator: invalid grid (", grid.x, ", ", grid.y, ", ", grid.z, ")");
  SSANET_CHECK(threads >= 1 && threads <= 1024 && block.z <= 64,
               "CUDA simulator: invalid block (", block.x, ", ", block.y, ", ", block.z, ")");
  SSANET_CHECK(shared_bytes <= 48 * 1024, "CUDA simulator: ", shared_bytes,
               " bytes of dynamic shared memory exceed the 48 KiB a launch gets by default");
}

// `kernel` identifies the launch in memory traces.
inline void run_grid(const void* kernel, dim3 grid, dim3 block, size_t shared_bytes,
                     const std::function<void()>& body) {
  check_launch(grid, block, shared_bytes);
  SSANET_CHECK(runtime.block == nullptr, "CUDA simulator: a kernel launched a kernel");
  gridDim = grid;
  blockDim = block;
  runtime.dynamic_shared.resize(shared_bytes);
  // Blocks in the order start + step * i (mod blocks), step coprime to the block count: a
  // shuffled order that needs no table, for grids of any size.
  const uint64_t blocks = uint64_t{grid.x} * grid.y * grid.z;
  const uint64_t start = runtime.random() % blocks;
  uint64_t step = runtime.random() % blocks;
  while (std::gcd(step, blocks) != 1) {
    step = (step + 1) % blocks;
  }
  BlockRun run{&body, std::vector<unsigned int>(block.x * block.y * block.z)};
  SSANET_OPS_SIM_TRACE_HOOK(launch_begin(kernel, grid, block));
  for (uint64_t i = 0; i < blocks; ++i) {
    const uint64_t linear = static_cast<uint64_t>(
        (static_cast<unsigned __int128>(step) * i + start) % blocks);
    blockIdx = uint3(linear % grid.x, linear / grid.x % grid.y, linear / (uint64_t{grid.x} * grid.y));
    std::memset(runtime.dynamic_shared.data(), 0xFF, shared_bytes);
    SSANET_OPS_SIM_TRACE_HOOK(block_begin(linear, runtime.dynamic_shared.data(), shared_bytes));
    std::iota(run.order.begin(), run.order.end(), 0u);
    std::shuffle(run.order.begin(), run.order.end(), runtime.random);
    run.started = run.finished = 0;
    runtime.block = &run;
    try {
      run_block(run);
    } catch (...) {
      runtime.block = nullptr;
      SSANET_OPS_SIM_TRACE_HOOK(launch_end());
      throw;
    }
    runtime.block = nullptr;
  }
  SSANET_OPS_SIM_TRACE_HOOK(launch_end());
}

}  // namespace sim

template <typename T>
T* dynamic_shared() {
  return reinterpret_cast<T*>(sim::runtime.dynamic_shared.data());
}

template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes, Stream,
            Args&&... args) {
  // The arguments, copied at the launch as CUDA does, onto this stack: each thread copies them
  // from there, which a memory trace does not count as global memory.
  const std::tuple<std::decay_t<Args>...> arguments(args...);
  const std::function<void()> body = [&] { std::apply(kernel, arguments); };
  sim::run_grid(reinterpret_cast<const void*>(kernel), grid, block, shared_bytes, body);
}

inline int64_t int32_index_limit() { return sim::index_limit.load(); }

}  // namespace ssanet_ops::gpu

inline void __syncthreads() { ssanet_ops::gpu::sim::syncthreads(); }

// Nothing to order: blocks run one after another on one OS thread, so a block sees every store
// of the blocks before it.
inline void __threadfence() {}

// Not inlined, so that the host compiler cannot contract the caller's a*b into the addition as
// an FMA: on the GPU the value is rounded before the atomic adds it.
template <typename T>
__attribute__((noinline)) SSANET_OPS_SIM_NOT_TRACED T atomicAdd(T* address, T value) {
  SSANET_OPS_SIM_TRACE_HOOK(atomic(address, sizeof(T)));
  const T old = *address;
  *address = old + value;
  return old;
}

SSANET_OPS_SIM_NOT_TRACED inline int atomicOr(int* address, int value) {
  SSANET_OPS_SIM_TRACE_HOOK(atomic(address, sizeof(int)));
  const int old = *address;
  *address = old | value;
  return old;
}

#else
#error "common/simulation.h is compiled by nvcc or with SSANET_OPS_SIMULATION defined"
#endif
