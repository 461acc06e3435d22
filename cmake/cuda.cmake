# Decides whether the CUDA kernels are built (SSANET_OPS_CUDA = auto | on | off) and for which
# architectures. Sets SSANET_OPS_WITH_CUDA and SSANET_OPS_CUDA_ARCHITECTURES.
set(SSANET_OPS_WITH_CUDA OFF)
set(SSANET_OPS_CUDA_ARCHITECTURES "")

# TORCH_CUDA_ARCH_LIST entries ("8.0", "9.0a", "8.6+PTX", separated by ';', ',' or spaces) to
# CMake's CUDA_ARCHITECTURES ("80-real", "90a-real", "86").
function(ssanet_ops_arch_list_to_cmake arch_list out_var)
  string(REGEX REPLACE "[ ,]+" ";" entries "${arch_list}")
  set(result "")
  foreach(entry IN LISTS entries)
    if(entry STREQUAL "")
      continue()
    endif()
    if(NOT entry MATCHES "^([0-9]+)\\.([0-9]+)([af]?)(\\+PTX)?$")
      message(FATAL_ERROR "TORCH_CUDA_ARCH_LIST: cannot read '${entry}' (expected e.g. 9.0 or 8.6+PTX)")
    endif()
    set(arch "${CMAKE_MATCH_1}${CMAKE_MATCH_2}${CMAKE_MATCH_3}")
    if(CMAKE_MATCH_4)
      list(APPEND result "${arch}")        # machine code and PTX
    else()
      list(APPEND result "${arch}-real")   # machine code only
    endif()
  endforeach()
  set(${out_var} "${result}" PARENT_SCOPE)
endfunction()

set(cuda_unavailable_reason "")
if(SSANET_OPS_CUDA STREQUAL "off")
  set(cuda_unavailable_reason "SSANET_OPS_CUDA=off")
elseif(TORCH_CUDA_VERSION STREQUAL "")
  set(cuda_unavailable_reason "the installed torch (${TORCH_VERSION}) was built without CUDA")
else()
  # nvcc: CUDACXX, then CUDA_HOME or CUDA_PATH, then /usr/local/cuda, then CMake's own search.
  if(NOT DEFINED ENV{CUDACXX} AND NOT CMAKE_CUDA_COMPILER)
    foreach(root IN ITEMS "$ENV{CUDA_HOME}" "$ENV{CUDA_PATH}" "/usr/local/cuda")
      if(NOT root STREQUAL "" AND EXISTS "${root}/bin/nvcc")
        set(ENV{CUDACXX} "${root}/bin/nvcc")
        break()
      endif()
    endforeach()
  endif()

  if(DEFINED ENV{TORCH_CUDA_ARCH_LIST} AND NOT "$ENV{TORCH_CUDA_ARCH_LIST}" STREQUAL "")
    ssanet_ops_arch_list_to_cmake("$ENV{TORCH_CUDA_ARCH_LIST}" SSANET_OPS_CUDA_ARCHITECTURES)
  elseif(NOT TORCH_LOCAL_GPU_ARCH STREQUAL "")
    ssanet_ops_arch_list_to_cmake("${TORCH_LOCAL_GPU_ARCH}" SSANET_OPS_CUDA_ARCHITECTURES)
  else()
    # No GPU here and no choice made: current data-centre and consumer generations, with PTX
    # of the newest for what comes after.
    ssanet_ops_arch_list_to_cmake("8.0;8.6;9.0;10.0;12.0+PTX" SSANET_OPS_CUDA_ARCHITECTURES)
  endif()
  set(CMAKE_CUDA_ARCHITECTURES "${SSANET_OPS_CUDA_ARCHITECTURES}")
  # torch loads the shared CUDA runtime; use the same one rather than a static copy.
  set(CMAKE_CUDA_RUNTIME_LIBRARY Shared)

  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    enable_language(CUDA)
    set(SSANET_OPS_WITH_CUDA ON)
  else()
    set(cuda_unavailable_reason
      "no working nvcc was found (set CUDACXX to the nvcc to use, or CUDA_HOME to its toolkit)")
  endif()
endif()

if(SSANET_OPS_WITH_CUDA)
  message(STATUS "ssanet_ops: CUDA kernels ON (nvcc ${CMAKE_CUDA_COMPILER_VERSION}, "
                 "architectures ${SSANET_OPS_CUDA_ARCHITECTURES})")
elseif(SSANET_OPS_CUDA STREQUAL "on")
  message(FATAL_ERROR "SSANET_OPS_CUDA=on but the CUDA kernels cannot be built: "
                      "${cuda_unavailable_reason}.")
else()
  message(STATUS "ssanet_ops: CUDA kernels OFF (${cuda_unavailable_reason}); building CPU only")
endif()
