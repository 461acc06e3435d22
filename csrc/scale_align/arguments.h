#pragma once
// Argument checks and shapes shared by the CPU and CUDA scale_correlation /
// scale_align kernels (docs/operators.md section 3). The Python wrappers (ssanet_ops/ops.py) check the
// same things with friendlier messages; these guard direct calls of torch.ops.ssanet_ops.*.

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <limits>
#include <optional>
#include <string>

#include "common/checked.h"
#include "common/dtypes.h"
#include "common/scale_dft.h"

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
inline at::Tensor as_grouped(const at::Tensor& tensor) {
  return tensor.dim() == 3 ? tensor.unsqueeze(0) : tensor;
}

// Drops the leading group dimension of an output again when the inputs had none.
inline at::Tensor ungroup_like(const at::Tensor& output, const Shape& shape) {
  return shape.grouped ? output : output.squeeze(0);
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
    TORCH_CHECK(bytes <= std::numeric_limits<int64_t>::max(), op, ": ", what,
                " of phi and weight would take more bytes than int64 can count (G = ",
                shape.groups, ", N = ", shape.proposals, ", C = ", shape.classes, ", S = ",
                shape.scales, ", D = ", shape.features, ")");
  };
  check_fits(G * N * C * S * kBytes, "the correlation [G, N, C, S]");
  check_fits(G * T * N * C * kBytes, "the plane products [G, T, N, C]");
  check_fits(G * T * (N + C) * D * kBytes, "the planes [G, T, N + C, D]");
}

inline void check_pair(const at::Tensor& first, const char* first_name,
                       const at::Tensor& second, const char* second_name, const char* op) {
  TORCH_CHECK(first.device() == second.device(), op, ": ", first_name, " and ", second_name,
              " must be on one device, got ", first.device(), " and ", second.device());
  TORCH_CHECK(first.scalar_type() == second.scalar_type(), op, ": ", first_name, " and ",
              second_name, " must have one dtype, got ", first.scalar_type(), " and ",
              second.scalar_type());
}

inline void check_rank(const at::Tensor& tensor, const char* name, const char* shape,
                       const char* op) {
  TORCH_CHECK(tensor.dim() == 3 || tensor.dim() == 4, op, ": ", name, " must be a 3-d tensor ",
              shape, " or a 4-d one with a leading group dimension, got shape ", tensor.sizes());
}

// phi [G?, N, S, D] and weight [G?, C, S, D].
inline Shape check_inputs(const at::Tensor& phi, const at::Tensor& weight, const char* op) {
  check_rank(phi, "phi", "[N, S, D]", op);
  check_rank(weight, "weight", "[C, S, D]", op);
  TORCH_CHECK(phi.dim() == weight.dim(), op, ": phi and weight must both have a group dimension "
              "or neither, got shapes ", phi.sizes(), " and ", weight.sizes());
  check_pair(phi, "phi", weight, "weight", op);
  const at::Tensor phi4 = as_grouped(phi);
  const at::Tensor weight4 = as_grouped(weight);
  TORCH_CHECK(phi4.size(0) == weight4.size(0), op, ": phi and weight must have one group count "
              "G, got ", phi4.size(0), " and ", weight4.size(0));
  TORCH_CHECK(phi4.size(2) == weight4.size(2) && phi4.size(3) == weight4.size(3), op,
              ": phi [.., N, S, D] and weight [.., C, S, D] must agree in S and D, got shapes ",
              phi.sizes(), " and ", weight.sizes());
  TORCH_CHECK(phi4.size(2) >= 1, op, ": the scale dimension S must be at least 1");
  TORCH_CHECK(phi4.size(2) <= kMaxScales, op, ": the scale dimension S of phi and weight must be "
              "at most ", kMaxScales, ", got ", phi4.size(2));
  const Shape shape{phi4.size(0), phi4.size(1), weight4.size(1), phi4.size(2), phi4.size(3),
                    phi.dim() == 4};
  check_sizes(shape, op);
  return shape;
}

