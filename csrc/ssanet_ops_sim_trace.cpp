// Memory traces of the simulated kernels (issue 24; benchmarks/gpu_model.py). Only in the
// simulator build with SSANET_OPS_SIM_TRACE (cmake/simulator.cmake), whose kernel sources GCC
// compiles with -fsanitize=kernel-address and calls only: every load and store calls
// __asan_{load,store}N_noabort(address), defined here, in a unit compiled without it.
//
// An access is recorded while tracing is on, when a simulated thread makes it (between the
// simulator's thread_enter and thread_leave hooks of common/simulation.h) and when it is to
// global memory: anything but the thread's fiber stack, the OS thread's stack (the launch's
// arguments), the launch's dynamic shared memory, and this library's thread-local storage
// (__shared__ variables, threadIdx) and static data. Each record holds the launch, block and
// thread, the instruction site (the return address, as an offset in this library), the address,
// the size and the kind (load, store, atomic). gpu_model.py reads them through ctypes
// (ssanet_ops_sim_trace_*) and does the counting.

#include <dlfcn.h>
#include <link.h>
#include <pthread.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "common/simulation.h"

namespace {

enum Kind : uint8_t { kLoad = 0, kStore = 1, kAtomic = 2 };

// 24 bytes; gpu_model.py's EVENT dtype mirrors it.
struct Event {
  uint64_t address;
  uint32_t block;
  uint32_t thread;
  uint32_t site;
  uint16_t launch;
  uint8_t bytes;
  uint8_t kind;
};

// 32 bytes; gpu_model.py's LAUNCH dtype mirrors it.
struct Launch {
  uint64_t kernel;  // the kernel's offset in this library
  uint32_t grid[3];
  uint32_t block[3];
};

struct Range {
  uintptr_t begin = 0, end = 0;
  bool contains(uintptr_t address) const { return address >= begin && address < end; }
};

struct State {
  bool on = false;
  bool in_thread = false;
  uint32_t thread = 0;
  uint32_t block = 0;
  uintptr_t base = 0;  // this library's load address
  Range fiber_stack, os_stack, shared, tls;
  std::vector<Range> image;  // this library's loaded segments
  std::vector<Event> events;
  std::vector<Launch> launches;
};

State state;

uintptr_t library_base() {
  Dl_info info{};
  dladdr(reinterpret_cast<void*>(&library_base), &info);
  return reinterpret_cast<uintptr_t>(info.dli_fbase);
}

// This library's segments and this thread's block of its thread-local storage.
int find_segments(dl_phdr_info* info, size_t, void*) {
  if (info->dlpi_addr != state.base) {
    return 0;
  }
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const ElfW(Phdr)& header = info->dlpi_phdr[i];
    if (header.p_type == PT_LOAD) {
      const uintptr_t begin = info->dlpi_addr + header.p_vaddr;
      state.image.push_back({begin, begin + header.p_memsz});
    } else if (header.p_type == PT_TLS && info->dlpi_tls_data != nullptr) {
      const auto begin = reinterpret_cast<uintptr_t>(info->dlpi_tls_data);
      state.tls = {begin, begin + header.p_memsz};
    }
  }
  return 1;
}

Range range(const void* begin, size_t bytes) {
  const auto start = reinterpret_cast<uintptr_t>(begin);
  return {start, start + bytes};
}

bool global(uintptr_t address) {
  if (state.fiber_stack.contains(address) || state.os_stack.contains(address) ||
      state.shared.contains(address) || state.tls.contains(address)) {
    return false;
  }
  for (const Range& segment : state.image) {
    if (segment.contains(address)) {
      return false;
    }
  }
  return true;
}

inline void record(const void* address, size_t bytes, Kind kind, const void* site) {
  if (!state.on || !state.in_thread) {
    return;
  }
  const auto where = reinterpret_cast<uintptr_t>(address);
  if (!global(where)) {
    return;
  }
  state.events.push_back({where, state.block, state.thread,
                          static_cast<uint32_t>(reinterpret_cast<uintptr_t>(site) - state.base),
                          static_cast<uint16_t>(state.launches.size() - 1),
                          static_cast<uint8_t>(bytes > 255 ? 255 : bytes), kind});
}

}  // namespace

