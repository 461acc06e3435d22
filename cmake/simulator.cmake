# The host simulator of the CUDA kernels (issue 9; csrc/common/simulation.h): the op library
# libssanet_ops_sim.so, built from csrc/ssanet_ops_sim.cpp and every op's sim*.cpp with the host
# compiler. SSANET_OPS_SIM = on (default) or off.
set(SSANET_OPS_SIM "on" CACHE STRING "Build the host simulator of the CUDA kernels: on or off")
set_property(CACHE SSANET_OPS_SIM PROPERTY STRINGS on off)
if(DEFINED ENV{SSANET_OPS_SIM} AND NOT "$ENV{SSANET_OPS_SIM}" STREQUAL "")
  set(SSANET_OPS_SIM "$ENV{SSANET_OPS_SIM}")
endif()
string(TOLOWER "${SSANET_OPS_SIM}" SSANET_OPS_SIM)
if(NOT SSANET_OPS_SIM MATCHES "^(on|off)$")
  message(FATAL_ERROR "SSANET_OPS_SIM must be on or off, got '${SSANET_OPS_SIM}'")
endif()

if(SSANET_OPS_SIM STREQUAL "on")
  file(GLOB SSANET_OPS_SIM_SOURCES CONFIGURE_DEPENDS
    "${CMAKE_CURRENT_SOURCE_DIR}/csrc/ssanet_ops_sim.cpp"
    "${CMAKE_CURRENT_SOURCE_DIR}/csrc/*/sim*.cpp")
  ssanet_ops_library(ssanet_ops_sim ${SSANET_OPS_SIM_SOURCES})
  target_compile_definitions(ssanet_ops_sim PRIVATE SSANET_OPS_SIMULATION=1)
  # nvcc contracts a*b + c into one FMA by default; so does the simulation, so that decisions
  # that depend on that rounding come out as on the GPU. -mfma where this host runs FMA (x86;
  # other architectures contract with their own FMA instructions).
  include(CheckCXXSourceRuns)
  set(CMAKE_REQUIRED_FLAGS "-mfma")
  check_cxx_source_runs(
    "int main() { __builtin_cpu_init(); return __builtin_cpu_supports(\"fma\") ? 0 : 1; }"
    SSANET_OPS_HOST_HAS_FMA)
  unset(CMAKE_REQUIRED_FLAGS)
  # (Its own copies of the inline functions it shares with the CPU library, compiled with these
  # flags, stay its own: every op library hides its symbols.)
  target_compile_options(ssanet_ops_sim PRIVATE -ffp-contract=fast
    $<$<BOOL:${SSANET_OPS_HOST_HAS_FMA}>:-mfma>)
  # benchmarks/sim_coverage.py builds the simulator on its own with line coverage and
  # AddressSanitizer (kernels' out-of-bounds accesses to the tensors fail loudly). Optimised as
  # the normal build: GCC forms FMAs only from -O2 on.
  option(SSANET_OPS_SIM_COVERAGE "Build the simulator with --coverage and AddressSanitizer" OFF)
  if(SSANET_OPS_SIM_COVERAGE)
    target_compile_options(ssanet_ops_sim PRIVATE --coverage -fsanitize=address
      -fno-omit-frame-pointer)
    target_link_options(ssanet_ops_sim PRIVATE --coverage -fsanitize=address)
  endif()
  # benchmarks/gpu_model.py builds the simulator on its own with every global load and store of
  # the kernels traced (issue 24): GCC's kernel AddressSanitizer in its calls-only form makes
  # each access call __asan_{load,store}N_noabort, which csrc/ssanet_ops_sim_trace.cpp (not
  # instrumented) defines and attributes to the launch, block, thread and instruction site.
  option(SSANET_OPS_SIM_TRACE "Build the simulator with its kernels' memory accesses traced" OFF)
  if(SSANET_OPS_SIM_TRACE)
    if(NOT CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
      message(FATAL_ERROR "SSANET_OPS_SIM_TRACE needs GCC (-fsanitize=kernel-address)")
    endif()
    set(SSANET_OPS_SIM_TRACE_UNIT "${CMAKE_CURRENT_SOURCE_DIR}/csrc/ssanet_ops_sim_trace.cpp")
    target_sources(ssanet_ops_sim PRIVATE "${SSANET_OPS_SIM_TRACE_UNIT}")
    target_compile_definitions(ssanet_ops_sim PRIVATE SSANET_OPS_SIM_TRACE=1)
    set_source_files_properties(${SSANET_OPS_SIM_SOURCES} PROPERTIES COMPILE_OPTIONS
      "-fsanitize=kernel-address;--param=asan-instrumentation-with-call-threshold=0;--param=asan-stack=0;--param=asan-globals=0")
  endif()
endif()
message(STATUS "ssanet_ops: CUDA simulator ${SSANET_OPS_SIM}")
