#pragma once
// What every CUDA op does before it launches (the <op>/cuda.cu files): make the device of its
// tensors current for the op's duration, and launch on torch's current stream of that device,
// both through the stable ABI (aoti_torch_get_current_cuda_stream is a C function of
// libtorch_cuda, declared when USE_CUDA is defined; CMakeLists.txt defines it for the CUDA
// library).

#include <cuda_runtime.h>
#include <torch/csrc/inductor/aoti_torch/c/shim.h>
#include <torch/csrc/stable/accelerator.h>

#include "common/stable.h"

namespace ssanet_ops {

class CudaContext {
 public:
  explicit CudaContext(const Tensor& tensor)
      : guard_(tensor.get_device_index()), stream_(current_stream(tensor.get_device_index())) {}

  cudaStream_t stream() const { return stream_; }

 private:
  static cudaStream_t current_stream(int32_t device_index) {
    void* stream = nullptr;
    SSANET_SHIM_CHECK(aoti_torch_get_current_cuda_stream(device_index, &stream));
    return static_cast<cudaStream_t>(stream);
  }

  torch::stable::accelerator::DeviceGuard guard_;
  cudaStream_t stream_;
};

}  // namespace ssanet_ops
