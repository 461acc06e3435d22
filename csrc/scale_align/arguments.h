#pragma once
// Argument checks and shapes shared by the CPU and CUDA scale_correlation /
// scale_align kernels (docs/operators.md section 3). The Python wrappers (ssanet_ops/ops.py) check the
// same things with friendlier messages; these guard direct calls of torch.ops.ssanet_ops.*.

#include <limits>
#include <optional>
#include <string>

#include "common/checked.h"
#include "common/dtypes.h"
#include "common/scale_dft.h"
#include "common/stable.h"

namespace ssanet_ops::scale_align {

// The most scales the kernels take: the DFT over the scale axis costs S*S/2 multiply-adds per
// feature column (and the CUDA kernels keep 2*S twiddles in shared memory), so a larger S,
// which only a tensor expanded along the scale axis makes cheap to pass, would run for hours.
constexpr int64_t kMaxScales = 2048;

// Sizes of one call. Ungrouped tensors ([N, S, D], [C, S, D]) run as one group.
struct Shape {
  int64_t groups;    // G
  int64_t proposals; // N
  int64_t classes;   // C
  int64_t scales;    // S
  int64_t features;  // D
  bool grouped;      // whether the inputs carried the leading G dimension

  int64_t planes() const { return scale_dft::plane_count(scales); }  // T
};

// A 3-d [R, S, D] tensor as [1, R, S, D]; a 4-d one as it is. A view, strides kept.
inline Tensor as_grouped(const Tensor& tensor) {
  return tensor.dim() == 3 ? torch::stable::unsqueeze(tensor, 0) : tensor;
}

// Drops the leading group dimension of an output again when the inputs had none.
inline Tensor ungroup_like(const Tensor& output, const Shape& shape) {
  return shape.grouped ? output : torch::stable::squeeze(output, 0);
}

// The largest tensors a call allocates, in bytes of float64: the output or gradient
// ([G, N, C, S] at most), the plane products [G, T, N, C] and the planes [G, T, N + C, D].
// Checked once here in overflow-safe arithmetic (issue 12: expanded tensors make any sizes cheap
// to pass to torch.ops directly), so that the sizes the kernels compute from them cannot
// overflow.
inline void check_sizes(const Shape& shape, const char* op) {
  constexpr int64_t kBytes = 8;
  const Checked G = shape.groups, N = shape.proposals, C = shape.classes, S = shape.scales;
  const Checked D = shape.features, T = shape.planes();
  const auto check_fits = [&](Checked bytes, const char* what) {
    SSANET_CHECK(bytes <= std::numeric_limits<int64_t>::max(), op, ": ", what,
                 " of phi and weight would take more bytes than int64 can count (G = ",
                 shape.groups, ", N = ", shape.proposals, ", C = ", shape.classes, ", S = ",
                 shape.scales, ", D = ", shape.features, ")");
  };
  check_fits(G * N * C * S * kBytes, "the correlation [G, N, C, S]");
  check_fits(G * T * N * C * kBytes, "the plane products [G, T, N, C]");
  check_fits(G * T * (N + C) * D * kBytes, "the planes [G, T, N + C, D]");
}

inline void check_pair(const Tensor& first, const char* first_name,
                       const Tensor& second, const char* second_name, const char* op) {
  SSANET_CHECK(first.device() == second.device(), op, ": ", first_name, " and ", second_name,
               " must be on one device, got ", device_name(first), " and ", device_name(second));
  SSANET_CHECK(first.scalar_type() == second.scalar_type(), op, ": ", first_name, " and ",
               second_name, " must have one dtype, got ", first.scalar_type(), " and ",
               second.scalar_type());
}

inline void check_rank(const Tensor& tensor, const char* name, const char* shape,
                       const char* op) {
  SSANET_CHECK(tensor.dim() == 3 || tensor.dim() == 4, op, ": ", name, " must be a 3-d tensor ",
               shape, " or a 4-d one with a leading group dimension, got shape ", tensor.sizes());
}

// phi [G?, N, S, D] and weight [G?, C, S, D].
inline Shape check_inputs(const Tensor& phi, const Tensor& weight, const char* op) {
  check_rank(phi, "phi", "[N, S, D]", op);
  check_rank(weight, "weight", "[C, S, D]", op);
  SSANET_CHECK(phi.dim() == weight.dim(), op, ": phi and weight must both have a group dimension "
               "or neither, got shapes ", phi.sizes(), " and ", weight.sizes());
  check_pair(phi, "phi", weight, "weight", op);
  const Tensor phi4 = as_grouped(phi);
  const Tensor weight4 = as_grouped(weight);
  SSANET_CHECK(phi4.size(0) == weight4.size(0), op, ": phi and weight must have one group count "
               "G, got ", phi4.size(0), " and ", weight4.size(0));
  SSANET_CHECK(phi4.size(2) == weight4.size(2) && phi4.size(3) == weight4.size(3), op,
               ": phi [.., N, S, D] and weight [.., C, S, D] must agree in S and D, got shapes ",
               phi.sizes(), " and ", weight.sizes());
  SSANET_CHECK(phi4.size(2) >= 1, op, ": the scale dimension S must be at least 1");
  SSANET_CHECK(phi4.size(2) <= kMaxScales, op, ": the scale dimension S of phi and weight must be "
               "at most ", kMaxScales, ", got ", phi4.size(2));
  const Shape shape{phi4.size(0), phi4.size(1), weight4.size(1), phi4.size(2), phi4.size(3),
                    phi.dim() == 4};
  check_sizes(shape, op);
  return shape;
}

inline void check_bias(const std::optional<Tensor>& bias, const Tensor& weight,
                       const Shape& shape, const char* op) {
  if (!bias.has_value()) {
    return;
  }
  check_pair(weight, "weight", *bias, "bias", op);
  const bool ok = shape.grouped ? (bias->dim() == 2 && bias->size(0) == shape.groups &&
                                   bias->size(1) == shape.classes)
                                : (bias->dim() == 1 && bias->size(0) == shape.classes);
  SSANET_CHECK(ok, op, ": bias must have shape ", shape.grouped ? "[G, C] = [" : "[C] = [",
               shape.grouped ? std::to_string(shape.groups) + ", " : std::string(),
               shape.classes, "], got ", bias->sizes());
}

// The gradient of scale_correlation ([G?, N, C, S]) or of scale_align's logits ([G?, N, C]) and,
// for scale_align, its shift, against the saved input `other`: weight [G?, C, S, D] for d phi
// (other_is_weight), phi [G?, N, S, D] for d weight. other's rank says whether there is a group
// dimension. Returns the sizes of the call. The values of shift are the kernels' to check.
inline Shape check_grad(const Tensor& grad, const std::optional<Tensor>& shift,
                        const Tensor& other, bool other_is_weight, const char* op) {
  const char* other_name = other_is_weight ? "weight" : "phi";
  check_rank(other, other_name, other_is_weight ? "[C, S, D]" : "[N, S, D]", op);
  check_pair(grad, "grad", other, other_name, op);
  const int64_t expected = other.dim() - 1 + (shift.has_value() ? 0 : 1);
  SSANET_CHECK(grad.dim() == expected, op, ": grad must have ", expected, " dimensions, got shape ",
               grad.sizes());
  if (other.dim() == 4) {
    SSANET_CHECK(grad.size(0) == other.size(0), op, ": grad and ", other_name,
                 " must have one group count, got shapes ", grad.sizes(), " and ", other.sizes());
  }
  // grad is [.., N, C] or [.., N, C, S]: its C must be weight's rows, its N phi's rows.
  const int64_t last = shift.has_value() ? -1 : -2;
  const int64_t matching = other_is_weight ? last : last - 1;
  SSANET_CHECK(grad.size(matching) == other.size(-3), op, ": grad has ", grad.size(matching),
               other_is_weight ? " classes" : " proposals", " but ", other_name, " has ",
               other.size(-3), " (grad shape ", grad.sizes(), ", ", other_name, " shape ",
               other.sizes(), ")");
  if (shift.has_value()) {
    SSANET_CHECK(shift->scalar_type() == ScalarType::Long, op, ": shift must be int64, got ",
                 shift->scalar_type());
    SSANET_CHECK(shift->device() == grad.device(), op, ": shift and grad must be on one device");
    SSANET_CHECK(shift->sizes().equals(grad.sizes()), op, ": shift must have grad's shape ",
                 grad.sizes(), ", got ", shift->sizes());
  } else {
    SSANET_CHECK(grad.size(-1) == other.size(-2), op, ": grad [.., N, C, S] must have S = ",
                 other.size(-2), " shifts, got shape ", grad.sizes());
  }
  SSANET_CHECK(other.size(-2) >= 1 && other.size(-2) <= kMaxScales, op, ": the scale dimension S "
               "of ", other_name, " must be in [1, ", kMaxScales, "], got ", other.size(-2));
  const bool grouped = other.dim() == 4;
  const int64_t lead = grouped ? 1 : 0;  // grad's dimensions before [N, C]
  const Shape shape{grouped ? grad.size(0) : 1, grad.size(lead), grad.size(lead + 1),
                    other.size(-2), other.size(-1), grouped};
  check_sizes(shape, op);
  return shape;
}

// The gradient of scale_align's logits grad [G?, N, C] and its shift against the saved phi
// [G?, N, S, D] and weight [G?, C, S, D] (scale_align's backward op, which gives d phi, d weight
// and d bias). Returns the sizes of the call.
inline Shape check_align_grad(const Tensor& grad, const Tensor& shift, const Tensor& phi,
                              const Tensor& weight, const char* op) {
  check_inputs(phi, weight, op);
  check_grad(grad, shift, weight, /*other_is_weight=*/true, op);
  return check_grad(grad, shift, phi, /*other_is_weight=*/false, op);
}

// grad or shift [G?, N, C] of a call of `shape` as [G, N, C] (a view).
inline Tensor as_grouped_grad(const Tensor& tensor, const Shape& shape) {
  return shape.grouped ? tensor : torch::stable::unsqueeze(tensor, 0);
}

}  // namespace ssanet_ops::scale_align
