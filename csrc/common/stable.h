#pragma once
// The one door from the kernels to torch: PyTorch's stable ABI (issue 11). Every kernel file
// reaches torch through this header only (no ATen/, c10/ or torch/extension.h include), and is
// built with TORCH_TARGET_VERSION = 2.11 (CMakeLists.txt), so that one binary runs on every
// torch from 2.11 on. What this header adds to the stable API is small: names that read like
// ATen's, error checks whose messages carry no file and line, and the float32 accumulation type
// of the reduced-precision dtypes.

#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/Dispatch_v2.h>
#include <torch/headeronly/core/ScalarType.h>
#include <torch/headeronly/util/BFloat16.h>
#include <torch/headeronly/util/Half.h>
#include <torch/headeronly/util/HeaderOnlyArrayRef.h>
#include <torch/headeronly/util/shim_utils.h>
#if __has_include(<torch/csrc/stable/macros.h>)
#include <torch/csrc/stable/macros.h>
#endif

#include <algorithm>
#include <array>
#include <cstdint>
#include <optional>
#include <ostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace ssanet_ops {

using Tensor = torch::stable::Tensor;
using ScalarType = torch::headeronly::ScalarType;
// An op's int[] argument: the schema's list arrives as a std::vector<int64_t>, which converts.
using IntArrayRef = torch::headeronly::IntHeaderOnlyArrayRef;
// An op's float[] argument, likewise from a std::vector<double>.
using DoubleArrayRef = torch::headeronly::HeaderOnlyArrayRef<double>;
using Half = c10::Half;
using BFloat16 = c10::BFloat16;

// The type a kernel accumulates scalar_t in: float for float16 and bfloat16 (at::opmath_type).
template <typename scalar_t>
struct OpMath {
  using type = scalar_t;
};
template <>
struct OpMath<Half> {
  using type = float;
};
template <>
struct OpMath<BFloat16> {
  using type = float;
};
template <typename scalar_t>
using opmath_t = typename OpMath<scalar_t>::type;

// ---- error messages ----

// Checks the return code of a call into torch's C shim, and throws a std::runtime_error when it
// failed. torch >= 2.13's STABLE_TORCH_ERROR_CODE_CHECK carries the failed call's own message
// (it finds the shim function that returns it at run time, so it still builds for 2.11);
// torch 2.11's and 2.12's headers have only TORCH_ERROR_CODE_CHECK, which names the call.
#ifdef STABLE_TORCH_ERROR_CODE_CHECK
#define SSANET_SHIM_CHECK(call) STABLE_TORCH_ERROR_CODE_CHECK(call)
#else
#define SSANET_SHIM_CHECK(call) TORCH_ERROR_CODE_CHECK(call)
#endif

// Whether two size lists are equal (HeaderOnlyArrayRef's operator== arrives with torch 2.13).
inline bool same_sizes(IntArrayRef a, IntArrayRef b) {
  return std::equal(a.begin(), a.end(), b.begin(), b.end());
}

template <typename T>
std::ostream& operator<<(std::ostream& stream, torch::headeronly::HeaderOnlyArrayRef<T> values) {
  stream << '[';
  for (size_t i = 0; i < values.size(); ++i) {
    stream << (i ? ", " : "") << values[i];
  }
  return stream << ']';
}

// "cpu", "cuda:1", as torch prints a device.
inline std::string device_name(const Tensor& tensor) {
  if (tensor.is_cpu()) {
    return "cpu";
  }
  if (tensor.is_cuda()) {
    return "cuda:" + std::to_string(tensor.get_device_index());
  }
  return "device type " + std::to_string(static_cast<int>(tensor.device().type()));
}

template <typename... Parts>
std::string message(const Parts&... parts) {
  std::ostringstream text;
  (text << ... << parts);
  return text.str();
}

}  // namespace ssanet_ops

// Like TORCH_CHECK: throws a std::runtime_error (a RuntimeError in Python) with the message
// made of the remaining arguments. Never inside a parallel_for body: an exception must not
// cross torch's C parallel-for function (issue 11); check before the loop instead.
#define SSANET_CHECK(condition, ...)                                          \
  do {                                                                        \
    if (!(condition)) [[unlikely]] {                                          \
      throw std::runtime_error(::ssanet_ops::message(__VA_ARGS__));           \
    }                                                                         \
  } while (false)

// The four floating dtypes every kernel takes (docs/operators.md section 4); the body sees
// scalar_t. Callers check the dtype first (common/dtypes.h), so the default case is unreachable.
#define SSANET_DISPATCH_FLOATING_TYPES(TYPE, NAME, ...)                            \
  THO_DISPATCH_V2(TYPE, NAME, AT_WRAP(__VA_ARGS__), AT_EXPAND(AT_FLOATING_TYPES), \
                  ::torch::headeronly::ScalarType::Half,                          \
                  ::torch::headeronly::ScalarType::BFloat16)

namespace ssanet_ops {

// ---- tensors ----

// An uninitialised tensor of `sizes` on `like`'s device, in `like`'s dtype unless `dtype` is set.
inline Tensor empty_like_device(const Tensor& like, std::vector<int64_t> sizes,
                                std::optional<ScalarType> dtype = std::nullopt) {
  return torch::stable::new_empty(like, sizes, dtype);
}

// The same, zero-filled.
inline Tensor zeros_like_device(const Tensor& like, std::vector<int64_t> sizes,
                                std::optional<ScalarType> dtype = std::nullopt) {
  return torch::stable::new_zeros(like, sizes, dtype);
}

using torch::stable::parallel_for;

// Calls the ATen operator `op`.`overload` (e.g. "aten::sort", "stable") through the dispatcher,
// on whatever device its tensors are, and returns its first kOutputs results, which must be
// tensors. For the ATen operators the stable API has no function for; the arguments are the
// schema's, in order, as the stable API converts them (Tensor, int64_t, double, bool,
// std::optional, std::vector<int64_t>, ScalarType).
template <size_t kOutputs = 1, typename... Args>
std::array<Tensor, kOutputs> call_aten(const char* op, const char* overload,
                                       const Args&... args) {
  std::array<StableIValue, std::max(sizeof...(Args), kOutputs)> stack{
      torch::stable::detail::from(args)...};
  SSANET_SHIM_CHECK(
      torch_call_dispatcher(op, overload, stack.data(), TORCH_ABI_VERSION));
  std::array<Tensor, kOutputs> results;
  for (size_t i = 0; i < kOutputs; ++i) {
    results[i] = torch::stable::detail::to<Tensor>(stack[i]);
  }
  return results;
}

}  // namespace ssanet_ops
