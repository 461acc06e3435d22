#pragma once
// Element strides of a 4-d tensor, for the CPU and CUDA kernels alike.

#include <cstdint>

namespace ssanet_ops {

// Element strides of a 4-d tensor, so kernels read non-contiguous and channels-last input in
// place. Named for [N, C, H, W] maps; other 4-d layouts read them in their own dimension order.
struct Strides4 {
  int64_t n, c, h, w;
};

template <typename Tensor>
Strides4 strides_of(const Tensor& tensor) {
  return {tensor.stride(0), tensor.stride(1), tensor.stride(2), tensor.stride(3)};
}

}  // namespace ssanet_ops
