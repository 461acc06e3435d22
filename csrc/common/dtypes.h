#pragma once
// The floating dtypes every kernel takes, on the CPU and on CUDA (docs/operators.md section 4):
// float32 and float64, and float16 / bfloat16, which accumulate in float32.

#include "common/stable.h"

namespace ssanet_ops {

inline bool is_reduced_precision(ScalarType type) {
  return type == ScalarType::Half || type == ScalarType::BFloat16;
}

inline void check_floating_dtype(const Tensor& tensor, const char* name, const char* op) {
  const ScalarType type = tensor.scalar_type();
  SSANET_CHECK(type == ScalarType::Float || type == ScalarType::Double ||
                   is_reduced_precision(type),
               op, ": ", name, " must be float32, float64, float16 or bfloat16, got ", type);
}

}  // namespace ssanet_ops
