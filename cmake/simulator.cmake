# The host simulator of the CUDA kernels (issue 9; csrc/common/simulation.h): the module
# ssanet_ops._sim, built from csrc/ssanet_ops_sim.cpp and every op's sim*.cpp with the host
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
  Python_add_library(_sim MODULE WITH_SOABI ${SSANET_OPS_SIM_SOURCES})
  ssanet_ops_torch_module(_sim)
  target_compile_definitions(_sim PRIVATE SSANET_OPS_SIMULATION=1)
  # nvcc contracts a*b + c into one FMA by default; so does the simulation, so that decisions
  # that depend on that rounding come out as on the GPU. -mfma where this host runs FMA (x86;
  # other architectures contract with their own FMA instructions).
  include(CheckCXXSourceRuns)
  set(CMAKE_REQUIRED_FLAGS "-mfma")
  check_cxx_source_runs(
    "int main() { __builtin_cpu_init(); return __builtin_cpu_supports(\"fma\") ? 0 : 1; }"
    SSANET_OPS_HOST_HAS_FMA)
  unset(CMAKE_REQUIRED_FLAGS)
  target_compile_options(_sim PRIVATE -ffp-contract=fast $<$<BOOL:${SSANET_OPS_HOST_HAS_FMA}>:-mfma>
    # Its own copies of the inline functions it shares with _C, compiled with other flags: keep
    # them from being bound to _C's (or _C's to them).
    -fvisibility=hidden -fvisibility-inlines-hidden)
  # benchmarks/sim_coverage.py builds the simulator on its own with line coverage (unoptimised,
  # so lines map to code) and AddressSanitizer (kernels' out-of-bounds accesses to the tensors
  # fail loudly).
  option(SSANET_OPS_SIM_COVERAGE "Build the simulator with --coverage -O0 and AddressSanitizer" OFF)
  if(SSANET_OPS_SIM_COVERAGE)
    target_compile_options(_sim PRIVATE --coverage -O0 -fsanitize=address -fno-omit-frame-pointer)
    target_link_options(_sim PRIVATE --coverage -fsanitize=address)
  endif()
  install(TARGETS _sim LIBRARY DESTINATION ssanet_ops)
  set(SSANET_OPS_SIM_JSON true)
else()
  set(SSANET_OPS_SIM_JSON false)
endif()
message(STATUS "ssanet_ops: CUDA simulator ${SSANET_OPS_SIM}")