namespace ssanet_ops::gpu::sim::trace {

void launch_begin(const void* kernel, dim3 grid, dim3 block) {
  if (!state.on) {
    return;
  }
  state.launches.push_back({reinterpret_cast<uintptr_t>(kernel) - state.base,
                            {grid.x, grid.y, grid.z},
                            {block.x, block.y, block.z}});
  // The thread-local block exists by now (the simulator's runtime lives in it).
  state.image.clear();
  dl_iterate_phdr(find_segments, nullptr);
  pthread_attr_t attributes;
  void* stack = nullptr;
  size_t stack_bytes = 0;
  if (pthread_getattr_np(pthread_self(), &attributes) == 0) {
    pthread_attr_getstack(&attributes, &stack, &stack_bytes);
    pthread_attr_destroy(&attributes);
  }
  state.os_stack = range(stack, stack_bytes);
}

void launch_end() { state.in_thread = false; }

void block_begin(uint64_t linear, const void* shared, size_t shared_bytes) {
  state.block = static_cast<uint32_t>(linear);
  state.shared = range(shared, shared_bytes);
}

void thread_enter(unsigned int linear, const void* stack, size_t stack_bytes) {
  state.thread = linear;
  state.fiber_stack = range(stack, stack_bytes);
  state.in_thread = true;
}

void thread_leave() { state.in_thread = false; }

void atomic(const void* address, size_t bytes) {
  record(address, bytes, kAtomic, __builtin_return_address(0));
}

}  // namespace ssanet_ops::gpu::sim::trace

// The instrumentation's callbacks (GCC's -fsanitize=kernel-address, calls only).
#define SSANET_OPS_TRACE_CALLBACKS(bytes)                                  \
  extern "C" void __asan_load##bytes##_noabort(void* address) {            \
    record(address, bytes, kLoad, __builtin_return_address(0));            \
  }                                                                        \
  extern "C" void __asan_store##bytes##_noabort(void* address) {           \
    record(address, bytes, kStore, __builtin_return_address(0));           \
  }
SSANET_OPS_TRACE_CALLBACKS(1)
SSANET_OPS_TRACE_CALLBACKS(2)
SSANET_OPS_TRACE_CALLBACKS(4)
SSANET_OPS_TRACE_CALLBACKS(8)
SSANET_OPS_TRACE_CALLBACKS(16)
#undef SSANET_OPS_TRACE_CALLBACKS

extern "C" void __asan_loadN_noabort(void* address, size_t bytes) {
  record(address, bytes, kLoad, __builtin_return_address(0));
}
extern "C" void __asan_storeN_noabort(void* address, size_t bytes) {
  record(address, bytes, kStore, __builtin_return_address(0));
}

// The rest of what the instrumented code calls: nothing to do here.
extern "C" void __asan_handle_no_return() {}
extern "C" void __asan_before_dynamic_init(const char*) {}
extern "C" void __asan_after_dynamic_init() {}

// The interface of gpu_model.py (ctypes).
extern "C" __attribute__((visibility("default"))) void ssanet_ops_sim_trace_start() {
  state.base = library_base();
  state.events.clear();
  state.launches.clear();
  state.on = true;
}

extern "C" __attribute__((visibility("default"))) void ssanet_ops_sim_trace_stop() {
  state.on = false;
  state.in_thread = false;
}

extern "C" __attribute__((visibility("default"))) const void* ssanet_ops_sim_trace_events(
    size_t* count) {
  *count = state.events.size();
  return state.events.data();
}

extern "C" __attribute__((visibility("default"))) const void* ssanet_ops_sim_trace_launches(
    size_t* count) {
  *count = state.launches.size();
  return state.launches.data();
}
