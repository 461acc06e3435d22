#pragma once
// Functions written once for the CPU and the CUDA kernels (shared/STYLE.md: "common/").

#if defined(__CUDACC__)
#define SSANET_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define SSANET_HOST_DEVICE inline
#endif