inline void check_bias(const std::optional<at::Tensor>& bias, const at::Tensor& weight,
                       const Shape& shape, const char* op) {
  if (!bias.has_value()) {
    return;
  }
  check_pair(weight, "weight", *bias, "bias", op);
  const bool ok = shape.grouped ? (bias->dim() == 2 && bias->size(0) == shape.groups &&
                                   bias->size(1) == shape.classes)
                                : (bias->dim() == 1 && bias->size(0) == shape.classes);
  TORCH_CHECK(ok, op, ": bias must have shape ", shape.grouped ? "[G, C] = [" : "[C] = [",
              shape.grouped ? std::to_string(shape.groups) + ", " : std::string(),
              shape.classes, "], got ", bias->sizes());
}

// The gradient of scale_correlation ([G?, N, C, S]) or of scale_align's logits ([G?, N, C]) and,
// for scale_align, its shift, against the saved input `other`: weight [G?, C, S, D] for d phi
// (other_is_weight), phi [G?, N, S, D] for d weight. other's rank says whether there is a group
// dimension. Returns the sizes of the call. The values of shift are the kernels' to check.
inline Shape check_grad(const at::Tensor& grad, const std::optional<at::Tensor>& shift,
                        const at::Tensor& other, bool other_is_weight, const char* op) {
  const char* other_name = other_is_weight ? "weight" : "phi";
  check_rank(other, other_name, other_is_weight ? "[C, S, D]" : "[N, S, D]", op);
  check_pair(grad, "grad", other, other_name, op);
  const int64_t expected = other.dim() - 1 + (shift.has_value() ? 0 : 1);
  TORCH_CHECK(grad.dim() == expected, op, ": grad must have ", expected, " dimensions, got shape ",
              grad.sizes());
  if (other.dim() == 4) {
    TORCH_CHECK(grad.size(0) == other.size(0), op, ": grad and ", other_name,
                " must have one group count, got shapes ", grad.sizes(), " and ", other.sizes());
  }
  // grad is [.., N, C] or [.., N, C, S]: its C must be weight's rows, its N phi's rows.
  const int64_t last = shift.has_value() ? -1 : -2;
  const int64_t matching = other_is_weight ? last : last - 1;
  TORCH_CHECK(grad.size(matching) == other.size(-3), op, ": grad has ", grad.size(matching),
              other_is_weight ? " classes" : " proposals", " but ", other_name, " has ",
              other.size(-3), " (grad shape ", grad.sizes(), ", ", other_name, " shape ",
              other.sizes(), ")");
  if (shift.has_value()) {
    TORCH_CHECK(shift->scalar_type() == at::kLong, op, ": shift must be int64, got ",
                shift->scalar_type());
    TORCH_CHECK(shift->device() == grad.device(), op, ": shift and grad must be on one device");
    TORCH_CHECK(shift->sizes() == grad.sizes(), op, ": shift must have grad's shape ",
                grad.sizes(), ", got ", shift->sizes());
  } else {
    TORCH_CHECK(grad.size(-1) == other.size(-2), op, ": grad [.., N, C, S] must have S = ",
                other.size(-2), " shifts, got shape ", grad.sizes());
  }
  TORCH_CHECK(other.size(-2) >= 1 && other.size(-2) <= kMaxScales, op, ": the scale dimension S "
              "of ", other_name, " must be in [1, ", kMaxScales, "], got ", other.size(-2));
  const bool grouped = other.dim() == 4;
  const int64_t lead = grouped ? 1 : 0;  // grad's dimensions before [N, C]
  const Shape shape{grouped ? grad.size(0) : 1, grad.size(lead), grad.size(lead + 1),
                    other.size(-2), other.size(-1), grouped};
  check_sizes(shape, op);
  return shape;
}

}  // namespace ssanet_ops::scale_align
