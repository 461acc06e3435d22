#pragma once
// The floating dtypes every kernel takes, on the CPU and on CUDA (docs/operators.md section 4):
// float32 and float64, and float16 / bfloat16, which accumulate in float32.

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace ssanet_ops {

inline bool is_reduced_precision(at::ScalarType type) {
  return type == at::kHalf || type == at::kBFloat16;
}

inline void check_floating_dtype(const at::Tensor& tensor, const char* name, const char* op) {
  const at::ScalarType type = tensor.scalar_type();
  TORCH_CHECK(type == at::kFloat || type == at::kDouble || is_reduced_precision(type), op, ": ",
              name, " must be float32, float64, float16 or bfloat16, got ", type);
}

}  // namespace ssanet_ops
